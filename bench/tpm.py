"""`python -m bench tpm`: signatures/s of a TPM key (swtpm here) and of the software key, and envelopes/s sealed with each.

A fresh swtpm (tests.kit.swtpm) holds a P-256 key created as provisioning
creates it (`durable.keystore`); the software key is an Ed25519 seed. Each
figure is the median of three timed rounds of a fixed count. "Envelopes/s"
is `telemetry.envelope.seal` of a gateway's typical envelope (three readings,
version 2) with that signer: the agent's signing cost per envelope, the rest of
its loop (sampling, the spool) being the same for both keys.

The note states what a ~10 signs/s TPM (an SLB 9670-class chip, a figure
assumed, not measured here) gives when it signs every envelope, which is the
design today (docs/decisions.md, "Gateway keys in a TPM").
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from durable.keystore import create_device_key
from telemetry.envelope import GENESIS, Counters, seal
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.swtpm import Swtpm

ROUNDS = 3
REAL_CHIP_SIGNS_PER_S = 10.0


def _rate(count: int, work) -> float:
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for index in range(count):
            work(index)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def _envelopes(signer, count: int) -> float:
    records = [Record("temp", value=4.5, unit="Cel", time=1767225600.0), Record("door", boolean=False, time=1767225600.0),
               Record("tamper", boolean=False, time=1767225600.0)]
    return _rate(count, lambda i: seal(signer, device="gw-bench", boot=1, seq=i + 1, prev=GENESIS, records=records,
                                       counters=Counters(0, 0)))


def measure() -> dict:
    software = Identity.generate()
    with tempfile.TemporaryDirectory() as tmp, Swtpm(Path(tmp) / "tpm") as tpm:
        key = create_device_key(Path(tmp) / "state", "tpm", tcti=tpm.tcti)
        try:
            tpm_signs = _rate(300, lambda i: key.sign(b"reading %d" % i))
            tpm_envelopes = _envelopes(key, 300)
        finally:
            key.close()
    software_signs = _rate(5000, lambda i: software.sign(b"reading %d" % i))
    software_envelopes = _envelopes(software, 5000)
    return {
        "tpm_signs_per_s": round(tpm_signs, 1),
        "software_signs_per_s": round(software_signs, 1),
        "agent_envelopes_per_s_tpm": round(tpm_envelopes, 1),
        "agent_envelopes_per_s_software": round(software_envelopes, 1),
        "real_chip_signs_per_s_assumed": REAL_CHIP_SIGNS_PER_S,
        "note": (f"the TPM signs every envelope: swtpm allows ~{tpm_envelopes:.0f} envelopes/s; a ~10 signs/s chip "
                 f"allows ~{REAL_CHIP_SIGNS_PER_S:.0f} envelopes/s (36,000 an hour), above a gateway's usual rate "
                 "(a batch of readings every few seconds is one envelope); above it, readings wait in the agent's "
                 "batch, never an unsigned envelope"),
    }


def main() -> None:
    print(json.dumps(measure()))
