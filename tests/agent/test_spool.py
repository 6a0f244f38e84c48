"""The spool's policy: order, acks, the chain head, the byte bound and the drop report.

Real signed envelopes, real SQLite files in a temp dir; a hypothesis state
machine drives the spool and a plain-Python model of the policy side by side.
"""
from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.exc import AgentError, SpoolConfigError, SpoolError, SpoolSequenceError, SpoolUnavailableError
from agent.spool import REASON_OVERFLOW, DroppedRange, Spool
from telemetry import GENESIS, GapReason

from tests.kit.envelopes import chain, reading


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


def test_spool_hands_back_alarms_first_then_routine_in_seq_order(spool_path):
    envelopes = chain(20, alarm_every=6)
    with Spool.open(spool_path) as spool:
        for e in envelopes:
            assert spool.append(e) is True
        batch = spool.peek(100, 1 << 20)
    assert [(b.seq, b.alarm) for b in batch] == (
        [(s, True) for s in (0, 6, 12, 18)] + [(s, False) for s in range(20) if s % 6])
    assert [b.raw for b in batch] == [envelopes[b.seq].raw for b in batch]


def test_spool_batches_stop_at_the_byte_budget_but_never_starve(spool_path):
    envelopes = chain(5)
    size = len(envelopes[0].raw)
    with Spool.open(spool_path) as spool:
        spool.append_many(envelopes)
        assert [b.seq for b in spool.peek(10, 2 * size + 4)] == [0, 1]
        assert [b.seq for b in spool.peek(3, 1 << 20)] == [0, 1, 2]
        # One envelope bigger than the whole budget still leaves, alone.
        assert [b.seq for b in spool.peek(10, 1)] == [0]
        assert spool.peek(0, 1 << 20) == []


def test_spool_ack_deletes_exactly_the_acked_seqs(spool_path):
    envelopes = chain(10, alarm_every=4)
    with Spool.open(spool_path) as spool:
        spool.append_many(envelopes)
        # Duplicates and seqs the spool never had (already acked, or unknown) are harmless.
        assert spool.ack([4, 1, 1, 7, 99, 4]) == 3
        assert spool.ack([4]) == 0
        with pytest.raises(SpoolSequenceError, match="a seq must be an integer"):
            spool.ack([5.0])  # never rounded into some other envelope's seq
        assert [b.seq for b in spool.peek(100, 1 << 20)] == [0, 8, 2, 3, 5, 6, 9]
        stats = spool.stats()
    assert (stats.count, stats.alarm_count) == (7, 2)
    assert stats.bytes == sum(len(envelopes[s].raw) for s in (0, 8, 2, 3, 5, 6, 9))


def test_spool_keeps_its_chain_head_after_everything_is_acked_and_reopened(spool_path):
    envelopes = chain(3)
    with Spool.open(spool_path) as spool:
        assert spool.head() is None
        spool.append_many(envelopes)
        spool.ack([0, 1, 2])
        assert len(spool) == 0
    with Spool.open(spool_path) as spool:
        assert spool.head() == (2, envelopes[2].digest)
        assert spool.recovered_from is None
        following = reading(3, spool.head().digest)
        assert following.prev == envelopes[2].digest
        spool.append(following)
        assert spool.head() == (3, following.digest)


def test_spool_refuses_a_seq_that_is_not_above_the_chain_head(spool_path):
    envelopes = chain(3)
    with Spool.open(spool_path) as spool:
        spool.append(envelopes[1])
        for stale in (envelopes[0], envelopes[1]):
            with pytest.raises(SpoolSequenceError, match="not above the chain head 1"):
                spool.append(stale)
        # All or nothing: a batch with a bad seq inside stores none of it.
        with pytest.raises(SpoolSequenceError):
            spool.append_many([envelopes[2], reading(2, envelopes[2].digest)])
        assert [b.seq for b in spool.peek(10, 1 << 20)] == [1]
        assert spool.head().seq == 1 and len(spool) == 1
    assert issubclass(SpoolSequenceError, ValueError) and issubclass(SpoolSequenceError, AgentError)


