"""The console's own records, in one SQLite file of their own: ``DATA/console.sqlite3``.

The evidence store (``DATA/lender.sqlite3``) holds what devices signed; this
file holds what the lender's *staff* did and what the console owes others:

* ``users``, ``sessions``, ``login_failures``, ``login_links`` — accounts (lender.console.accounts);
* ``acks`` — an operator acknowledged an alarm, with a note (an audit record: never changed, never deleted;
  the evidence store's log has it too, as an alarm ack entry: `EvidenceStore.add_ack`);
* ``audit`` — every staff action, one row each (logins, acks, reviews, accounts);
* ``outbox``, ``cursors``, ``watch`` — the webhook outbox, each endpoint's delivery cursor, and the
  alarms and risks last seen open (lender.console.webhooks).

A separate file keeps the evidence store's schema to the evidence floor, and
lets the console run as its own process beside the CoAP server: the evidence
store is only read from here, but for staff actions that belong in its
tamper-evident log or its tables: gap reviews (which the risk judgement
reads) through `EvidenceStore.add_review`, alarm acks through
`EvidenceStore.add_ack`, commands to devices through
`lender.evidence.commands.CommandDesk`. WAL mode, ``synchronous=FULL``: an
outbox row or an audit record, once written, survives a power cut.

A connection belongs to one thread; `ConsoleRecords.open` is cheap, and each
thread of the console opens its own.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lender.evidence.store import Ack
from lender.exc import StoreFormatError, StoreUnavailableError

CONSOLE_FILE = "console.sqlite3"
APPLICATION_ID = 0x504C4343  # "PLCC": marks a file as a pledgewatch console file
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),"
    " password_hash TEXT NOT NULL, created_at REAL NOT NULL) STRICT",
    # The session id is never stored, only its SHA-256: a copy of this file opens no session.
    "CREATE TABLE sessions (id_hash BLOB PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,"
    " csrf TEXT NOT NULL, created_at REAL NOT NULL, last_used REAL NOT NULL) STRICT",
    "CREATE TABLE login_failures (key TEXT NOT NULL, at REAL NOT NULL) STRICT",
    "CREATE INDEX login_failures_by_key ON login_failures (key, at)",
    "CREATE TABLE login_links (token_hash BLOB PRIMARY KEY, user TEXT NOT NULL REFERENCES users (name)"
    " ON DELETE CASCADE, expires_at REAL NOT NULL) STRICT",
    "CREATE TABLE acks (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, alarm TEXT NOT NULL,"
    " seq INTEGER NOT NULL, by TEXT NOT NULL, note TEXT NOT NULL, at REAL NOT NULL) STRICT",
    "CREATE INDEX acks_by_alarm ON acks (device, alarm, seq)",
    "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,"
    " action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL) STRICT",
    # Events owed to webhook endpoints, in the order they were seen; `id` is the order every endpoint gets.
    "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, at REAL NOT NULL,"
    " body TEXT NOT NULL) STRICT",
    # Per endpoint: the last event it acknowledged (2xx), and when to try the next one.
    "CREATE TABLE cursors (url TEXT PRIMARY KEY, delivered INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt REAL NOT NULL DEFAULT 0, last_error TEXT, delivered_total INTEGER NOT NULL DEFAULT 0,"
    " failed_total INTEGER NOT NULL DEFAULT 0) STRICT",
    # What was open when the console last looked: (device, key) -> the event body that opened it.
    "CREATE TABLE watch (device TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,"
    " PRIMARY KEY (device, key)) STRICT, WITHOUT ROWID",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY) STRICT",
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    target: str
    detail: str


class ConsoleRecords:
    """One connection to ``DATA/console.sqlite3``."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: str | os.PathLike) -> ConsoleRecords:
        """Open the console file in `data_dir`, creating it (mode 0600) and its schema when missing."""
        data_dir = Path(data_dir)
        path = data_dir / CONSOLE_FILE
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():  # SQLite gives the -wal and -shm files the database file's mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            (app,), (version,) = conn.execute("PRAGMA application_id").fetchone(), \
                conn.execute("PRAGMA user_version").fetchone()
            if app == 0 and version == 0:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have won
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif app != APPLICATION_ID or version != SCHEMA_VERSION:
                conn.close()
                raise StoreFormatError(f"{path} is not a pledgewatch console file of schema {SCHEMA_VERSION} "
                                       f"(application id {app:#x}, version {version})")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailableError(f"cannot open the console's records at {path}: {exc}") from exc
        return cls(path, conn)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An exclusive write transaction: all or nothing."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ConsoleRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- audit records ---

    def audit(self, actor: str, action: str, target: str, detail: str = "", *, at: float) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                         (at, actor, action, target, detail))

    def audit_entries(self, limit: int = 200) -> list[AuditEntry]:
        return [AuditEntry(*row) for row in self.query(
            "SELECT at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))]

    def add_ack(self, ack: Ack) -> None:
        """Keep an acknowledgement and its audit record, in one transaction."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO acks (device, alarm, seq, by, note, at) VALUES (?, ?, ?, ?, ?, ?)",
                         (ack.device, ack.alarm, ack.seq, ack.by, ack.note, ack.at))
            conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, 'ack', ?, ?)",
                         (ack.at, ack.by, f"{ack.device} {ack.alarm} seq {ack.seq}", ack.note))

    def acks(self, device: str | None = None) -> list[Ack]:
        where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
        return [Ack(*row) for row in self.query(
            f"SELECT device, alarm, seq, by, note, at FROM acks {where} ORDER BY id", params)]

    def acked(self) -> set[tuple[str, str, int]]:
        """(device, alarm, raising seq) of every acknowledged alarm."""
        return {tuple(row) for row in self.query("SELECT DISTINCT device, alarm, seq FROM acks")}
