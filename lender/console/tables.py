"""The console's own read-only connection to the evidence store's tables: SQLite's file or PostgreSQL's database.

The console reads the evidence through `EvidenceStore` (lender.evidence.stores.open_store)
like every other part of the lender. Two things it asks are cheaper as plain
SQL on the tables: what changed since it last looked (lender.console.live.Changes)
and the counts behind ``/metrics`` (lender.console.metrics). `open_tables`
gives them one connection that cannot write, to ``DATA/lender.sqlite3`` or
to the database at a ``postgresql://`` URL, with one placeholder (``?``) and
one error (`StoreUnavailableError`) for both. The two schemas share their
table and column names but two: the registry's generation is in ``meta``
(SQLite) or ``pledgewatch_meta`` (PostgreSQL), and the order of what was
stored is the envelopes' row id (SQLite) or the log's entry index
(PostgreSQL, whose partitioned envelopes have no index on their id).
"""
from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from pathlib import Path

from lender.evidence.store import STORE_FILE
from lender.exc import StoreUnavailableError

CONNECT_TIMEOUT = 5


class Tables(ABC):
    """One read-only connection; `rows(sql, params)` with ``?`` placeholders. One thread at a time.

    The two kinds, `SQLiteTables` and `PostgresTables`, each give `rows` and `close`; the class
    attributes are the SQL that differs between the schemas (SQLite's here)."""

    postgres = False
    meta = "meta"
    # (device, position) of stored envelopes, in the order they were stored; position > ? selects the new ones
    stored_since = "SELECT device, max(id) FROM envelopes WHERE id > ? GROUP BY device"
    stored_top = "SELECT coalesce(max(id), 0) FROM envelopes"
    stored_devices = "SELECT DISTINCT device FROM envelopes"

    @abstractmethod
    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """Every row of one query."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteTables(Tables):
    def __init__(self, data_dir: str | Path, timeout: float = 30) -> None:
        self.path = Path(data_dir) / STORE_FILE
        try:
            self.conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=timeout,
                                        check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot read the evidence store {self.path}: {exc}") from exc

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:  # locked, busy: the caller tries again later
            raise StoreUnavailableError(f"cannot read the evidence store {self.path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()


class PostgresTables(Tables):
    postgres = True
    meta = "pledgewatch_meta"
    stored_since = "SELECT device, max(idx) FROM log_entries WHERE idx > ? GROUP BY device"
    stored_top = "SELECT coalesce(max(idx), -1) FROM log_entries"
    stored_devices = "SELECT DISTINCT device FROM envelope_keys"

    def __init__(self, url: str) -> None:
        from lender.evidence.postgres import redacted

        self.url = url
        self.path = redacted(url)
        self.conn = None

    def _connection(self):
        import psycopg

        if self.conn is None or self.conn.closed or self.conn.broken:
            try:
                self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                            application_name="pledgewatch-console",
                                            options="-c default_transaction_read_only=on")
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"cannot connect to the evidence store {self.path}: "
                                            f"{str(exc).strip() or type(exc).__name__}") from exc
        return self.conn

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        import psycopg

        conn = self._connection()
        try:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()
        except psycopg.Error as exc:  # a restarted server: the next call connects again
            raise StoreUnavailableError(f"cannot read the evidence store {self.path}: "
                                        f"{str(exc).strip() or type(exc).__name__}") from exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def open_tables(data_dir: str | Path, store_url: str | None = None, *, timeout: float = 30) -> Tables:
    """The evidence store's tables, read-only: PostgreSQL at `store_url` when given, else SQLite in `data_dir`."""
    return PostgresTables(store_url) if store_url else SQLiteTables(data_dir, timeout)
