"""`python -m bench commands`: how long a lender's inspection takes to come back from a gateway draining a backlog.

A real `pledgewatch lender serve` process on 127.0.0.1 and, in this process,
a gateway agent (spool at synchronous=FULL, uplink over OSCORE, the command
inbox fed by the lender's command notices, /c/o observed, with /c polled
every `POLL` s as the fallback) that starts with `BACKLOG` envelopes spooled
(hours offline). While the backlog drains, the lender issues `INSPECTIONS`
inspections one after another through `CommandDesk` (another store
connection, as the CLI's process is); each round trip is from the command's
issue to the signed snapshot with its nonce being stored (and so verified)
at the lender. The agent observes as deployed, so while it observes it polls
only every `agent.daemon.OBSERVING_POLL` s: the `inspect_round_trip_ms_*`
figures are Observe's. A second gateway with its own backlog does the same
with Observe switched off here (the poll alone, every `POLL` s): the
``*_poll`` figures. `notice_look_ms_*` is what the lender's look for new
commands costs per observed device (`lender.coap.commands.newest_issued`, a
SQLite store with `FLEET` devices of `COMMANDS_EACH` commands each), done
every `CHECK_S` s for every observed device; extrapolated to `OBSERVERS`.
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
from lender.coap.commands import CHECK_S, newest_issued
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
FLEET = 200
OBSERVERS = 1000   # the figure extrapolated: the share of a core looking for this many observed gateways
COMMANDS_EACH = 20


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _never(notice) -> None:
    await asyncio.Event().wait()   # Observe switched off: the poll alone


async def _measure(root: Path, lender: LenderProcess, device: str, context: Path, identity: Identity, *,
                   observe: bool) -> dict:
    root.mkdir()
    spool = Spool.open(root / "spool.db", synchronous="FULL")
    state = AgentState.open(root / "state.json")
    recorder = Recorder.start(identity, device, spool, state, now=time.time())
    for n in range(BACKLOG):
        recorder.record([Record("temp", value=20.0 + n % 40 / 4, unit="Cel", time=time.time())])
    inbox = CommandInbox(root, device, lender_identity(lender.data).public_key, clock=time.time)
    uplink = Uplink(UplinkConfig(lender=lender.uri, security_context=context, batch_interval=0.05), spool)
    agent = Agent(device=device, identity=identity, spool=spool, state=state, uplink=uplink, commands=inbox,
                  command_poll=POLL)
    if not observe:
        uplink.watch_commands = _never
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await agent.started.wait()
    deadline = time.monotonic() + TIMEOUT
    while observe and not uplink.observing and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    round_trips, backlog_at_start, timeouts = [], len(spool), 0
    try:
        with SQLiteStore.open(lender.data) as store:
            desk = CommandDesk(store, lender_identity(lender.data))
            for _ in range(INSPECTIONS):
                issued = desk.inspect(device, "bench")
                while desk.snapshot(issued) is None and time.time() - issued.issued_at < TIMEOUT:
                    await asyncio.sleep(0.01)
                answer = desk.snapshot(issued)
                if answer is None:
                    timeouts += 1
                    continue
                round_trips.append((store.envelope(device, answer.seq).received_at - issued.issued_at) * 1000)
        backlog_at_end = len(spool)
    finally:
        stop.set()
        await running
        spool.close()
    suffix = "" if observe else "_poll"
    return {
        f"inspect_round_trip_ms_p50{suffix}": round(statistics.median(round_trips), 1) if round_trips else None,
        f"inspect_round_trip_ms_p99{suffix}": round(_percentile(round_trips, 0.99), 1) if round_trips else None,
        f"inspect_round_trip_ms_max{suffix}": round(max(round_trips), 1) if round_trips else None,
        f"inspect_timeouts{suffix}": timeouts, f"backlog_at_first_inspection{suffix}": backlog_at_start,
        f"backlog_after_last_inspection{suffix}": backlog_at_end,
        **({"observation_registrations": uplink.registrations} if observe else {}),
    }


def _look_cost(root: Path) -> dict:
    """The lender's look for one observed device's newest command (`newest_issued`), in a fleet-sized store."""
    data = root / "fleet"
    data.mkdir()
    identity = Identity.generate()
    with SQLiteStore.open(data) as store:
        desk = CommandDesk(store, identity)
        devices = [f"gw-{n:04d}" for n in range(FLEET)]
        for device in devices:
            for _ in range(COMMANDS_EACH):
                desk.inspect(device, "bench")
        times = []
        for _ in range(3):
            for device in devices:
                began = time.perf_counter()
                newest_issued(store, device)
                times.append((time.perf_counter() - began) * 1000)
    p50 = statistics.median(times)
    return {"notice_look_ms_p50": round(p50, 3), "notice_look_ms_p99": round(_percentile(times, 0.99), 3),
            "notice_look_fleet": FLEET, "notice_look_commands_each": COMMANDS_EACH, "notice_check_s": CHECK_S,
            f"notice_look_core_share_{OBSERVERS}_observed": round(OBSERVERS * p50 / 1000 / CHECK_S, 3)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as directory:
        root = Path(directory)
        identities = {DEVICE: Identity.generate(), DEVICE + "-poll": Identity.generate()}
        lender = LenderProcess(root / "lender", log_path=root / "lender.log")
        contexts = {device: lender.register(device, identity.public_key.hex()) for device, identity in identities.items()}
        lender.start()
        result = {"inspections": INSPECTIONS, "poll_s": POLL, "backlog_envelopes": BACKLOG}
        try:
            for (device, identity), observe in zip(identities.items(), (True, False)):
                result.update(asyncio.run(_measure(root / device, lender, device, contexts[device], identity,
                                                   observe=observe)))
        finally:
            lender.stop()
        result.update(_look_cost(root))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
