"""The agent's durable spool: signed envelopes kept on disk until the lender acks them.

A `Spool` is one SQLite database in WAL mode (stdlib `sqlite3`). `append` is
durable when it returns (at the documented synchronous level, see
docs/spool.md); `peek` hands the uplink a batch, alarms first; `ack` deletes
exactly what the lender stored. The spool is bounded by bytes: when full it
drops routine envelopes oldest first, never alarms, and writes down every drop
in the same transaction so the agent can sign a gap record for it.

A damaged database found at open is moved aside (`<name>.corrupt-<UTC time>`,
with its -wal and -shm) and a fresh spool takes its place, remembering the loss
durably until the agent has reported it. Opening never raises for a damaged
file; it raises `SpoolUnavailableError` only when the directory itself cannot
be used (missing, read-only, disk full) or another process holds the spool.

Policy lives in plain methods driven by unit tests without an event loop; the
spool is single-writer (an flock on `<name>.lock` enforces it) and not
thread-safe.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol

from agent.exc import (
    SpoolConfigError,
    SpoolCorruptError,
    SpoolError,
    SpoolSequenceError,
    SpoolUnavailableError,
)
from durable.files import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# FULL: an append that returned survives a power cut, which is what the product
# promises ("loses no reading that it accepted"). Measured here: ~6,800
# appends/s with FULL vs ~45,000 with NORMAL (bench/spool.py, docs/spool.md).
DEFAULT_SYNCHRONOUS = "FULL"
SYNCHRONOUS_LEVELS = ("FULL", "NORMAL")

# Drop reasons, spelled like telemetry.envelope.GapReason so the agent can put
# them straight into a signed gap record.
REASON_OVERFLOW = "overflow"
REASON_SPOOL_RESET = "spool-reset"

APPLICATION_ID = 0x504C5753  # "PLWS": marks a file as a pledgewatch spool
SCHEMA_VERSION = 3
_MAX_SEQ = (1 << 63) - 1  # SQLite INTEGER is signed 64-bit
_WAL_SIZE_LIMIT = 16 * 1024 * 1024  # truncate the -wal back to this after checkpoints

_SCHEMA = (
    # Alarms and routine envelopes live in two rowid tables keyed by seq: peek
    # reads each in rowid order and overflow evicts routine from the front, so
    # no secondary index is needed on the hot path.
    "CREATE TABLE alarm (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL) STRICT",
    "CREATE TABLE routine (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL) STRICT",
    # The last envelope appended (stored or dropped): the link the next envelope's prev must equal.
    "CREATE TABLE chain_head (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq INTEGER NOT NULL, digest BLOB NOT NULL) STRICT",
    # Drops not yet reported in a signed gap record. AUTOINCREMENT: ids are never
    # reused, so a report names exactly the rows it covered.
    "CREATE TABLE drop_log (id INTEGER PRIMARY KEY AUTOINCREMENT, reason TEXT NOT NULL,"
    " first_seq INTEGER, last_seq INTEGER, detail TEXT) STRICT",
    # Envelopes the lender refused for good (bad signature, conflict, malformed): out of the
    # send queue, kept with the lender's reason as evidence, never deleted by an ack.
    "CREATE TABLE refused (seq INTEGER PRIMARY KEY, raw BLOB NOT NULL, alarm INTEGER NOT NULL,"
    " reason INTEGER NOT NULL, text TEXT NOT NULL) STRICT",
)
# Numbered migrations: a spool of version N-1 is brought to N by these statements at open, in one
# transaction; a fresh spool is built by the schema above and then every migration, so both have
# the same schema text to the letter (ALTER TABLE rewrites the stored CREATE statement).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: (
        # The signed counters of the envelope at the chain head (version 2 envelopes), kept with it in
        # the same transaction as each append: the next envelope's counters continue from them.
        "ALTER TABLE chain_head ADD COLUMN alarms INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE chain_head ADD COLUMN gaps INTEGER NOT NULL DEFAULT 0",
        # How many envelopes the spool held when an overflow dropped (the gap record's `queued`).
        "ALTER TABLE drop_log ADD COLUMN queued INTEGER",
    ),
}
_OLDEST_READABLE = 2

# SQLite result codes (primary) that mean "this file is damaged"; anything in
# _ENVIRONMENT_CODES means "the file may be fine, the surroundings are not".
_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT = 11, 26, 24
_SQLITE_IOERR_SHORT_READ = 522
_ENVIRONMENT_CODES = {
    3,   # SQLITE_PERM
    5,   # SQLITE_BUSY
    6,   # SQLITE_LOCKED
    7,   # SQLITE_NOMEM
    8,   # SQLITE_READONLY
    10,  # SQLITE_IOERR (a dying card or a full disk; moving the file aside would not help)
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
}

_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_FORMAT_VERSION = 3007000


class SpoolableEnvelope(Protocol):
    """What the spool needs from an envelope (telemetry.envelope.Envelope has it)."""

    @property
    def seq(self) -> int: ...

    @property
    def raw(self) -> bytes: ...

    @property
    def digest(self) -> bytes: ...

    @property
    def alarm(self) -> bool: ...

    # and, on a version 2 envelope, `counters` (alarms, gaps): kept with the chain head (read with getattr)


class ChainHead(NamedTuple):
    """Seq and digest of the last envelope appended: the next envelope's prev must equal `digest`."""

    seq: int
    digest: bytes


