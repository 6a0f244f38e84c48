"""The TPM counts every envelope signature; the lender compares the counts it certifies with the seqs it holds.

In-process against swtpm: the agent's recorder with a TPM key, a lender's store and ingest, and the enrollment
record an attested enrollment leaves (the attestation key's point). The end-to-end story, real processes and a
real attested enrollment, is tests/provisioning/test_tpm_rollback.py.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest

from agent.recorder import Recorder
from agent.spool import Spool
from agent.state import AgentState
from durable.keystore import attestation_key_point, create_device_key, open_device_key
from durable.tpmcounter import COUNTER_INDEX, CountedTpmKey
from lender.evidence.risks import Judge, device_risks
from telemetry import tpmcount
from telemetry.envelope import decode, seal
from telemetry.senml import Record
from tests.kit.evidence import EvidenceLender
from tests.kit.lender import batch

HANDLE = 0x81010061
DEVICE = "gw-tpm-9"


class Gateway:
    """A TPM gateway's key, spool and state on disk; `run` is one boot of the agent's recorder."""

    def __init__(self, root, tcti: str) -> None:
        self.state_dir = root / "gateway"
        create_device_key(self.state_dir, "tpm", tcti=tcti, handle=HANDLE).close()

    def run(self, readings: int, *, alarm: bool = False, counted: bool = True):
        key = open_device_key(self.state_dir)
        spool = Spool.open(self.state_dir / "spool.db")
        state = AgentState.open(self.state_dir / "state.json")
        try:
            before = spool.head().seq if spool.head() else 0
            recorder = Recorder.start(key, DEVICE, spool, state, now=time.time())
            assert isinstance(recorder.identity, CountedTpmKey) is counted
            for i in range(readings):
                recorder.record([Record("temp", value=4.0 + i, unit="Cel", time=time.time())])
            if alarm:
                recorder.record([Record("alarm.temperature.stock", string="raised", time=time.time())])
            state.mark_clean_shutdown()
            # everything this boot signed, the records Recorder.start appended (a gap) included
            return sorted((decode(item.raw) for item in spool.peek(10_000, 1 << 24) if item.seq > before),
                          key=lambda e: e.seq)
        finally:
            spool.close()
            state.close()
            key.close()

    def copy(self, to):
        shutil.copytree(self.state_dir, to)

    def restore(self, copy) -> None:
        shutil.rmtree(self.state_dir)
        shutil.copytree(copy, self.state_dir)


@pytest.fixture
def site(swtpm, tmp_path):
    from tpm2_pytss import ESAPI
    lender = EvidenceLender(tmp_path / "lender")
    gateway = Gateway(tmp_path, swtpm.tcti)
    key = open_device_key(gateway.state_dir)
    ak = attestation_key_point(key)   # as the lender keeps it from an attested enrollment
    code, _, err = lender.cli("register", "--device", DEVICE, "--public-key", key.public_key.hex(), "--no-oscore")
    key.close()
    assert code == 0, err
    requests = tmp_path / "lender" / "enroll" / "requests"
    requests.mkdir(parents=True, exist_ok=True)
    (requests / f"{DEVICE}.json").write_text(json.dumps({"key_storage": "tpm-attested",
                                                         "attestation_key_hex": ak.hex()}))
    yield lender, gateway
    lender.close()
    esapi = ESAPI(swtpm.tcti)  # the session's TPM is shared: leave no key at the handle (the counter stays, as on a chip)
    try:
        from tpm2_pytss.constants import ESYS_TR
        esapi.evict_control(ESYS_TR.OWNER, esapi.tr_from_tpmpublic(HANDLE), HANDLE)
    finally:
        esapi.close()


def rollbacks(lender: EvidenceLender) -> list[str]:
    judge = Judge(now=time.time(), sites_dir=lender.data_dir / "enroll" / "sites")
    return [r.detail for r in device_risks(lender.store, DEVICE, judge) if r.kind == "rollback"]


def deliver(lender: EvidenceLender, envelopes) -> None:
    outcome = lender.ingest.batch(batch(envelopes), peer="198.51.100.7:5683")
    assert outcome.ack()


def test_a_restored_state_directory_shows_the_signatures_it_threw_away_and_honest_restarts_show_nothing(site, tmp_path):
    lender, gateway = site
    first = gateway.run(3)
    statement = [r for r in first[0].records if r.name == tpmcount.RECORD]
    assert len(statement) == 1 and not any(r.name == tpmcount.RECORD for e in first[1:] for r in e.records)
    deliver(lender, first)
    second = gateway.run(2)           # an honest restart: a new statement, counts match the seqs
    deliver(lender, second)
    assert rollbacks(lender) == []
    gateway.copy(tmp_path / "copy")   # the borrower copies the state directory and spool (agent stopped)
    lost = gateway.run(1, alarm=True)  # the uplink is cut: a reading and an alarm signed, never sent
    assert lost[-1].alarm
    gateway.restore(tmp_path / "copy")
    again = gateway.run(2)            # the same seqs signed again, and delivered
    assert [e.seq for e in again] == [e.seq for e in lost][:2] and again[0].boot == lost[0].boot
    deliver(lender, again)
    found = rollbacks(lender)
    assert len(found) == 1 and "the TPM counted 2 signature(s) the lender never received" in found[0], found
    assert f"boot {again[0].boot} (seq {again[0].seq})" in found[0] and DEVICE in found[0]


def test_a_forged_edited_or_moved_counter_statement_is_flagged(site, swtpm):
    lender, gateway = site
    first = gateway.run(2)
    deliver(lender, first)
    data = next(r.data for r in first[0].records if r.name == tpmcount.RECORD)
    version, nv_public, attest, signature = __import__("telemetry.cbor", fromlist=["decode"]).decode(data)
    assert version == 1 and int.from_bytes(nv_public[:4], "big") == COUNTER_INDEX
    # root on the gateway can make the TPM key sign any envelope: with an edited count, a statement moved from
    # another envelope, or a counter index that is not a counter
    lower = attest[:-1] + bytes([attest[-1] - 1])
    key = open_device_key(gateway.state_dir)
    try:
        head = first[-1]
        forged = []
        for n, payload in enumerate((tpmcount.encode(nv_public, lower, signature), data)):
            envelope = seal(key, device=DEVICE, boot=head.boot + 1, seq=head.seq + 1 + n,
                            prev=forged[-1].digest if forged else head.digest,
                            records=[Record(tpmcount.RECORD, data=payload, time=time.time())],
                            counters=head.counters)
            forged.append(envelope)
    finally:
        key.close()
    deliver(lender, forged)
    found = rollbacks(lender)
    assert any(f"seq {forged[0].seq}" in d and "signature over the certification does not verify" in d for d in found), found
    assert any(f"seq {forged[1].seq}" in d and "another place in the chain" in d for d in found), found
    assert decode(forged[0].raw).records[0].name == tpmcount.RECORD


def test_a_restored_state_with_the_spool_deleted_shows_the_signatures_lost_with_it(site, tmp_path):
    """The borrower restores the state file but deletes the spool: the agent resumes above its reserved seqs with a
    spool-reset record (seqs it never signed among those it says it lost); the TPM's count says how many it did."""
    lender, gateway = site
    deliver(lender, gateway.run(2))
    gateway.copy(tmp_path / "copy")
    gateway.run(2, alarm=True)                 # three signed with the uplink cut, never sent
    gateway.restore(tmp_path / "copy")
    for name in ("spool.db", "spool.db-wal", "spool.db-shm"):
        (gateway.state_dir / name).unlink(missing_ok=True)
    again = gateway.run(1)
    assert again[0].gap is not None and again[0].gap.reason == "spool-reset"
    deliver(lender, again)
    found = rollbacks(lender)
    assert len(found) == 1 and "the TPM counted 3 signature(s) the lender never received" in found[0], found
    assert "lost with the spool by the device's own account" in found[0]


