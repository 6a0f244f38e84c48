"""The spool across SIGKILL: a real child process appends and acks until killed, 200 times over.

After every kill the parent checks, against what the child had reported as
returned: each append that returned is in the spool exactly once (or, for a
routine envelope, in the durable drop report), each ack that returned is
gone, nothing appears that was never appended, the chain head is the last
envelope appended, and the database passes SQLite's integrity_check.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

from agent.spool import Spool

from tests.kit.envelope_file import write_envelope_file
from tests.kit.crash import killed_after
from tests.kit.envelopes import chain

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

KILLS = 200
ENVELOPES = 14_000
ALARM_EVERY = 7
BOUND = 40 * 230  # about forty envelopes: the child overflows the spool again and again


class Ledger:
    """What the parent knows from the child's reports, across all runs."""

    def __init__(self, envelopes) -> None:
        self.envelopes = envelopes
        self.appended: set[int] = set()
        self.acked: set[int] = set()
        self.next_seq = 0  # the seq the child appends next (it may have, unreported, when killed)
        self.ack_in_flight: list[int] = []
        self.dropped = 0  # how many routine envelopes the overflow policy has dropped so far

    def read(self, lines: list[bytes]) -> None:
        self.ack_in_flight = []
        for line in lines:
            kind, *fields = line.split()
            if kind == b"o":
                assert int(fields[0]) == self.next_seq - 1, f"child opened at head {fields[0]}"
            elif kind == b"a":
                seq = int(fields[0])
                assert seq == self.next_seq
                self.appended.add(seq)
                self.next_seq += 1
            elif kind == b"p":
                self.ack_in_flight = [int(s) for s in fields]
            elif kind == b"k":
                self.acked.update(self.ack_in_flight)
                self.ack_in_flight = []
            elif kind == b"e":
                raise AssertionError(f"the child used all {ENVELOPES} envelopes; raise ENVELOPES")

    def check(self, path: Path) -> None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        with Spool.open(path, max_bytes=BOUND) as spool:
            assert spool.recovered_from is None, "a kill must never look like a damaged database"
            batch = spool.peek(10**6, 1 << 40)
            report = spool.take_drops()
            head = spool.head()
            stats = spool.stats()
        present = {b.seq: b for b in batch}
        assert len(present) == len(batch), "a seq is stored twice"
        dropped = {s for r in report.ranges for s in range(r.first_seq, r.last_seq + 1)} if report else set()
        # The append in flight at the kill either committed (head moved to it) or did not.
        in_flight = self.next_seq
        if head is not None and head.seq == in_flight:
            self.appended.add(in_flight)
            self.next_seq += 1
        assert head == ((self.next_seq - 1, self.envelopes[self.next_seq - 1].digest) if self.next_seq else None)
        # An ack in flight either happened or not; whatever is absent now was acked.
        self.acked.update(s for s in self.ack_in_flight if s not in present)
        for seq, stored in present.items():
            assert seq in self.appended and seq not in self.acked, f"seq {seq} should not be spooled"
            assert stored.raw == self.envelopes[seq].raw and stored.alarm == self.envelopes[seq].alarm
        assert not dropped & set(present), "a seq is both dropped and spooled"
        assert dropped <= self.appended
        assert not {s for s in dropped if self.envelopes[s].alarm}, "an alarm was dropped"
        lost = self.appended - self.acked - set(present) - dropped
        assert not lost, f"appends that had returned are gone, and no drop says so: {sorted(lost)[:10]}"
        assert stats.count == len(batch) and stats.bytes == sum(len(b.raw) for b in batch)
        self.dropped = len(dropped)


def test_spool_keeps_every_reading_across_sigkill(tmp_path):
    envelopes = chain(ENVELOPES, alarm_every=ALARM_EVERY)
    envelope_file = tmp_path / "envelopes.bin"
    write_envelope_file(str(envelope_file), envelopes)
    path = tmp_path / "spool.db"
    ledger = Ledger(envelopes)
    rng = random.Random(20260522)
    acks = 0
    for _ in range(KILLS):
        # Kill at a random report: sometimes still starting up or opening the spool.
        lines = killed_after(rng, [sys.executable, "-I", str(HERE / "spool_crash_child.py"), str(REPO), str(path),
                                   str(BOUND), str(envelope_file)], most=60)
        ledger.read(lines)
        ledger.check(path)
        acks += any(line.startswith(b"k") for line in lines)
    # The run exercised what it claims to: overflow, acks and a real backlog.
    assert len(ledger.appended) > 20 * KILLS and acks > KILLS // 2 and ledger.dropped > 1000
    assert not list(tmp_path.glob("spool.db.corrupt-*"))


def test_a_kill_while_the_spool_is_first_created_leaves_one_that_opens_with_nothing_lost(tmp_path):
    """SIGKILL at random moments of Spool.open's first creation (a forked child): the next open succeeds on a fresh
    spool with no recovery and no drop (nothing existed to lose), whatever was left: a half-built `.new` with its
    rollback journal (SQLite's switch to WAL) or its WAL (committed, not yet closed) beside it."""
    rng = random.Random(20261206)
    leftovers = set()
    for n in range(200):
        path = tmp_path / str(n) / "spool.db"
        path.parent.mkdir()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                Spool.open(path).close()
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 0.008))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers.add(tuple(sorted(p.name for p in path.parent.iterdir() if p.name.startswith("spool.db.new"))))
        with Spool.open(path) as spool:
            assert spool.recovered_from is None and spool.take_drops() is None and len(spool) == 0
        assert sorted(p.name for p in path.parent.iterdir()) == ["spool.db", "spool.db.lock"]
    # the kills landed inside the creation, in each of its windows
    assert {("spool.db.new",), ("spool.db.new", "spool.db.new-journal")} <= leftovers
