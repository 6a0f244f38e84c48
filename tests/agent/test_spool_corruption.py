"""A damaged spool at start: detected, moved aside with a clear log line, replaced, reported — never a crash loop.

The damaged files are made from a real spool (a database plus the -wal a
SIGKILL leaves behind) by overwriting, zeroing or truncating at positions
hypothesis picks, or by replacing a file with garbage.
"""
from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import agent.spool
from agent.spool import REASON_SPOOL_RESET, Spool
from telemetry import GapReason

from tests.kit.envelopes import chain, reading

ENVELOPES = chain(40, alarm_every=5)


def _snapshot_of_a_killed_spool() -> dict[str, bytes]:
    """The files a SIGKILLed agent leaves: a database whose recent appends are still in its -wal."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "spool.db"
        with Spool.open(path) as spool:
            spool.append_many(ENVELOPES[:20])
            spool.ack([1, 2, 3])
            spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # older history in the main file
            for envelope in ENVELOPES[20:]:
                spool.append(envelope)  # newer history only in the -wal
            spool.ack([21, 22])
            files = {suffix: Path(str(path) + suffix).read_bytes() for suffix in ("", "-wal")}
    assert len(files[""]) > 4096 and len(files["-wal"]) > 4096
    return files


SNAPSHOT = _snapshot_of_a_killed_spool()
SPOOLED = {e.seq for e in ENVELOPES} - {1, 2, 3, 21, 22}


def _lay_out(directory: Path, files: dict[str, bytes | None]) -> Path:
    path = directory / "spool.db"
    for suffix, data in files.items():
        if data is not None:
            Path(str(path) + suffix).write_bytes(data)
    return path


def _assert_recovered(path: Path, spool: Spool, damaged: dict[str, bytes | None], caplog) -> None:
    aside = spool.recovered_from
    assert aside is not None and aside.parent == path.parent
    assert re.fullmatch(r"spool\.db\.corrupt-\d{8}T\d{6}Z(\.\d+)?", aside.name)
    # The evidence is kept byte for byte, next to its -wal so sqlite3 can open the set.
    for suffix, data in damaged.items():
        if data is not None:
            assert Path(str(aside) + suffix).read_bytes() == data
    assert len(spool) == 0 and spool.head() is None
    report = spool.take_drops()
    assert report.lost_spools == (str(aside),) and report.ranges == ()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "agent.spool"]
    assert len(errors) == 1 and str(aside) in errors[0].getMessage() and "damaged" in errors[0].getMessage()


def _assert_usable_and_stable(path: Path, spool: Spool) -> None:
    """The agent goes on: it can append, peek and ack; and the next start is clean (no loop)."""
    head = spool.head()
    following = reading(head.seq + 1 if head else 100, head.digest if head else bytes(16))
    assert spool.append(following) is True
    assert following.seq in {b.seq for b in spool.peek(1000, 1 << 30)}
    stats = spool.stats()
    assert stats.count == len(spool.peek(1000, 1 << 30))
    assert spool.ack([following.seq]) == 1
    spool.close()
    with Spool.open(path) as again:
        assert again.recovered_from is None
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest.mark.parametrize("damage", [
    "not-sqlite", "empty-file", "header-overwritten", "truncated-half", "truncated-mid-page",
    "garbage-wal", "wal-without-database", "foreign-database",
])
def test_spool_moves_a_damaged_database_aside_and_starts_fresh(tmp_path, caplog, damage):
    main, wal = SNAPSHOT[""], SNAPSHOT["-wal"]
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, raw BLOB)")
    conn.commit(), conn.close()
    files = {
        "not-sqlite": {"": b"this is a log file, not a database\n" * 200},
        "empty-file": {"": b""},
        "header-overwritten": {"": b"\xff" * 100 + main[100:]},  # (with the -wal, page 1 lives there)
        "truncated-half": {"": main[: len(main) // 2]},
        "truncated-mid-page": {"": main[: 4096 + 1000], "-wal": wal},
        "garbage-wal": {"": main, "-wal": os.urandom(len(wal))},
        "wal-without-database": {"": None, "-wal": wal},
        "foreign-database": {"": foreign.read_bytes()},
    }[damage]
    path = _lay_out(tmp_path, files)
    with caplog.at_level(logging.ERROR, logger="agent.spool"):
        spool = Spool.open(path)
    _assert_recovered(path, spool, files, caplog)
    _assert_usable_and_stable(path, spool)


def test_spool_reset_is_the_gap_reason_the_wire_format_knows():
    assert REASON_SPOOL_RESET == GapReason.SPOOL_RESET.value


@pytest.mark.parametrize("shm", [None, bytes(32768), random.Random(7).randbytes(32768)],
                         ids=["no-shm", "zeroed-shm", "garbage-shm"])
def test_spool_opens_an_intact_killed_spool_without_losing_anything(tmp_path, shm):
    # The -shm is only an index SQLite rebuilds from the -wal: whatever it holds, nothing is lost.
    path = _lay_out(tmp_path, dict(SNAPSHOT) | {"-shm": shm})
    with Spool.open(path) as spool:
        assert spool.recovered_from is None
        assert {b.seq for b in spool.peek(1000, 1 << 30)} == SPOOLED
        assert spool.head() == (39, ENVELOPES[39].digest)


class _Crash(BaseException):
    """Stands in for power failing in the middle of a recovery."""


@pytest.mark.parametrize("crash_at", ["moving-aside", "installing"])
def test_spool_recovery_interrupted_by_a_crash_is_finished_and_still_reported(tmp_path, monkeypatch, crash_at):
    files = {"": b"\x00" * 8192, "-wal": SNAPSHOT["-wal"]}
    path = _lay_out(tmp_path, files)
    real_rename = os.rename
    renames = []

    def rename_then_crash(source, target):
        real_rename(source, target)
        renames.append(target)
        if crash_at == "moving-aside":
            raise _Crash()  # the main file moved, its -wal not yet

    def install_crashes(path):
        raise _Crash()

    if crash_at == "moving-aside":
        monkeypatch.setattr(agent.spool.os, "rename", rename_then_crash)
    else:
        monkeypatch.setattr(agent.spool, "_install_new", install_crashes)
    with pytest.raises(_Crash):
        Spool.open(path)
    monkeypatch.undo()
    assert not path.exists()  # the damaged main file is already aside
    with Spool.open(path) as spool:
        aside = spool.recovered_from
        assert aside is not None and Path(str(aside)).read_bytes() == files[""]
        assert Path(str(aside) + "-wal").read_bytes() == files["-wal"]  # the stray -wal joined it
        assert spool.take_drops().lost_spools == (str(aside),)
        assert len(spool) == 0
    assert not Path(str(path) + ".new").exists()
    _assert_usable_and_stable(path, Spool.open(path))


def test_spool_crash_while_first_creating_leaves_nothing_half_made(tmp_path, monkeypatch):
    path = tmp_path / "spool.db"
    monkeypatch.setattr(agent.spool, "_install_new", lambda path: (_ for _ in ()).throw(_Crash()))
    with pytest.raises(_Crash):
        Spool.open(path)
    monkeypatch.undo()
    Path(str(path) + ".new").write_bytes(b"half a database")  # as if power failed mid-build
    with Spool.open(path) as spool:
        assert spool.recovered_from is None and spool.take_drops() is None


# --- damage anywhere: hypothesis picks where ----------------------------------

damages = st.one_of(
    st.tuples(st.just("overwrite"), st.sampled_from(["", "-wal"]), st.floats(0, 1, exclude_max=True),
              st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("zero-page"), st.sampled_from(["", "-wal"]), st.floats(0, 1, exclude_max=True),
              st.just(b"")),
    st.tuples(st.just("truncate"), st.sampled_from(["", "-wal"]), st.floats(0, 1, exclude_max=True),
              st.just(b"")),
    st.tuples(st.just("replace"), st.sampled_from(["", "-wal"]), st.just(0.0),
              st.binary(min_size=0, max_size=9000)),
)


def _damage(files: dict[str, bytes], kind: str, target: str, where: float, data: bytes) -> dict[str, bytes]:
    files = dict(files)
    original = files[target]
    position = int(where * len(original))
    if kind == "overwrite":
        files[target] = original[:position] + data + original[position + len(data):]
    elif kind == "zero-page":
        start = position - position % 4096
        files[target] = original[:start] + bytes(min(4096, len(original) - start)) + original[start + 4096:]
    elif kind == "truncate":
        files[target] = original[:position]
    else:
        files[target] = data
    return files


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(damage=damages)
def test_spool_survives_damage_anywhere(caplog, damage):
    kind, target, where, data = damage
    files = _damage(SNAPSHOT, kind, target, where, data)
    caplog.clear()
    with tempfile.TemporaryDirectory() as directory:
        path = _lay_out(Path(directory), files)
        with caplog.at_level(logging.ERROR, logger="agent.spool"):
            spool = Spool.open(path)  # must never raise for a damaged file
        event(f"{kind} {target or 'db'}: " + ("moved aside" if spool.recovered_from else "still readable"))
        if spool.recovered_from is not None:
            _assert_recovered(path, spool, files, caplog)
        else:
            # Undetected damage is damage SQLite itself can read past (free space, a
            # torn -wal tail it ignores): whatever is spooled is well-formed.
            batch = spool.peek(1000, 1 << 30)
            assert all(type(b.seq) is int and type(b.raw) is bytes for b in batch)
            assert {b.seq for b in batch} <= {e.seq for e in ENVELOPES}
        _assert_usable_and_stable(path, spool)
