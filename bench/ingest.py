"""`python -m bench ingest`: the lender's ingest rate on its own (decode + verify + chain check + store), no network.

Envelopes like a gateway's (three records each: temperature, door, tamper) are
sealed beforehand, then fed to `lender.evidence.ingest.Ingest.batch` in batches of 100
(about 16 KiB, the agent's default batch size) against a fresh SQLite store in
a temporary directory, with the lender's real settings (WAL, synchronous=FULL,
one commit per batch). The raw Ed25519 verify rate is measured in the same run,
so the ingest figure can be read as a fraction of it.
"""
from __future__ import annotations

import json
import tempfile
import time

from lender.enrollment import registration
from lender.evidence.ingest import Ingest, Status
from lender.evidence.store import SQLiteStore
from telemetry import cbor
from telemetry.envelope import GENESIS, Counters, seal
from telemetry.freshness import issue_token
from telemetry.identity import Identity
from telemetry.senml import Record

BATCH = 100
TOKEN_KEY = bytes(range(32))
BINDING = bytes(range(8))


def _envelopes(identity: Identity, count: int) -> list[bytes]:
    prev, out = GENESIS, []
    now = 1_767_225_600
    for seq in range(1, count + 1):
        records = [Record("temp", value=20.0 + seq % 40 / 4, unit="Cel", time=now + seq),
                   Record("door", boolean=False, time=now + seq), Record("tamper", boolean=False, time=now + seq)]
        envelope = seal(identity, device="gw-bench-0001", boot=1, seq=seq, prev=prev, records=records,
                        counters=Counters(alarms=0, gaps=0), token=issue_token(TOKEN_KEY, "gw-bench-0001", now),
                        binding=BINDING)
        prev = envelope.digest
        out.append(envelope.raw)
    return out


def _verify_raw_rate(identity: Identity, sample: bytes, seconds: float = 1.0) -> float:
    from telemetry.envelope import decode
    envelope = decode(sample)
    key, message, signature = identity.device_key("gw-bench-0001"), envelope.signed_bytes(), envelope.signature
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            key.verifies(message, signature)
        count += 200
    return count / elapsed


def measure(count: int = 20_000) -> dict:
    """Ingest `count` envelopes in batches of 100; return envelopes/s and the raw verify rate."""
    identity = Identity(bytes(range(32)))
    raws = _envelopes(identity, count)
    bodies = [cbor.encode(raws[i:i + BATCH]) for i in range(0, count, BATCH)]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as directory:
        with SQLiteStore.open(directory) as store:
            registration.register(store, directory, "gw-bench-0001", identity.public_key, with_oscore=False)
            store.bind("gw-bench-0001", BINDING)
            ingest = Ingest(store, token_key=TOKEN_KEY)  # the lender checks the binding and issues a token per ack
            start = time.perf_counter()
            stored = 0
            for body in bodies:
                outcome = ingest.batch(body, peer="bench")
                if outcome.status is not Status.CHANGED or outcome.refused:
                    raise RuntimeError(f"bench batch not stored cleanly: {outcome}")
                stored += len(outcome.stored)
            elapsed = time.perf_counter() - start
            replay_start = time.perf_counter()
            for body in bodies[:50]:  # a retried backlog: everything already present
                ingest.batch(body, peer="bench")
            replay_elapsed = time.perf_counter() - replay_start
    verify_raw = _verify_raw_rate(identity, raws[0])
    ingest_rate = stored / elapsed
    return {
        "ingest_per_s": round(ingest_rate),
        "ingest_readings_per_s": round(ingest_rate * 3),
        "ingest_already_present_per_s": round(min(50, len(bodies)) * BATCH / replay_elapsed),
        "verify_raw_per_s": round(verify_raw),
        "ingest_vs_verify_raw": round(ingest_rate / verify_raw, 3),
        "ingest_envelopes": stored,
        "ingest_batch": BATCH,
        "ingest_envelope_bytes": len(raws[0]),
    }


def main() -> None:
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
