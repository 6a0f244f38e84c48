"""`python -m bench commands`: how long a lender's inspection takes to come back from a gateway draining a backlog.

A real `pledgewatch lender serve` process on 127.0.0.1 and, in this process,
a gateway agent (spool at synchronous=FULL, uplink over OSCORE, the command
inbox polling /c every `POLL` s) that starts with `BACKLOG` envelopes spooled
(hours offline). While the backlog drains, the lender issues `INSPECTIONS`
inspections one after another through `CommandDesk`; each round trip is from
the command's issue to the signed snapshot with its nonce being stored (and
so verified) at the lender.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from agent.commands import CommandInbox
from agent.daemon import Agent
from agent.recorder import Recorder
from agent.spool import Spool
from agent.state import AgentState
from agent.uplink import Uplink, UplinkConfig
from hil.processes import LenderProcess
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from telemetry.identity import Identity
from telemetry.senml import Record

DEVICE = "gw-bench-commands"
BACKLOG = 10_000
INSPECTIONS = 30
POLL = 0.1
TIMEOUT = 30.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _measure(root: Path, lender: LenderProcess, context: Path, identity: Identity) -> dict:
    spool = Spool.open(root / "spool.db", synchronous="FULL")
    state = AgentState.open(root / "state.json")
    recorder = Recorder.start(identity, DEVICE, spool, state, now=time.time())
    for n in range(BACKLOG):
        recorder.record([Record("temp", value=20.0 + n % 40 / 4, unit="Cel", time=time.time())])
    inbox = CommandInbox(root, DEVICE, lender_identity(lender.data).public_key, clock=time.time)
    uplink = Uplink(UplinkConfig(lender=lender.uri, security_context=context, batch_interval=0.05), spool)
    agent = Agent(device=DEVICE, identity=identity, spool=spool, state=state, uplink=uplink, commands=inbox,
                  command_poll=POLL)
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await agent.started.wait()
    round_trips, backlog_at_start, timeouts = [], len(spool), 0
    try:
        with SQLiteStore.open(lender.data) as store:
            desk = CommandDesk(store, lender_identity(lender.data))
            for _ in range(INSPECTIONS):
                issued = desk.inspect(DEVICE, "bench")
                while desk.snapshot(issued) is None and time.time() - issued.issued_at < TIMEOUT:
                    await asyncio.sleep(0.01)
                answer = desk.snapshot(issued)
                if answer is None:
                    timeouts += 1
                    continue
                round_trips.append((store.envelope(DEVICE, answer.seq).received_at - issued.issued_at) * 1000)
        backlog_at_end = len(spool)
    finally:
        stop.set()
        await running
        spool.close()
    return {
        "inspect_round_trip_ms_p50": round(statistics.median(round_trips), 1) if round_trips else None,
        "inspect_round_trip_ms_p99": round(_percentile(round_trips, 0.99), 1) if round_trips else None,
        "inspect_round_trip_ms_max": round(max(round_trips), 1) if round_trips else None,
        "inspections": INSPECTIONS, "inspect_timeouts": timeouts, "poll_s": POLL,
        "backlog_envelopes": BACKLOG, "backlog_at_first_inspection": backlog_at_start,
        "backlog_after_last_inspection": backlog_at_end,
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as directory:
        root = Path(directory)
        identity = Identity.generate()
        lender = LenderProcess(root / "lender", log_path=root / "lender.log")
        context = lender.register(DEVICE, identity.public_key.hex())
        lender.start()
        try:
            result = asyncio.run(_measure(root, lender, context, identity))
        finally:
            lender.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