def test_a_counter_index_taken_by_something_else_leaves_the_key_uncounted_and_the_lender_names_the_boot(site, swtpm):
    """Root (or an integrator) puts an ordinary NV index where the counter was: the agent still signs, uncounted
    (logged), and the boot that began without a counter statement is a rollback risk at the lender."""
    from tpm2_pytss import ESAPI, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV

    lender, gateway = site
    deliver(lender, gateway.run(1))
    esapi = ESAPI(swtpm.tcti)
    try:
        esapi.nv_undefine_space(esapi.tr_from_tpmpublic(COUNTER_INDEX), ESYS_TR.OWNER)
        ordinary = esapi.nv_define_space(b"", TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=COUNTER_INDEX, nameAlg=TPM2_ALG.SHA256, attributes=TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD,
            dataSize=8)), ESYS_TR.OWNER)
        try:
            uncounted = gateway.run(1, counted=False)
            assert not any(r.name == tpmcount.RECORD for e in uncounted for r in e.records)
            deliver(lender, uncounted)
        finally:
            esapi.nv_undefine_space(ordinary, ESYS_TR.OWNER)
    finally:
        esapi.close()
    found = rollbacks(lender)
    assert len(found) == 1 and f"boot {uncounted[0].boot} begins at seq {uncounted[0].seq} without a TPM counter" \
        in found[0], found