def test_spool_overflow_drops_routine_oldest_first_and_never_an_alarm(spool_path):
    envelopes = chain(12, alarm_every=3)  # alarms at 0, 3, 6, 9
    sizes = {e.seq: len(e.raw) for e in envelopes}
    bound = sum(sizes[s] for s in range(6))  # room for roughly six
    with Spool.open(spool_path, max_bytes=bound) as spool:
        for e in envelopes:
            spool.append(e)
            assert spool.stats().bytes <= bound
        kept = [b.seq for b in spool.peek(100, 1 << 20)]
        report = spool.take_drops()
    assert [s for s in kept if s % 3 == 0] == [0, 3, 6, 9]  # every alarm is still there
    dropped = {s for r in report.ranges for s in range(r.first_seq, r.last_seq + 1)}
    assert dropped | set(kept) == set(range(12)) and not dropped & set(kept)
    assert all(s % 3 for s in dropped)
    # Oldest first: every routine envelope kept is newer than every one dropped.
    assert min(s for s in kept if s % 3) > max(dropped)
    assert report.count == len(dropped) and {r.reason for r in report.ranges} == {REASON_OVERFLOW}
    assert REASON_OVERFLOW == GapReason.OVERFLOW.value


def test_spool_full_of_alarms_stores_the_next_alarm_over_the_bound_and_drops_routine(spool_path):
    alarms = chain(4, alarm_every=1)
    bound = sum(len(e.raw) for e in alarms[:3])
    with Spool.open(spool_path, max_bytes=bound) as spool:
        spool.append_many(alarms[:3])
        assert spool.append(alarms[3]) is True  # an alarm is never dropped, even over the bound
        assert spool.stats().bytes > bound
        routine = reading(4, alarms[3].digest)
        assert spool.append(routine) is False  # cannot fit: the newcomer itself is dropped
        assert spool.head() == (4, routine.digest)  # the chain still moved on through it
        assert spool.take_drops().ranges == (DroppedRange(4, 4, REASON_OVERFLOW),)
        assert [b.seq for b in spool.peek(10, 1 << 20)] == [0, 1, 2, 3]


def test_spool_drop_report_survives_a_restart_until_cleared(spool_path):
    envelopes = chain(30)
    bound = 5 * 270
    with Spool.open(spool_path, max_bytes=bound) as spool:
        spool.append_many(envelopes[:20])
        first = spool.take_drops()
    with Spool.open(spool_path, max_bytes=bound) as spool:
        assert spool.take_drops() == first  # nothing forgotten across the restart
        report = spool.take_drops()
        # Drops that happen while the agent signs the gap record extend the same run...
        spool.append_many(envelopes[20:25])
        spool.clear_drops(report)
        # ...and clearing the report keeps exactly that unreported tail.
        tail = spool.take_drops()
        assert tail.ranges == (DroppedRange(report.ranges[-1].last_seq + 1, tail.ranges[-1].last_seq, REASON_OVERFLOW),)
        spool.clear_drops(tail)
        assert spool.take_drops() is None
        spool.clear_drops(tail)  # clearing twice forgets nothing new
    with Spool.open(spool_path, max_bytes=bound) as spool:
        assert spool.take_drops() is None


def test_a_closed_spool_says_so(spool_path):
    spool = Spool.open(spool_path)
    spool.close()
    spool.close()  # closing twice is harmless
    for call in (lambda: spool.append(reading(0, GENESIS)), lambda: spool.peek(), lambda: spool.ack([0]),
                 lambda: spool.take_drops()):
        with pytest.raises(SpoolUnavailableError, match="is closed"):
            call()


def test_spool_is_refused_to_a_second_process_while_one_holds_it(spool_path):
    with Spool.open(spool_path):
        with pytest.raises(SpoolUnavailableError, match="in use by another process"):
            Spool.open(spool_path)
    Spool.open(spool_path).close()  # released on close


@pytest.mark.parametrize("level, pragma", [("FULL", 2), ("NORMAL", 1), ("normal", 1)])
def test_spool_runs_at_the_synchronous_level_it_was_given(spool_path, level, pragma):
    with Spool.open(spool_path, synchronous=level) as spool:
        assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
        assert spool._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kwargs, message", [
    ({"synchronous": "OFF"}, "synchronous level must be one of FULL, NORMAL, got 'OFF'"),
    ({"max_bytes": 0}, "max_bytes must be a positive integer, got 0"),
    ({"max_bytes": 1.5}, "max_bytes must be a positive integer"),
])
def test_spool_rejects_settings_it_cannot_honour(spool_path, kwargs, message):
    with pytest.raises(SpoolConfigError, match=message):
        Spool.open(spool_path, **kwargs)
    assert not spool_path.exists()


