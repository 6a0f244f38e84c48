"""Hypothesis plays the borrower: restarts, restored copies of the state directory, a deleted spool, a cut uplink.

The agent is the real one (tests.kit.agent: its spool, state file and lender
token on disk, its uplink over CoAP), the lender a real server on 127.0.0.1
(tests.kit.lender); each session of the agent signs alarms (a tamper contact
opened and closed) and readings, with the uplink up or cut, and stops
cleanly. Between sessions the borrower may keep a copy of the state
directory, put an older copy back, or delete the spool. A last session with
the uplink up delivers whatever the gateway still holds.

What must hold: the lender is never OK while an alarm the device signed is
missing — every alarm that the evidence the lender holds descends from. The
one thing no lender can see without a hardware counter on the gateway is an
alarm that never left it and that the borrower rolled the whole state back
past before anything later reached the lender: that history is a fork the
lender never heard of, as if the gateway had been off meanwhile
(docs/lender-guide.md, "What the borrower can still do"). Those are counted
(`hypothesis.event`), not asserted.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from hil.processes import free_udp_port
from lender.evidence.alarms import asset_status
from lender.evidence.risks import Judge
from lender.evidence.store import SQLiteStore
from lender.evidence.tokens import token_key
from telemetry.alarms import CLEARED, GATEWAY, RAISED, alarm_name
from telemetry.senml import Record
from tests.kit.agent import DEVICE, QUICK_UPLINK, build_agent, registered_lender, running

TAMPER = alarm_name("tamper", GATEWAY)
LINGER_S = 0.25          # how long an online session lets the uplink work before it stops

# ("run", alarm pairs, uplink up): one session of the agent; the rest is what the borrower does between sessions
SESSIONS = [("run", 0, True), ("run", 1, True), ("run", 0, False), ("run", 1, False), ("run", 2, False)]
BORROWER = [("copy",), ("delete-spool",), ("restore", 0), ("restore", 1)]
interleavings = st.lists(st.sampled_from(SESSIONS + BORROWER), min_size=2, max_size=7)


class Ledger:
    """Every envelope the agent signed, in the order of the state's own past, across the borrower's restores."""

    def __init__(self) -> None:
        self.timeline: list[bytes] = []                     # digests signed in the current state's past, in order
        self.alarms: set[bytes] = set()
        self.descends: dict[bytes, frozenset[bytes]] = {}   # digest -> the alarm envelopes signed before it, and it
        self.rolled_back: set[bytes] = set()                # signed in a past a restore threw away

    def signed(self, envelope) -> None:
        if envelope.gap is None and any(r.name.startswith("alarm.") for r in envelope.records):
            self.alarms.add(envelope.digest)
        self.timeline.append(envelope.digest)
        self.descends[envelope.digest] = frozenset(d for d in self.timeline if d in self.alarms)

    def restore(self, timeline: list[bytes]) -> None:
        self.rolled_back |= set(self.timeline) - set(timeline)
        self.timeline = list(timeline)


async def one_session(directory: Path, uri: str, ledger: Ledger, *, alarms: int, drain: bool = False) -> None:
    agent = build_agent(directory, lender=uri, uplink=QUICK_UPLINK, heartbeat_s=60.0)
    append = agent.spool.append

    def logged(envelope):   # what the recorder appends is what the device signed
        stored = append(envelope)
        ledger.signed(envelope)
        return stored

    agent.spool.append = logged

    async def scenario() -> None:
        for _ in range(alarms):
            agent.record([Record(TAMPER, string=RAISED, time=time.time())])
            agent.record([Record(TAMPER, string=CLEARED, time=time.time())])
        agent.record([Record("temp", value=4.5, unit="Cel", time=time.time())])
        if not drain:
            await asyncio.sleep(LINGER_S)
            return
        deadline = time.monotonic() + 8
        while len(agent.spool) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    try:
        await running(agent, scenario)
    finally:
        agent.spool.close()
        agent.state.close()


@contextlib.contextmanager
def fresh_site():
    """A lender (plain CoAP, the device registered) and an empty gateway directory, for one example."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with registered_lender(root / "lender") as lender:
            yield root, lender


@settings(max_examples=12, deadline=None)
@given(steps=interleavings)
@example(steps=[("run", 0, True), ("run", 1, False), ("delete-spool",)])             # issue 12's first attack
@example(steps=[("run", 1, True), ("copy",), ("run", 1, True), ("restore", 0)])      # back past a delivered alarm
@example(steps=[("copy",), ("run", 1, False), ("delete-spool",), ("run", 0, True), ("restore", 0)])
@example(steps=[("run", 1, True), ("run", 1, False), ("run", 0, True)])              # honest: restarts, an outage
def test_no_interleaving_of_restarts_restores_spool_deletion_and_outages_hides_an_alarm(steps):
    with fresh_site() as (root, lender):
        gateway, copies, ledger = root / "gateway", [], Ledger()
        gateway.mkdir()
        online, offline = f"coap://127.0.0.1:{lender.port}", f"coap://127.0.0.1:{free_udp_port()}"
        destructive = False
        for step in steps:
            if step[0] == "run":
                asyncio.run(one_session(gateway, online if step[2] else offline, ledger, alarms=step[1]))
            elif step[0] == "copy":
                copy = root / f"copy-{len(copies)}"
                shutil.copytree(gateway, copy)
                copies.append((copy, list(ledger.timeline)))
            elif step[0] == "restore" and copies:
                copy, timeline = copies[step[1] % len(copies)]
                shutil.rmtree(gateway)
                shutil.copytree(copy, gateway)
                ledger.restore(timeline)
                destructive = True
            elif step[0] == "delete-spool":
                for suffix in ("", "-wal", "-shm"):
                    path = gateway / f"spool.db{suffix}"
                    destructive |= path.exists()
                    path.unlink(missing_ok=True)
        asyncio.run(one_session(gateway, online, ledger, alarms=0, drain=True))

        with SQLiteStore.open(root / "lender", create=False) as store:
            held = {stored.digest for stored in store.envelopes(DEVICE)}
            judge = Judge(now=time.time(), token_key=token_key(root / "lender", create=False))
            statuses = asset_status(store, DEVICE, judge)
        witnessed = {alarm for digest in held for alarm in ledger.descends.get(digest, ())}
        missing = witnessed - held                       # alarms that evidence the lender holds comes after
        forked_away = ledger.alarms - held - witnessed   # alarms of a past thrown away before anything after it arrived
        states = {s.state for s in statuses}
        risks = sorted({r.kind for s in statuses for r in s.risks})
        if forked_away:
            event("an alarm rolled back before anything after it reached the lender (undetectable without hardware)")
        if missing:
            event("an alarm hidden: " + ", ".join(risks))
            assert "OK" not in states, (f"{len(missing)} alarm(s) the held evidence descends from are missing, "
                                        f"and the lender says {states} (risks {risks})")
        if held & ledger.rolled_back:   # the lender holds evidence of a past the gateway's state was rolled back from
            event("a restore past delivered evidence: " + ", ".join(risks))
            assert "OK" not in states, f"the state was rolled back past delivered evidence; the lender says {states}"
        if not destructive:
            assert not missing and not forked_away and states == {"OK"}, (states, risks)
