"""`python -m bench e2e`: the whole path on this machine — sampling, signing, spool, CoAP+OSCORE, lender ack.

* sustained: the agent's side (sealing each sample, appending it to the spool
  at synchronous=FULL, the uplink sending batches over OSCORE) runs in this
  process against a real `pledgewatch lender serve` process on 127.0.0.1;
  readings the lender has acked, per second, over a measured window;
* drain: 100,000 readings already spooled (a day offline) delivered by a fresh
  agent process; readings/s and that process's peak RSS;
* ingest: the lender's decode + verify + store rate on its own (bench/ingest.py);
* the raw PyNaCl sign and verify rates, measured in the same run.

A reading is one SenML record; a gateway sample (one envelope) here carries
three — temperature, door, tamper — like the shared vectors and bench/ingest.py.
"""
from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hil.processes import LenderProcess
from telemetry.envelope import GENESIS, seal
from telemetry.identity import Identity
from telemetry.senml import Record

DEVICE = "gw-bench-e2e"
READINGS_PER_ENVELOPE = 3
SUSTAIN_SECONDS = 10.0
DRAIN_READINGS = 100_000


def _records(seq: int, now: float) -> list[Record]:
    return [Record("temp", value=20.0 + seq % 40 / 4, unit="Cel", time=now), Record("door", boolean=False, time=now),
            Record("tamper", boolean=False, time=now)]


def _rate(action, seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            action()
        count += 200
    return count / elapsed


def raw_rates() -> dict:
    identity = Identity(bytes(range(32)))
    envelope = seal(identity, device=DEVICE, boot=1, seq=1, prev=GENESIS, records=_records(1, time.time()))
    message, key = envelope.signed_bytes(), identity.device_key(DEVICE)
    return {"sign_raw_per_s": round(_rate(lambda: identity.sign(message))),
            "verify_raw_per_s": round(_rate(lambda: key.verifies(message, envelope.signature)))}


async def _sustained(root: Path, identity: Identity, lender: LenderProcess, context: Path) -> dict:
    from agent.spool import Spool
    from agent.uplink import Uplink, UplinkConfig

    spool = Spool.open(root / "sustained.db")
    uplink = Uplink(UplinkConfig(lender=lender.uri, security_context=context,
                                 batch_interval=0.05), spool)
    produced, prev = 0, GENESIS
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal produced, prev
        while not stop.is_set():
            produced += 1
            envelope = seal(identity, device=DEVICE, boot=1, seq=produced, prev=prev, records=_records(produced, time.time()))
            spool.append(envelope)
            prev = envelope.digest
            if len(spool) > 5000:  # the uplink is behind: sample no faster than it delivers
                await asyncio.sleep(0.01)
            else:
                await asyncio.sleep(0)

    sending = asyncio.create_task(uplink.run())
    producing = asyncio.create_task(produce())
    await asyncio.sleep(2.0)  # warm-up: OSCORE context, first batches
    acked_before, start = produced - len(spool), time.perf_counter()
    await asyncio.sleep(SUSTAIN_SECONDS)
    acked_after, elapsed = produced - len(spool), time.perf_counter() - start
    stop.set()
    for task in (producing, sending):
        task.cancel()
    await asyncio.gather(producing, sending, return_exceptions=True)
    await uplink.close()
    spool.close()
    envelopes_per_s = (acked_after - acked_before) / elapsed
    return {"e2e_envelopes_per_s": round(envelopes_per_s), "e2e_readings_per_s": round(envelopes_per_s * READINGS_PER_ENVELOPE)}


def drain_child(spool_path: str, context: str, lender: str) -> None:
    """Run in a fresh process: send the whole spool, then print elapsed seconds and peak RSS."""
    from agent.spool import Spool
    from agent.uplink import Uplink, UplinkConfig

    async def run() -> float:
        spool = Spool.open(spool_path)
        total = len(spool)
        uplink = Uplink(UplinkConfig(lender=lender, security_context=Path(context),
                                     batch_interval=0.05), spool)
        start = time.perf_counter()
        sending = asyncio.create_task(uplink.run())
        while len(spool):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await uplink.close()
        spool.close()
        return total, elapsed

    total, elapsed = asyncio.run(run())
    print(json.dumps({"envelopes": total, "seconds": elapsed,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _drain(root: Path, identity: Identity, lender: LenderProcess, context: Path, first_seq: int, prev: bytes) -> dict:
    from agent.spool import Spool

    count = DRAIN_READINGS // READINGS_PER_ENVELOPE
    with Spool.open(root / "backlog.db") as spool:
        batch = []
        for seq in range(first_seq, first_seq + count):
            envelope = seal(identity, device=DEVICE, boot=2, seq=seq, prev=prev, records=_records(seq, 1_767_225_600 + seq))
            prev = envelope.digest
            batch.append(envelope)
            if len(batch) == 1000:
                spool.append_many(batch)
                batch = []
        spool.append_many(batch)
    child = subprocess.run([sys.executable, "-m", "bench.e2e", "drain-child", str(root / "backlog.db"), str(context),
                            lender.uri], capture_output=True, text=True, check=True, timeout=600)
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    readings = figures["envelopes"] * READINGS_PER_ENVELOPE
    return {"drain_readings": readings, "drain_readings_per_s": round(readings / figures["seconds"]),
            "drain_envelopes_per_s": round(figures["envelopes"] / figures["seconds"]),
            "drain_peak_rss_mb": round(figures["peak_rss_mb"], 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "drain-child":
        drain_child(*sys.argv[2:5])
        return
    from bench import ingest

    result = raw_rates()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as directory:
        root = Path(directory)
        identity = Identity.generate()
        lender = LenderProcess(root / "lender", log_path=root / "lender.log")
        context = lender.register(DEVICE, identity.public_key.hex())
        lender.start()
        try:
            result.update(asyncio.run(_sustained(root, identity, lender, context)))
            # the drain continues the same device's chain far above the sustained run's seqs
            result.update(_drain(root, identity, lender, context, first_seq=10_000_000, prev=bytes(16)))
        finally:
            lender.stop()
    result.update({k: v for k, v in ingest.measure().items() if k in ("ingest_per_s", "ingest_readings_per_s")})
    result["readings_per_envelope"] = READINGS_PER_ENVELOPE
    result["e2e_vs_verify_raw"] = round(result["e2e_envelopes_per_s"] / result["verify_raw_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