class HeadCounters(NamedTuple):
    """The signed counters of the last envelope appended that carried them (telemetry.envelope.Counters)."""

    alarms: int
    gaps: int


@dataclass(frozen=True, slots=True)
class SpooledEnvelope:
    """One envelope as the spool hands it to the uplink: its seq, class and exact bytes."""

    seq: int
    alarm: bool
    raw: bytes


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """How much the spool holds, maintained on every write (no COUNT(*) per append)."""

    count: int
    bytes: int
    alarm_count: int
    alarm_bytes: int
    max_bytes: int

    @property
    def routine_count(self) -> int:
        return self.count - self.alarm_count

    @property
    def routine_bytes(self) -> int:
        return self.bytes - self.alarm_bytes


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Envelopes `first_seq..last_seq` (inclusive, every one of them) were dropped for `reason`."""

    first_seq: int
    last_seq: int
    reason: str

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True, slots=True)
class DropReport:
    """Everything the spool lost that no signed gap record has covered yet.

    `ranges` are exact runs of dropped seqs (sorted, adjacent runs merged);
    `lost_spools` are the paths of damaged spool files moved aside, whose
    contents (and so the seqs lost) are unknown. Pass the report back to
    `Spool.clear_drops` once the gap envelope is appended.
    """

    ranges: tuple[DroppedRange, ...]
    lost_spools: tuple[str, ...]
    _rows: tuple[tuple[int, int | None], ...] = field(repr=False)  # (drop_log id, last_seq), for clear_drops
    queued: int | None = None   # the most envelopes the spool held at any of these drops (None: not known)

    @property
    def count(self) -> int:
        """How many envelopes the ranges name (lost spools come on top, uncounted)."""
        return sum(r.count for r in self.ranges)

    @property
    def alarms_dropped(self) -> int:
        """Alarms among the dropped: 0, by construction.

        Overflow deletes only from the `routine` table (`_evict_routine`) or
        drops an incoming *routine* envelope (`_store_one`); an alarm is stored
        over the bound instead. No code path drops an alarm, so the honest count
        is 0; a drop path that could must count here what it dropped.
        """
        return 0


class _Damage(Exception):
    """Internal: the file at open is damaged; the message says how."""


class Spool:
    """A durable, byte-bounded queue of signed envelopes (see the module docstring)."""

    def __init__(self, *, path: Path, conn: sqlite3.Connection, lock_fd: int, max_bytes: int,
                 synchronous: str, counters: tuple[int, int, int, int], head: ChainHead | None,
                 head_counters: HeadCounters | None, recovered_from: Path | None) -> None:
        # Use Spool.open(); the constructor only takes a connection already checked.
        self.path = path
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.recovered_from = recovered_from
        self._conn = conn
        self._lock_fd = lock_fd
        self._alarm_count, self._alarm_bytes, self._routine_count, self._routine_bytes = counters
        self._head = head
        self._head_counters = head_counters
        # True while drop_log may hold rows: lets take_drops, which the agent calls
        # after every append, skip the query in the common case.
        self._drops_pending = conn.execute("SELECT EXISTS (SELECT 1 FROM drop_log)").fetchone()[0] == 1

    # --- opening --------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
             synchronous: str = DEFAULT_SYNCHRONOUS) -> Spool:
        """Open (or create) the spool at `path`, recovering from a damaged file.

        After a recovery `recovered_from` is the path the damaged database was
        moved to (else None), and `take_drops()` reports it until cleared.
        """
        if type(max_bytes) is not int or max_bytes <= 0:
            raise SpoolConfigError(f"spool max_bytes must be a positive integer, got {max_bytes!r}")
        level = str(synchronous).upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise SpoolConfigError(
                f"spool synchronous level must be one of {', '.join(SYNCHRONOUS_LEVELS)}, got {synchronous!r}")
        path = Path(path)
        lock_fd = _lock(path)
        try:
            recovered_from = _finish_interrupted_recovery(path)
            counters = None
            if path.exists() or _sidecar(path, "-wal").exists():
                try:
                    counters = _inspect(path)
                except _Damage as damage:
                    recovered_from = _recover(path, str(damage))
            if counters is None:
                if not path.exists():
                    _build_fresh(path.with_name(path.name + ".new"), note=None)
                    _install_new(path)
                counters = _inspect(path)  # cheap on a fresh file; proves the file we made
            conn = _connect(path, level)
            _migrate(conn, path)
            head, head_counters = _read_head(conn)
        except _Damage as damage:
            os.close(lock_fd)
            raise SpoolCorruptError(f"spool {path}: freshly created database fails its check: {damage}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(path=path, conn=conn, lock_fd=lock_fd, max_bytes=max_bytes, synchronous=level,
                   counters=counters, head=head, head_counters=head_counters, recovered_from=recovered_from)

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the lock."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Spool {str(self.path)!r} {len(self)} envelopes, {self.stats().bytes} of "
                f"{self.max_bytes} bytes, synchronous={self.synchronous}>")

    # --- what it holds ----------------------------------------------------

    def __len__(self) -> int:
        return self._alarm_count + self._routine_count

    def stats(self) -> SpoolStats:
        return SpoolStats(count=len(self), bytes=self._alarm_bytes + self._routine_bytes,
                          alarm_count=self._alarm_count, alarm_bytes=self._alarm_bytes,
                          max_bytes=self.max_bytes)

    def oldest_seq(self) -> int | None:
        """The lowest seq still spooled (alarm or routine), or None when empty.

        Every seq below it has left the spool: acked, or dropped with a recorded drop (or never
        used, where a restart skipped reserved seqs). The agent's acked watermark is built on it.
        """
        if self._conn is None:
            raise SpoolUnavailableError(f"spool {self.path} is closed")
        row = self._conn.execute(
            "SELECT min(s) FROM (SELECT min(seq) AS s FROM alarm UNION ALL SELECT min(seq) FROM routine)").fetchone()
        return row[0]

    def head(self) -> ChainHead | None:
        """Seq and digest of the last envelope appended, kept across acks and restarts."""
        return self._head

    def head_counters(self) -> HeadCounters | None:
        """The signed counters at the chain head (None while no envelope is appended), kept like the head.

        (0, 0) when the envelopes appended so far carried none (version 1).
        """
        return self._head_counters

    # --- writing ----------------------------------------------------------

    def append(self, envelope: SpoolableEnvelope) -> bool:
        """Store one envelope durably; True if stored, False if it was itself dropped for overflow.

        Either way the chain head moves to it, and any drop is recorded for
        `take_drops` in the same transaction.
        """
        return self.append_many((envelope,)) == 1

    def append_many(self, envelopes: Iterable[SpoolableEnvelope]) -> int:
        """Store envelopes produced together in one transaction (one sync); returns how many were stored.

        All or nothing: if any envelope is refused (seq not increasing), none is stored.
        """
        envelopes = list(envelopes)
        batch = [(_checked_seq(e.seq), bytes(e.raw), bytes(e.digest), bool(e.alarm)) for e in envelopes]
        if not batch:
            return 0
        head_counters = self._head_counters or HeadCounters(0, 0)
        for envelope in envelopes:
            signed = getattr(envelope, "counters", None)
            if signed is not None:
                head_counters = HeadCounters(signed.alarms, signed.gaps)
        last = self._head.seq if self._head is not None else -1
        for seq, _raw, _digest, _alarm in batch:
            if seq <= last:
                raise SpoolSequenceError(
                    f"spool {self.path}: seq {seq} is not above the chain head {last}; a seq is never reused")
            last = seq
        saved = (self._alarm_count, self._alarm_bytes, self._routine_count, self._routine_bytes)
        stored = 0
        with self._transaction(saved):
            for seq, raw, digest, alarm in batch:
                stored += self._store_one(seq, raw, alarm)
            seq, _raw, digest, _alarm = batch[-1]
            self._conn.execute("INSERT OR REPLACE INTO chain_head (id, seq, digest, alarms, gaps) VALUES (1, ?, ?, ?, ?)",
                               (seq, digest, *head_counters))
        self._head = ChainHead(seq, digest)
        self._head_counters = head_counters
        return stored

    def _store_one(self, seq: int, raw: bytes, alarm: bool) -> int:
        size = len(raw)
        excess = self._alarm_bytes + self._routine_bytes + size - self.max_bytes
        if excess > 0:
            if not alarm and self._alarm_bytes + size > self.max_bytes:
                # Even with every routine envelope gone it would not fit: losing
                # the newcomer alone loses least.
                self._record_drops([seq], REASON_OVERFLOW, queued=len(self))
                return 0
            self._evict_routine(excess)
        if alarm:
            self._conn.execute("INSERT INTO alarm (seq, raw) VALUES (?, ?)", (seq, raw))
            self._alarm_count += 1
            self._alarm_bytes += size
        else:
            self._conn.execute("INSERT INTO routine (seq, raw) VALUES (?, ?)", (seq, raw))
            self._routine_count += 1
            self._routine_bytes += size
        return 1

    def _evict_routine(self, excess: int) -> None:
        """Delete routine envelopes oldest first until `excess` bytes are freed (or none is left)."""
        freed, evicted, held = 0, [], len(self)
        while freed < excess and self._routine_count > len(evicted):
            # Small steps: the steady state of a full spool evicts one or two per append.
            chunk = self._conn.execute(
                "SELECT seq, length(raw) FROM routine WHERE seq > ? ORDER BY seq LIMIT 8",
                (evicted[-1] if evicted else -1,)).fetchall()
            if not chunk:
                break
            for seq, size in chunk:
                evicted.append(seq)
                freed += size
                if freed >= excess:
                    break
        if evicted:
            self._conn.execute("DELETE FROM routine WHERE seq <= ?", (evicted[-1],))
            self._routine_count -= len(evicted)
            self._routine_bytes -= freed
            self._record_drops(evicted, REASON_OVERFLOW, queued=held)

    def _record_drops(self, seqs: list[int], reason: str, *, queued: int) -> None:
        """Write sorted dropped seqs as exact runs, extending the newest drop_log row when contiguous.

        `queued` is how many envelopes the spool held when it dropped them (the most, for an extended row).
        """
        runs: list[list[int]] = []
        for seq in seqs:
            if runs and seq == runs[-1][1] + 1:
                runs[-1][1] = seq
            else:
                runs.append([seq, seq])
        last_row = self._conn.execute(
            "SELECT id, reason, last_seq FROM drop_log ORDER BY id DESC LIMIT 1").fetchone()
        first, last = runs[0]
        if last_row is not None and last_row[1] == reason and last_row[2] is not None and last_row[2] + 1 == first:
            self._conn.execute("UPDATE drop_log SET last_seq = ?, queued = max(coalesce(queued, 0), ?) WHERE id = ?",
                               (last, queued, last_row[0]))
            runs = runs[1:]
        self._conn.executemany("INSERT INTO drop_log (reason, first_seq, last_seq, queued) VALUES (?, ?, ?, ?)",
                               [(reason, first, last, queued) for first, last in runs])
        self._drops_pending = True

    # --- reading and acking ----------------------------------------------

    def peek(self, max_count: int = 64, max_bytes: int = 64 * 1024) -> list[SpooledEnvelope]:
        """The next batch to send, oldest first: alarms by seq, then routine by seq.

        Stops before `max_bytes` would be exceeded, but always returns at least
        one envelope when any is spooled (an envelope bigger than the budget
        must still leave).
        """
        if max_count <= 0:
            return []
        batch: list[SpooledEnvelope] = []
        total = 0
        self._require_open()
        try:
            for table, alarm in (("alarm", True), ("routine", False)):
                rows = self._conn.execute(f"SELECT seq, raw FROM {table} ORDER BY seq LIMIT ?",
                                          (max_count - len(batch),)).fetchall()
                for seq, raw in rows:
                    if batch and total + len(raw) > max_bytes:
                        return batch
                    batch.append(SpooledEnvelope(seq, alarm, raw))
                    total += len(raw)
                if len(batch) >= max_count:
                    break
        except sqlite3.DatabaseError as error:
            raise _runtime_error(self.path, "peek", error) from error
        return batch

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete exactly the envelopes with these seqs (the lender stored them); returns how many."""
        wanted = sorted({_checked_seq(s) for s in seqs})
        if not wanted:
            return 0
        listed = "[" + ",".join(map(str, wanted)) + "]"  # a JSON array for json_each
        saved = (self._alarm_count, self._alarm_bytes, self._routine_count, self._routine_bytes)
        deleted = 0
        with self._transaction(saved):
            for table in ("alarm", "routine"):
                sizes = self._conn.execute(
                    f"DELETE FROM {table} WHERE seq IN (SELECT value FROM json_each(?)) RETURNING length(raw)",
                    (listed,)).fetchall()
                freed = sum(size for (size,) in sizes)
                if table == "alarm":
                    self._alarm_count -= len(sizes)
                    self._alarm_bytes -= freed
                else:
                    self._routine_count -= len(sizes)
                    self._routine_bytes -= freed
                deleted += len(sizes)
        return deleted

    def set_aside(self, rejections: Iterable[object]) -> int:
        """Move envelopes the lender refused for good out of the send queue, keeping them with its reason.

        Each rejection has `seq`, `reason` (the ack's reason code) and `text`. They stay in the
        `refused` table as evidence (`refused()` lists them); `peek` and `ack` never see them again.
        """
        wanted = {int(r.seq): r for r in rejections}
        if not wanted:
            return 0
        saved = (self._alarm_count, self._alarm_bytes, self._routine_count, self._routine_bytes)
        moved = 0
        with self._transaction(saved):
            for table, alarm in (("alarm", True), ("routine", False)):
                for seq, rejection in wanted.items():
                    row = self._conn.execute(f"DELETE FROM {table} WHERE seq = ? RETURNING raw", (seq,)).fetchone()
                    if row is None:
                        continue
                    self._conn.execute("INSERT OR REPLACE INTO refused (seq, raw, alarm, reason, text) VALUES (?, ?, ?, ?, ?)",
                                       (seq, row[0], int(alarm), int(rejection.reason), str(rejection.text)[:500]))
                    if alarm:
                        self._alarm_count -= 1
                        self._alarm_bytes -= len(row[0])
                    else:
                        self._routine_count -= 1
                        self._routine_bytes -= len(row[0])
                    moved += 1
        log.error("spool %s: the lender refused %d envelope(s) for good (seqs %s); kept in the refused table",
                  self.path, moved, sorted(wanted)[:20])
        return moved

    def refused(self) -> list[tuple[int, int, str]]:
        """(seq, reason code, text) of every envelope the lender refused for good, by seq."""
        return [tuple(row) for row in self._conn.execute("SELECT seq, reason, text FROM refused ORDER BY seq")]

    # --- drops -------------------------------------------------------------

    def take_drops(self) -> DropReport | None:
        """What was dropped and not yet reported, or None. Durable: survives crashes until cleared."""
        self._require_open()
        if not self._drops_pending:
            return None
        try:
            rows = self._conn.execute(
                "SELECT id, reason, first_seq, last_seq, detail, queued FROM drop_log ORDER BY id").fetchall()
        except sqlite3.DatabaseError as error:
            raise _runtime_error(self.path, "take_drops", error) from error
        if not rows:
            self._drops_pending = False
            return None
        ranges: list[DroppedRange] = []
        lost: list[str] = []
        for _id, reason, first, last, detail, _queued in rows:
            if first is None or last is None:
                lost.append(detail or "")
            else:
                ranges.append(DroppedRange(first, last, reason))
        ranges.sort(key=lambda r: r.first_seq)
        merged: list[DroppedRange] = []
        for r in ranges:
            if merged and merged[-1].reason == r.reason and merged[-1].last_seq + 1 == r.first_seq:
                merged[-1] = DroppedRange(merged[-1].first_seq, r.last_seq, r.reason)
            else:
                merged.append(r)
        held = [row[5] for row in rows if row[5] is not None]
        return DropReport(tuple(merged), tuple(lost), tuple((row[0], row[3]) for row in rows),
                          max(held) if held else None)

    def clear_drops(self, report: DropReport) -> None:
        """Forget exactly what `report` named, after the agent appended a gap envelope for it.

        A row that grew after the report was taken (later drops extending the
        same run) keeps its unreported tail.
        """
        saved = (self._alarm_count, self._alarm_bytes, self._routine_count, self._routine_bytes)
        with self._transaction(saved):
            for row_id, last in report._rows:
                gone = self._conn.execute("DELETE FROM drop_log WHERE id = ? AND last_seq IS ?",
                                          (row_id, last)).rowcount
                if not gone and last is not None:
                    self._conn.execute("UPDATE drop_log SET first_seq = ? WHERE id = ? AND last_seq > ?",
                                       (last + 1, row_id, last))

    # --- plumbing ------------------------------------------------------------

    def _require_open(self) -> None:
        if self._conn is None:
            raise SpoolUnavailableError(f"spool {self.path} is closed")

    def _transaction(self, saved: tuple[int, int, int, int]) -> _Transaction:
        self._require_open()
        return _Transaction(self, saved)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT; on failure roll back and restore the in-memory counters."""

    __slots__ = ("spool", "saved")

    def __init__(self, spool: Spool, saved: tuple[int, int, int, int]) -> None:
        self.spool, self.saved = spool, saved

    def __enter__(self) -> None:
        try:
            self.spool._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as error:
            raise _runtime_error(self.spool.path, "begin", error) from error

    def __exit__(self, exc_type, exc, tb) -> bool:
        spool = self.spool
        if exc_type is None:
            try:
                spool._conn.execute("COMMIT")
                return False
            except sqlite3.DatabaseError as error:
                exc = error
        try:
            spool._conn.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            pass  # SQLite may already have rolled back (e.g. SQLITE_FULL)
        (spool._alarm_count, spool._alarm_bytes, spool._routine_count, spool._routine_bytes) = self.saved
        if isinstance(exc, sqlite3.DatabaseError):
            raise _runtime_error(spool.path, "write", exc) from exc
        return False


def _runtime_error(path: Path, action: str, error: sqlite3.DatabaseError) -> SpoolError:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT):
        return SpoolCorruptError(
            f"spool {path}: {action} failed, the database is damaged ({error}); "
            "restart the agent: opening the spool moves the damaged file aside")
    return SpoolUnavailableError(f"spool {path}: {action} failed: {error} (is the disk full or read-only?)")


def _checked_seq(seq: object) -> int:
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        raise SpoolSequenceError(f"a seq must be an integer in 0..{_MAX_SEQ}, got {seq!r}")
    return seq


# --- opening, checking, recovering (module functions: no Spool exists yet) -----

_SIDECARS = ("-journal", "-wal", "-shm")  # SQLite's files beside a database (the rollback journal while WAL is set up)


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _lock(path: Path) -> int:
    """Hold an exclusive flock on `<name>.lock` for the spool's lifetime: one writer only."""
    lock_path = _sidecar(path, ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise SpoolUnavailableError(f"spool {path}: cannot create lock file {lock_path}: {error}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        raise SpoolUnavailableError(
            f"spool {path} is in use by another process (lock {lock_path} held); "
            "is a second agent running?") from error
    return fd


def _wal_header_ok(wal: Path) -> bool:
    """True if the -wal file is empty or starts with a well-formed WAL header (magic, version, checksum).

    SQLite silently ignores a WAL whose header is bad, so a garbage -wal would
    otherwise hide whatever it replaced.
    """
    try:
        with open(wal, "rb") as f:
            header = f.read(32)
    except FileNotFoundError:
        return True
    if not header:
        return True
    if len(header) < 32:
        return False
    magic, version, page_size = struct.unpack(">III", header[:12])
    if magic not in _WAL_MAGICS or version != _WAL_FORMAT_VERSION:
        return False
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return False
    words = struct.unpack((">" if magic & 1 else "<") + "6I", header[:24])
    s0 = s1 = 0
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return (s0, s1) == struct.unpack(">II", header[24:32])


def _statements(version: int) -> tuple[str, ...]:
    """Every statement that builds a spool of schema `version`: the first schema, then the migrations up to it."""
    return _SCHEMA + tuple(s for number in range(_OLDEST_READABLE + 1, version + 1) for s in _MIGRATIONS[number])


def _expected_schema(version: int) -> list[tuple]:
    conn = sqlite3.connect(":memory:")
    try:
        for statement in _statements(version):
            conn.execute(statement)
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name").fetchall()
    finally:
        conn.close()


# The schema of each version this program opens: older ones are migrated at open.
_EXPECTED_SCHEMA = {version: _expected_schema(version) for version in range(_OLDEST_READABLE, SCHEMA_VERSION + 1)}


def _inspect(path: Path) -> tuple[int, int, int, int]:
    """Check the spool at `path` read-only; return its counters or raise _Damage saying what is wrong.

    Read-only on purpose: closing a read-write connection would checkpoint the
    WAL into a damaged file and destroy the evidence.
    """
    if not path.exists():
        raise _Damage("a -wal file exists without its database")
    size = path.stat().st_size
    if size == 0:
        raise _Damage("the database file is empty (spools are created whole, so it was truncated)")
    # Read the header ourselves first: SQLite deletes a -wal that sits beside a
    # database it sees as zero pages long, even on a read-only connection, and
    # that -wal is the evidence (and maybe the only copy of recent envelopes).
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or header[:16] != b"SQLite format 3\x00":
        raise _Damage("the file does not start with the SQLite header")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise _Damage(f"the header names an impossible page size {page_size}")
    if size % page_size:
        raise _Damage(f"the file is {size} bytes, not a whole number of {page_size}-byte pages (truncated)")
    if header[18:20] != b"\x02\x02":
        raise _Damage("the header says the database is not in WAL mode")
    if not _wal_header_ok(_sidecar(path, "-wal")):
        raise _Damage("the -wal file does not start with a valid WAL header")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)
    except sqlite3.DatabaseError as error:
        raise _classify(path, error) from None
    try:
        check = conn.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise _Damage("quick_check: " + "; ".join(str(row[0]) for row in check[:3]))
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            raise _Damage("not a pledgewatch spool (application_id differs)")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in _EXPECTED_SCHEMA:
            raise _Damage(f"unknown spool schema version {version} (expected {_OLDEST_READABLE}..{SCHEMA_VERSION})")
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name").fetchall()
        if [row for row in schema if row[1] != "sqlite_sequence"] != [
                row for row in _EXPECTED_SCHEMA[version] if row[1] != "sqlite_sequence"]:
            raise _Damage("the schema is not the spool's")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            raise _Damage("the database is not in WAL mode")
        counters = []
        for table in ("alarm", "routine"):
            # One pass per table both counts and type-checks: quick_check does not
            # look inside values, and a flipped type byte must not reach the uplink.
            count, total, bad = conn.execute(
                f"SELECT count(*), coalesce(sum(length(raw)), 0),"
                f" count(*) FILTER (WHERE typeof(raw) != 'blob' OR typeof(seq) != 'integer' OR seq < 0)"
                f" FROM {table}").fetchone()
            if bad:
                raise _Damage(f"{bad} {table} rows hold values of the wrong type")
            counters += [count, total]
        heads = conn.execute("SELECT * FROM chain_head").fetchall()
        if len(heads) > 1 or any(type(row[1]) is not int or type(row[2]) is not bytes
                                 or any(type(n) is not int or n < 0 for n in row[3:]) for row in heads):
            raise _Damage("the chain head row is malformed")
        bad = conn.execute(
            "SELECT count(*) FROM drop_log WHERE typeof(reason) != 'text'"
            " OR (first_seq IS NULL) != (last_seq IS NULL) OR first_seq > last_seq").fetchone()[0]
        if bad:
            raise _Damage(f"{bad} drop_log rows are malformed")
        return tuple(counters)
    except sqlite3.DatabaseError as error:
        raise _classify(path, error) from None
    finally:
        conn.close()


