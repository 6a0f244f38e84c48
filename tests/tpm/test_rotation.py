"""rotate-key on a TPM gateway (swtpm): the new key is made in the same TPM at the other persistent handle, the
handover is signed ES256 by the old one, the description names the new handle, and the old key is evicted."""
from __future__ import annotations

import asyncio
import json
import os
import random

import pytest

from agent.commands import CommandInbox
from durable.exc import KeyStoreError
from durable.keystore import (DEFAULT_TPM_HANDLE, KEYSTORE_FILE, DeviceKeys, attestation_key_point,
                              create_device_key, create_tpm_key, open_tpm_key)
from telemetry.identity import DeviceKey
from telemetry.numbers import ALG_ES256
from telemetry.rotation import NEXT_CERTIFY, NEXT_KEY, RotationError, follow, read_certification, read_handover
from telemetry.senml import Record
from tests.agent.test_commands import LENDER
from tests.agent.test_rotation import rotate, rotations_killed, spooled
from tests.kit.agent import build_agent
from tests.kit.rules import T0
from tests.kit.swtpm import Swtpm, swtpm_available

TPM_KILLS = int(os.environ.get("PLEDGEWATCH_TPM_ROTATION_KILLS", "6"))   # longer: =60


def tpm_gateway(tmp_path, tcti):
    """A gateway whose key is in the TPM at `tcti` (the default handle), its inbox taking rotate-key, its agent."""
    etc, home = tmp_path / "etc", tmp_path / "agent"
    home.mkdir()
    enrolled = create_device_key(etc, "tpm", tcti=tcti)
    keys = DeviceKeys(etc, kind="tpm")
    box = CommandInbox(home, "gw-1", LENDER.public_key, clock=lambda: T0 + 60.0, keys=keys)
    return etc, keys, box, build_agent(home, device="gw-1", identity=enrolled, recording=True, commands=box)


def test_a_tpm_gateway_rotates_to_a_key_at_the_other_handle_and_evicts_the_old_one(swtpm, second_swtpm, tmp_path):
    etc, keys, box, agent = tpm_gateway(tmp_path, second_swtpm.tcti)
    enrolled = agent.identity
    try:
        attestation_key = attestation_key_point(enrolled)
        agent.record([Record("temp", value=4.5, unit="Cel")])
        handover = asyncio.run(agent.command(box, rotate(1)))
        new = agent.identity
        assert handover.kid == enrolled.kid and {NEXT_KEY, NEXT_CERTIFY} <= {r.name for r in handover.records}
        # the new key is certified by the same TPM's attestation key, for this handover; another TPM's proves nothing
        read_certification(read_handover(handover), attestation_key)
        with pytest.raises(RotationError, match="does not verify"):
            read_certification(read_handover(handover), other_tpms_attestation_key(swtpm.tcti, tmp_path))
        assert new.algorithm == ALG_ES256 and new.handle == DEFAULT_TPM_HANDLE + 1 and new.kid != enrolled.kid
        after = agent.record([Record("temp", value=4.6, unit="Cel")])
        followed = follow(spooled(agent), DeviceKey("gw-1", enrolled.public_key))
        assert followed.ok and followed.key_at(after.seq).kid == new.kid, followed.problems
        described = json.loads((etc / KEYSTORE_FILE).read_text())
        assert (described["handle"], described["public_key_hex"]) == (hex(DEFAULT_TPM_HANDLE + 1), new.public_key.hex())
        assert described["retired"][0]["handle"] == hex(DEFAULT_TPM_HANDLE)
    finally:
        agent.spool.close()
        agent.identity.close()   # one TPM connection, shared by the old key and the new
    reopened = keys.open()   # as the agent opens it at its next start
    try:
        assert reopened.public_key == new.public_key
    finally:
        reopened.close()
    with pytest.raises(KeyStoreError, match="holds no device key"):
        open_tpm_key(second_swtpm.tcti, DEFAULT_TPM_HANDLE)   # the old key is evicted: never used again


def other_tpms_attestation_key(tcti, tmp_path):
    """The attestation key of the TPM at `tcti` (another machine's), through a key made there for the purpose."""
    key = create_tpm_key(tcti, DEFAULT_TPM_HANDLE + 7)
    try:
        return attestation_key_point(key)
    finally:
        key.close()
        from durable.keystore import evict_tpm_key
        evict_tpm_key(tcti, DEFAULT_TPM_HANDLE + 7, key.public_key)