def test_spool_says_clearly_when_its_directory_does_not_exist(tmp_path):
    with pytest.raises(SpoolUnavailableError, match="cannot create lock file"):
        Spool.open(tmp_path / "missing" / "spool.db")


def test_spool_file_is_a_plain_sqlite_database_with_the_documented_schema(spool_path):
    with Spool.open(spool_path) as spool:
        spool.append_many(chain(3, alarm_every=2))
    conn = sqlite3.connect(spool_path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert tables == {"alarm", "routine", "chain_head", "drop_log", "refused", "sqlite_sequence"}
        assert conn.execute("SELECT seq FROM alarm").fetchall() == [(0,), (2,)]
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


# The schema the previous release (spool schema 2) created, as it wrote it.
SCHEMA_2 = (
    "CREATE TABLE alarm (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL) STRICT",
    "CREATE TABLE routine (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL) STRICT",
    "CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, digest BLOB NOT NULL) STRICT",
    "CREATE TABLE drop_log (id INTEGER PRIMARY KEY AUTOINCREMENT, reason TEXT NOT NULL,"
    " first_seq INTEGER, last_seq INTEGER, detail TEXT) STRICT",
    "CREATE TABLE refused (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL, alarm INTEGER NOT NULL,"
    " reason INTEGER NOT NULL, text TEXT NOT NULL) STRICT",
)


def test_a_spool_from_the_previous_release_is_migrated_in_place_and_keeps_every_envelope(spool_path):
    envelopes = chain(5, alarm_every=2)
    conn = sqlite3.connect(spool_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA application_id=0x504C5753")
    conn.execute("PRAGMA user_version=2")
    for statement in SCHEMA_2:
        conn.execute(statement)
    for e in envelopes:
        conn.execute(f"INSERT INTO {'alarm' if e.alarm else 'routine'} (seq, raw) VALUES (?, ?)", (e.seq, e.raw))
    conn.execute("INSERT INTO chain_head (id, seq, digest) VALUES (1, ?, ?)", (4, envelopes[4].digest))
    conn.execute("INSERT INTO drop_log (reason, first_seq, last_seq) VALUES ('overflow', 7, 9)")
    conn.close()
    with Spool.open(spool_path) as spool:
        assert spool.recovered_from is None  # migrated, not moved aside
        assert [b.raw for b in spool.peek(100, 1 << 20)] == [e.raw for e in envelopes if e.alarm] + [
            e.raw for e in envelopes if not e.alarm]
        assert spool.head() == (4, envelopes[4].digest) and spool.head_counters() == (0, 0)
        report = spool.take_drops()
        assert report.ranges == (DroppedRange(7, 9, REASON_OVERFLOW),) and report.queued is None
    with Spool.open(spool_path) as spool:  # and it opens again as a spool of this release
        assert spool._conn.execute("PRAGMA user_version").fetchone()[0] == 3 and len(spool) == 5


# --- the policy against a model ---------------------------------------------

class SpoolAgainstModel(RuleBasedStateMachine):
    """Random appends, batches, acks, restarts and drop reports; the spool must match a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "spool.db"
        self.bound = 1900  # about eight envelopes: overflow happens often
        self.spool = Spool.open(self.path, max_bytes=self.bound)
        self.next_seq, self.prev = 0, GENESIS
        self.alarms: dict[int, bytes] = {}
        self.routine: dict[int, bytes] = {}  # insertion order == seq order
        self.dropped: set[int] = set()
        self.head = None

    def teardown(self) -> None:
        self.spool.close()
        self.dir.cleanup()

    def _make(self, alarm: bool):
        envelope = reading(self.next_seq, self.prev, alarm=alarm)
        self.next_seq += 1 + (envelope.seq % 5 == 4)  # seqs may jump (a reboot reserves a new block)
        self.prev = envelope.digest
        return envelope

    def _model_append(self, envelope) -> bool:
        size = len(envelope.raw)
        self.head = (envelope.seq, envelope.digest)
        alarm_bytes = sum(map(len, self.alarms.values()))
        total = alarm_bytes + sum(map(len, self.routine.values()))
        if total + size > self.bound:
            if not envelope.alarm and alarm_bytes + size > self.bound:
                self.dropped.add(envelope.seq)
                return False
            while total + size > self.bound and self.routine:
                oldest = next(iter(self.routine))
                total -= len(self.routine.pop(oldest))
                self.dropped.add(oldest)
        (self.alarms if envelope.alarm else self.routine)[envelope.seq] = envelope.raw
        return True

    @rule(alarm=st.booleans())
    def append(self, alarm):
        envelope = self._make(alarm)
        assert self.spool.append(envelope) is self._model_append(envelope)

    @rule(alarms=st.lists(st.booleans(), min_size=1, max_size=4))
    def append_together(self, alarms):
        envelopes = [self._make(a) for a in alarms]
        assert self.spool.append_many(envelopes) == sum(self._model_append(e) for e in envelopes)

    @rule(data=st.data())
    def ack(self, data):
        present = sorted(self.alarms) + sorted(self.routine)
        chosen = data.draw(st.lists(st.sampled_from(present), unique=True) if present else st.just([]))
        strangers = data.draw(st.lists(st.integers(0, self.next_seq + 3), max_size=3))
        expected = len(set(chosen) | (set(strangers) & set(present)))
        for seq in set(chosen) | set(strangers):
            self.alarms.pop(seq, None)
            self.routine.pop(seq, None)
        assert self.spool.ack(chosen + strangers) == expected

    @rule()
    def restart(self):
        self.spool.close()
        self.spool = Spool.open(self.path, max_bytes=self.bound)
        assert self.spool.recovered_from is None

    @precondition(lambda self: self.dropped)
    @rule(more=st.booleans())
    def report_gap(self, more):
        report = self.spool.take_drops()
        reported = {s for r in report.ranges for s in range(r.first_seq, r.last_seq + 1)}
        assert reported == self.dropped
        if more:  # drops may happen between taking the report and clearing it
            envelope = self._make(False)
            assert self.spool.append(envelope) is self._model_append(envelope)
        self.spool.clear_drops(report)
        self.dropped -= reported

    @invariant()
    def matches_the_model(self):
        stats = self.spool.stats()
        assert stats.count == len(self.alarms) + len(self.routine) == len(self.spool)
        assert stats.alarm_count == len(self.alarms)
        assert stats.bytes == sum(map(len, self.alarms.values())) + sum(map(len, self.routine.values()))
        assert stats.alarm_bytes == sum(map(len, self.alarms.values()))
        batch = self.spool.peek(1000, 1 << 30)
        assert [(b.seq, b.raw) for b in batch] == sorted(self.alarms.items()) + sorted(self.routine.items())
        assert self.spool.head() == self.head
        report = self.spool.take_drops()
        reported = {s for r in report.ranges for s in range(r.first_seq, r.last_seq + 1)} if report else set()
        assert reported == self.dropped
        if report:
            assert report.count == len(self.dropped)
            assert all(a.last_seq + 1 < b.first_seq for a, b in zip(report.ranges, report.ranges[1:]))


SpoolAgainstModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_spool_policy_matches_its_model = SpoolAgainstModel.TestCase


def test_spool_errors_share_the_agent_root():
    assert issubclass(SpoolError, AgentError)
    assert issubclass(SpoolUnavailableError, OSError)


def test_envelopes_the_lender_refused_for_good_leave_the_queue_but_are_kept_across_a_restart(spool_path):
    from types import SimpleNamespace

    with Spool.open(spool_path) as spool:
        spool.append_many(chain(5, alarm_every=2))
        before = spool.stats()
        moved = spool.set_aside([SimpleNamespace(seq=1, reason=3, text="bad signature"),
                                 SimpleNamespace(seq=2, reason=6, text="conflicting duplicate"),
                                 SimpleNamespace(seq=99, reason=3, text="not in the spool")])
        assert moved == 2 and len(spool) == 3 and spool.stats().bytes < before.bytes
        assert spool.ack([1, 2]) == 0  # an ack never deletes evidence
    with Spool.open(spool_path) as spool:
        assert [item.seq for item in spool.peek(100, 1 << 20)] == [0, 4, 3]
        assert spool.refused() == [(1, 3, "bad signature"), (2, 6, "conflicting duplicate")]
        assert len(spool) == 3