def _classify(path: Path, error: sqlite3.DatabaseError) -> Exception:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code != _SQLITE_IOERR_SHORT_READ and (code & 0xFF) in _ENVIRONMENT_CODES:
        return SpoolUnavailableError(f"spool {path}: cannot read the database: {error} "
                                     f"({getattr(error, 'sqlite_errorname', 'unknown')})")
    return _Damage(f"SQLite: {error}")


def _connect(path: Path, level: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={level}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        conn.execute("PRAGMA cell_size_check=ON")
        return conn
    except sqlite3.DatabaseError as error:
        raise _runtime_error(path, "open", error) from error


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a spool of an older schema (checked by `_inspect`) to this one, in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        raise _runtime_error(path, f"migrate from schema {version}", error) from error
    log.info("spool %s: schema %d migrated to %d", path, version, SCHEMA_VERSION)


def _read_head(conn: sqlite3.Connection) -> tuple[ChainHead | None, HeadCounters | None]:
    row = conn.execute("SELECT seq, digest, alarms, gaps FROM chain_head WHERE id = 1").fetchone()
    return (ChainHead(row[0], row[1]), HeadCounters(row[2], row[3])) if row else (None, None)


def _build_fresh(target: Path, note: tuple[str, str] | None) -> None:
    """Create a complete, empty spool at `target` (fsynced), optionally remembering a lost spool."""
    for suffix in ("", *_SIDECARS):
        _sidecar(target, suffix).unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(SCHEMA_VERSION):
                conn.execute(statement)
            if note is not None:
                conn.execute("INSERT INTO drop_log (reason, detail) VALUES (?, ?)", note)
            conn.execute("COMMIT")
        finally:
            conn.close()  # checkpoints: the whole spool is now in `target`, no -wal left
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (sqlite3.DatabaseError, OSError) as error:
        raise SpoolUnavailableError(f"spool: cannot create {target}: {error}") from error


def _install_new(path: Path) -> None:
    """Rename the complete `<name>.new` into place; no stale journal, -wal or -shm may sit beside either.

    The `.new` was closed (checkpointed) when built, so its own sidecars can only be the empty ones the
    read-only checks of a WAL database make.
    """
    new = _sidecar(path, ".new")
    for suffix in _SIDECARS:
        _sidecar(path, suffix).unlink(missing_ok=True)
        _sidecar(new, suffix).unlink(missing_ok=True)
    try:
        os.replace(new, path)
        fsync_dir(path.parent)
    except OSError as error:
        raise SpoolUnavailableError(f"spool {path}: cannot install the fresh database: {error}") from error


def _aside_name(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(_sidecar(candidate, s).exists() for s in ("", "-wal", "-shm")):
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    return candidate


def _recover(path: Path, damage: str) -> Path:
    """Move the damaged spool aside and install a fresh one that remembers the loss.

    Crash-safe order: the fresh spool (with its spool-reset drop row) is
    complete at `<name>.new` before anything moves; the main file moves first,
    so a crash leaves either the damaged set untouched (re-detected next time)
    or no main file and a complete `.new` (finished by the next open).
    """
    aside = _aside_name(path)
    new = _sidecar(path, ".new")
    _build_fresh(new, note=(REASON_SPOOL_RESET, str(aside)))
    log.error("spool %s is damaged (%s); moved aside to %s (with its -wal/-shm) and starting a fresh "
              "spool; envelopes not yet acked in it are lost and will be reported in a gap record",
              path, damage, aside)
    try:
        for suffix in ("", "-wal", "-shm"):
            source = _sidecar(path, suffix)
            if source.exists():
                os.rename(source, _sidecar(aside, suffix))
        fsync_dir(path.parent)
    except OSError as error:
        raise SpoolUnavailableError(f"spool {path}: cannot move the damaged database aside: {error}") from error
    _install_new(path)
    return aside


def _finish_interrupted_recovery(path: Path) -> Path | None:
    """Complete (or discard) a `<name>.new` left by a crash; return the aside path if a recovery completed."""
    new = _sidecar(path, ".new")
    if not new.exists():
        return None
    if path.exists() or any(_sidecar(new, suffix).exists() for suffix in _SIDECARS):
        # Crashed before the damaged file moved, or while building `.new` (a finished one is closed, so no
        # journal or WAL is left beside it, before anything moves): start over.
        for suffix in ("", *_SIDECARS):
            _sidecar(new, suffix).unlink(missing_ok=True)
        return None
    try:
        _inspect(new)
    except _Damage:
        for suffix in ("", "-wal", "-shm"):
            _sidecar(new, suffix).unlink(missing_ok=True)  # a half-built fresh spool: nothing moved yet
        return None
    conn = sqlite3.connect(f"file:{new}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT detail FROM drop_log WHERE reason = ? ORDER BY id DESC LIMIT 1",
                           (REASON_SPOOL_RESET,)).fetchone()
    finally:
        conn.close()
    aside = Path(row[0]) if row and row[0] else None
    if aside is not None:
        for suffix in ("-wal", "-shm"):
            stray = _sidecar(path, suffix)
            if stray.exists():
                os.rename(stray, _sidecar(aside, suffix))
        log.error("spool %s: finishing a recovery interrupted by a crash; the damaged spool is at %s",
                  path, aside)
    _install_new(path)
    return aside
