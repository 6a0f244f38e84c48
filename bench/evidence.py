"""`python -m bench evidence`: what the lender's transparency log costs at ingest, and what its proofs cost and weigh.

* ``ingest_per_s_without_log`` / ``ingest_per_s_with_log``: the same version 2
  envelopes (three records each, like a gateway's) through
  `lender.evidence.ingest.Ingest.batch` in batches of 100 into a fresh store
  with the lender's real settings (WAL, synchronous=FULL, one commit per
  batch), opened without and with its log (`SQLiteStore.open(log=False)`).
  The two stores take the same batches in turn, batch by batch (and which
  goes first alternates), so a shared machine's load falls on both alike;
  each figure is envelopes over the time its store spent, from the round
  whose ratio is the median of the rounds (all rounds are listed). With the log every
  envelope is also an entry, every batch signs a checkpoint and its ack
  carries a receipt.
* ``proofs_per_s``: inclusion receipts for random entries, from a store
  opened afresh (nodes read from the file, nothing in memory);
  ``receipt_verify_per_s``: checking one, signature included.
* ``bundle_verify_envelopes_per_s``: `telemetry.bundle.verify_bundle` over the
  exported bundle of the device (every signature, the chain, the proofs).
* ``proof_bytes_at_1e6``: the largest inclusion proof (RFC 9942's
  ``bstr .cbor [size, index, path]``) in an RFC 9162 tree of 10^6 entries,
  measured on an in-memory tree of that size; ``receipt_bytes_at_1e6`` the
  whole COSE receipt around it.
"""
from __future__ import annotations

import json
import random
import tempfile
import time

from lender.enrollment import registration
from lender.evidence.export import export_bundle
from lender.evidence.ingest import Ingest, Status
from lender.evidence.store import SQLiteStore
from telemetry import cbor
from telemetry.bundle import verify_bundle
from telemetry.envelope import GENESIS, Counters, seal
from telemetry.freshness import issue_token
from telemetry.identity import Identity
from telemetry.logentry import envelope_entry
from telemetry.merkle import MerkleTree, leaf_hash
from telemetry.receipt import Checkpoint, SignedCheckpoint, verify_inclusion_receipt
from telemetry.senml import Record

DEVICE = "gw-bench-0001"
BATCH = 100
TOKEN_KEY = bytes(range(32))
T0 = 1_767_225_600


def _envelopes(identity: Identity, count: int) -> list[bytes]:
    prev, out = GENESIS, []
    token = issue_token(TOKEN_KEY, DEVICE, T0)
    for seq in range(1, count + 1):
        records = [Record("temp", value=20.0 + seq % 40 / 4, unit="Cel", time=T0 + seq),
                   Record("door", boolean=False, time=T0 + seq), Record("tamper", boolean=False, time=T0 + seq)]
        envelope = seal(identity, device=DEVICE, boot=1, seq=seq, prev=prev, records=records,
                        counters=Counters(alarms=0, gaps=0), token=token)
        prev = envelope.digest
        out.append(envelope.raw)
    return out


def _paired_ingest(root: str, identity: Identity, bodies: list[bytes]) -> tuple[float, float, str]:
    """(envelopes/s without the log, with it, the directory of the store with it): the same batches, in turn."""
    stores, ingests, spent = [], [], [0.0, 0.0]
    for name, log in (("plain", False), ("log", True)):
        store = SQLiteStore.open(f"{root}/{name}", log=log)
        registration.register(store, f"{root}/{name}", DEVICE, identity.public_key, with_oscore=False)
        stores.append(store)
        ingests.append(Ingest(store, token_key=TOKEN_KEY))
    stored = 0
    try:
        for number, body in enumerate(bodies):
            for which in ((0, 1) if number % 2 == 0 else (1, 0)):
                start = time.perf_counter()
                outcome = ingests[which].batch(body, peer="bench")
                spent[which] += time.perf_counter() - start
                if outcome.status is not Status.CHANGED or outcome.refused or (which and outcome.receipt is None):
                    raise RuntimeError(f"bench batch not stored cleanly: {outcome}")
            stored += len(outcome.stored)
    finally:
        for store in stores:
            store.close()
    return stored / spent[0], stored / spent[1], f"{root}/log"


