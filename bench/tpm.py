"""`python -m bench tpm`: signatures/s of a TPM key (swtpm here) and of the software key, and envelopes/s sealed with each.

A fresh swtpm (tests.kit.swtpm) holds a P-256 key created as provisioning
creates it (`durable.keystore`); the software key is an Ed25519 seed. Each
figure is the median of three timed rounds of a fixed count. "Envelopes/s"
is `telemetry.envelope.seal` of a gateway's typical envelope (three readings,
version 2) with that signer: the agent's signing cost per envelope, the rest of
its loop (sampling, the spool) being the same for both keys.

Since issue 14's rollback check the agent's TPM key counts every signature
first (durable.tpmcounter: TPM2_NV_Increment, then TPM2_Sign), so
`agent_envelopes_per_s_tpm` seals with that counted key; `tpm_signs_per_s` is
the bare signature, `nv_increments_per_s` the bare increment, and
`nv_certify_ms` the once-per-boot TPM2_NV_Certify (with the attestation key's
re-derivation).

The note states what a ~10 operations/s TPM (an SLB 9670-class chip, a figure
assumed, not measured here) gives when it counts and signs every envelope, which
is the design today (docs/decisions.md, "Gateway keys in a TPM").
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from durable.keystore import create_device_key
from durable.tpmcounter import CountedTpmKey
from telemetry.envelope import GENESIS, Counters, seal
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.swtpm import Swtpm

ROUNDS = 3
REAL_CHIP_SIGNS_PER_S = 10.0   # TPM commands per second, a sign or an NV increment alike (assumed, not measured)


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
            counted = CountedTpmKey(key)
            increments = _rate(300, lambda i: counted.counter.increment())
            tpm_envelopes = _envelopes(counted, 300)
            certify_ms = 1000 / _rate(10, lambda i: counted.certify(bytes(32)))
        finally:
            key.close()
    software_signs = _rate(5000, lambda i: software.sign(b"reading %d" % i))
    software_envelopes = _envelopes(software, 5000)
    return {
        "tpm_signs_per_s": round(tpm_signs, 1),
        "software_signs_per_s": round(software_signs, 1),
        "agent_envelopes_per_s_tpm": round(tpm_envelopes, 1),
        "agent_envelopes_per_s_software": round(software_envelopes, 1),
        "nv_increments_per_s": round(increments, 1),
        "nv_certify_ms": round(certify_ms, 1),
        "real_chip_signs_per_s_assumed": REAL_CHIP_SIGNS_PER_S,
        "real_chip_envelopes_per_s": REAL_CHIP_SIGNS_PER_S / 2,
        "note": (f"the TPM counts (TPM2_NV_Increment) and signs every envelope: swtpm allows ~{tpm_envelopes:.0f} "
                 f"envelopes/s; a ~{REAL_CHIP_SIGNS_PER_S:.0f} operations/s chip allows ~{REAL_CHIP_SIGNS_PER_S / 2:.0f} "
                 f"envelopes/s (two commands each; {REAL_CHIP_SIGNS_PER_S / 2 * 3600:,.0f} an hour), above a gateway's "
                 "usual rate (a batch of readings every few seconds is one envelope); above it, readings wait in the "
                 "agent's batch, never an unsigned or uncounted envelope"),
    }


def main() -> None:
    print(json.dumps(measure()))