def test_a_tpm_whose_other_handle_holds_a_key_it_does_not_name_refuses_the_rotation_signed_and_keeps_both(
        second_swtpm, tmp_path):
    foreign = create_tpm_key(second_swtpm.tcti, DEFAULT_TPM_HANDLE + 1)   # not this gateway's to evict
    foreign_key = foreign.public_key
    foreign.close()
    etc, keys, box, agent = tpm_gateway(tmp_path, second_swtpm.tcti)
    enrolled = agent.identity
    try:
        answer = asyncio.run(agent.command(box, rotate(1)))
        said = {r.name: r.string for r in answer.records}
        assert said["command.outcome"] == "refused" and "already holds a key" in said["command.detail"]
        assert agent.identity is enrolled and answer.kid == enrolled.kid and box.unreported() == []
        assert "rotation" not in json.loads((etc / KEYSTORE_FILE).read_text())
    finally:
        agent.spool.close()
        enrolled.close()
    kept = open_tpm_key(second_swtpm.tcti, DEFAULT_TPM_HANDLE + 1)
    try:
        assert kept.public_key == foreign_key
    finally:
        kept.close()


def test_sigkill_anywhere_in_a_tpm_rotation_leaves_a_chain_the_enrolled_key_follows(tmp_path):
    if not swtpm_available():
        pytest.skip("swtpm and tpm2-pytss are needed")
    rng, phases = random.Random(14), {}
    for attempt in range(TPM_KILLS):
        with Swtpm(tmp_path / f"tpm-{attempt}") as tpm:   # a fresh chip each time: both handles free
            phase = rotations_killed(tmp_path / str(attempt), rng,
                                     lambda home: create_device_key(home, "tpm", tcti=tpm.tcti), "tpm", (0.05, 0.3))
        phases[phase] = phases.get(phase, 0) + 1
    assert len(phases) >= 2, f"the kills landed in too few places: {phases}"
    print(f"TPM rotation kills: {TPM_KILLS}, {phases}")


@pytest.mark.parametrize("whose", ("this TPM's", "another TPM's"))
def test_the_lender_keeps_a_rotated_tpm_key_attested_only_under_the_enrolled_attestation_key(
        swtpm, second_swtpm, tmp_path, whose):
    """The real handover at a lender (SQLite): certified by the AK the enrollment proved, the device stays
    tpm-attested; an enrollment that proved another TPM's AK lists the new key software, with the reason."""
    from lender.enrollment.desk import with_recorded_key_storage
    from lender.evidence.commands import CommandDesk
    from lender.evidence.ingest import Ingest
    from lender.evidence.registry import Device
    from lender.evidence.stores import open_store
    from telemetry import cbor

    data = tmp_path / "lender"
    etc, keys, box, agent = tpm_gateway(tmp_path, second_swtpm.tcti)
    try:
        ak = attestation_key_point(agent.identity) if whose == "this TPM's" else \
            other_tpms_attestation_key(swtpm.tcti, tmp_path)
        (data / "enroll" / "requests").mkdir(parents=True)
        (data / "enroll" / "requests" / "gw-1.json").write_text(json.dumps(
            {"device": "gw-1", "key_storage": "tpm-attested", "attestation_key_hex": ak.hex()}))
        with open_store(data, None) as store:
            store.add_device(Device("gw-1", agent.identity.public_key, registered_at=T0))
            issued = CommandDesk(store, LENDER, clock=lambda: T0).rotate_key("gw-1", "staff")  # the key it pins
            assert asyncio.run(agent.command(box, issued.raw)) is not None
            agent.record([Record("temp", value=4.6, unit="Cel")])
            outcome = Ingest(store, clock=lambda: T0 + 100).batch(cbor.encode(spooled(agent)), peer="test")
            assert not outcome.refused and len(outcome.stored) == 2, outcome.refused
            shown = with_recorded_key_storage(data, store.device("gw-1")).to_json()
    finally:
        agent.spool.close()
        agent.identity.close()
    assert shown["kid"] == agent.identity.kid.hex()
    if whose == "this TPM's":
        assert (shown["key_storage"], shown["key_storage_note"]) == ("tpm-attested", None)
    else:
        assert shown["key_storage"] == "software" and "does not verify" in shown["key_storage_note"]