def _rate(action, items: list, seconds: float = 2.0) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for item in items:
            action(item)
        count += len(items)
    return count / elapsed


def _proof_bytes_at(size: int, lender: Identity) -> tuple[int, int]:
    tree = MerkleTree(leaf_hash(i.to_bytes(4, "big")) for i in range(size))
    checkpoint = SignedCheckpoint.sign(Checkpoint(size, tree.root(), T0 * 1000, bytes(32), 1), lender)
    worst = max(range(0, size, max(1, size // 64)), key=lambda i: len(tree.inclusion_path(i)))
    path = tree.inclusion_path(worst)
    return len(cbor.encode([size, worst, path])), len(checkpoint.inclusion_receipt(worst, path))


def measure(count: int = 20_000, rounds: int = 3, big: int = 1_000_000) -> dict:
    identity = Identity(bytes(range(32)))
    raws = _envelopes(identity, count)
    bodies = [cbor.encode(raws[i:i + BATCH]) for i in range(0, count, BATCH)]
    without, with_log = [], []
    with tempfile.TemporaryDirectory(prefix="bench-evidence-") as root:
        for round_number in range(rounds):
            plain, logged, directory = _paired_ingest(f"{root}/{round_number}", identity, bodies)
            without.append(plain)
            with_log.append(logged)
        with SQLiteStore.open(directory) as cold:
            log = cold.log
            size = cold.checkpoint().checkpoint.tree_size
            generator = random.Random(13)
            indices = [generator.randrange(size) for _ in range(2000)]
            proofs_per_s = _rate(log.inclusion_receipt, indices)
            lender_key = log.identity.public_key
            entries = {i: e.entry for i, e in ((e.index, e) for e in log.entries()) if i in set(indices[:200])}
            receipts = [(log.inclusion_receipt(i), entries[i]) for i in indices[:200]]
            verify_per_s = _rate(lambda pair: verify_inclusion_receipt(pair[0], pair[1], lender_key), receipts)
            start = time.perf_counter()
            document, warnings = export_bundle(cold, DEVICE)
            export_s = time.perf_counter() - start
        text = json.dumps(document)
        start = time.perf_counter()
        report = verify_bundle(json.loads(text), lender_key)
        verify_s = time.perf_counter() - start
        if not report.ok or warnings:
            raise RuntimeError(f"the bench bundle does not verify: {[f.detail for f in report.failures]} {warnings}")
    proof_bytes, receipt_bytes = _proof_bytes_at(big, identity)
    # each round's two figures share the machine's load: the round with the median ratio is the one reported
    middle = sorted(range(rounds), key=lambda r: with_log[r] / without[r])[rounds // 2]
    return {
        "envelopes": count,
        "batch": BATCH,
        "rounds": rounds,
        "ingest_per_s_without_log": round(without[middle]),
        "ingest_per_s_with_log": round(with_log[middle]),
        "with_log_ratio": round(with_log[middle] / without[middle], 3),
        "ingest_rounds_without_log": [round(r) for r in without],
        "ingest_rounds_with_log": [round(r) for r in with_log],
        "proofs_per_s": round(proofs_per_s),
        "receipt_verify_per_s": round(verify_per_s),
        "bundle_envelopes": report.envelopes,
        "bundle_bytes": len(text),
        "bundle_export_s": round(export_s, 3),
        "bundle_verify_envelopes_per_s": round(report.envelopes / verify_s),
        "proof_bytes_at_1e6": proof_bytes,
        "receipt_bytes_at_1e6": receipt_bytes,
        "proof_bytes_basis": f"measured: the largest inclusion proof in an in-memory RFC 9162 tree of {big:,} entries",
    }


def main() -> None:
    print(json.dumps(measure(), indent=1))
