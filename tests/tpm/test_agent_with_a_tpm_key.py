"""The agent's recorder signs with the TPM key its state describes, and a lender stores what it signed as ES256 evidence."""
from __future__ import annotations

import time

from agent.recorder import Recorder
from agent.spool import Spool
from agent.state import AgentState
from durable.keystore import create_device_key, open_device_key
from telemetry.numbers import ALG_ES256
from telemetry.senml import Record
from tests.kit.evidence import EvidenceLender
from tests.kit.lender import batch

HANDLE = 0x81010060


def test_the_agent_records_with_the_tpm_key_and_the_lender_stores_its_es256_envelopes(swtpm, tmp_path):
    state_dir = tmp_path / "gateway"
    create_device_key(state_dir, "tpm", tcti=swtpm.tcti, handle=HANDLE).close()
    key = open_device_key(state_dir)  # as `pledgewatch agent run` opens it (agent.cli.open_parts)
    lender = EvidenceLender(tmp_path / "lender")
    try:
        code, _, err = lender.cli("register", "--device", "gw-tpm-2", "--public-key", key.public_key.hex(), "--no-oscore")
        assert code == 0, err
        spool = Spool.open(state_dir / "spool.db")
        state = AgentState.open(state_dir / "state.json")
        recorder = Recorder.start(key, "gw-tpm-2", spool, state, now=time.time())
        envelopes = [recorder.record([Record("temp", value=4.0 + i, unit="Cel", time=time.time())]) for i in range(3)]
        assert all(e.algorithm == ALG_ES256 for e in envelopes)
        outcome = lender.ingest.batch(batch(envelopes), peer="198.51.100.7:5683")
        assert outcome.ack()
        assert lender.store.counts().envelopes == len(envelopes)
        code, out, _ = lender.cli("devices", "--json")
        assert '"algorithm": "ES256"' in out
        spool.close()
    finally:
        key.close()
        lender.close()
