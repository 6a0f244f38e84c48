"""`python -m bench core`: raw Ed25519 signing vs envelope build+sign, and the spool's figures.

The signing figures are measured in this process, side by side, so the ratio
is meaningful on whatever machine runs it. The spool's figures come from
bench/spool.py's measure() (appends/acks at 1,000 and 200,000 spooled, both
synchronous levels, peak RSS).
"""
from __future__ import annotations

import json
import time

from telemetry.envelope import GENESIS, Counters, seal
from telemetry.freshness import issue_token
from telemetry.identity import Identity
from telemetry.senml import Record


def _rate(action, seconds: float = 1.5) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(500):
            action()
        count += 500
    return count / elapsed


def measure_signing() -> dict:
    identity = Identity(bytes(range(32)))
    state = {"seq": 0, "prev": GENESIS}
    now = time.time()
    records = [Record("temp", value=21.5, unit="Cel", time=now), Record("tamper", boolean=False, time=now)]
    # what the agent signs: version 2, with its counters, the lender's newest token and its binding
    v2 = {"counters": Counters(alarms=3, gaps=1), "token": issue_token(bytes(32), "gw-bench-0001", now),
          "binding": bytes(range(8))}
    sample_envelope = seal(identity, device="gw-bench-0001", boot=1, seq=1, prev=GENESIS, records=records, **v2)
    sig_input = sample_envelope.signed_bytes()  # the same message length the envelope signs

    def raw_sign() -> None:
        identity.sign(sig_input)

    def build_and_sign() -> None:
        state["seq"] += 1
        envelope = seal(identity, device="gw-bench-0001", boot=1, seq=state["seq"], prev=state["prev"], records=records,
                        **v2)
        state["prev"] = envelope.digest

    # interleave and take the best of three, so a noisy neighbour hurts both sides alike
    raw, built = [], []
    for _ in range(3):
        raw.append(_rate(raw_sign))
        built.append(_rate(build_and_sign))
    sign_raw, envelope_sign = max(raw), max(built)
    return {
        "sign_raw_per_s": round(sign_raw),
        "envelope_sign_per_s": round(envelope_sign),
        "envelope_vs_raw": round(envelope_sign / sign_raw, 3),
        "envelope_bytes": len(sample_envelope.raw),
    }


def main() -> None:
    from bench import spool

    result = measure_signing()
    result.update(spool.measure())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
