"""The lender's two store backends under one test suite: open either, and reach into each the same way.

A test module marked ``pytest.mark.backends`` runs every test that uses the
``store`` fixture once per backend (``sqlite``, ``postgresql``; see
tests/lender/conftest.py). What the tests need to do *to* a store beyond its
interface (another connection, a failing insert, a schema from the future)
lives here, once per backend, so the tests themselves stay one text.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lender.evidence.stores import open_store

BACKENDS = ("sqlite", "postgresql")


def url_of(store) -> str | None:
    """The URL a second connection to `store` opens (None for SQLite, which is its data directory)."""
    return getattr(store, "url", None)


def another(store, data_dir: Path, **options):
    """A second, independent connection to the same store: what another lender process holds."""
    return open_store(data_dir, url_of(store), **options)


def set_schema_version(store, version: int) -> None:
    """Mark `store` as written by a program of another schema version."""
    if url_of(store) is None:
        store._conn.execute(f"PRAGMA user_version = {version}")
    else:
        store.connection().execute("INSERT INTO pledgewatch_schema (version, description) VALUES (%s, 'test')",
                                   (version,))


@contextlib.contextmanager
def failing_record_insert(store, seq: int) -> Iterator[str]:
    """While inside, the database itself refuses to store a record of envelope `seq` (a real write failure)."""
    if url_of(store) is None:
        store._conn.execute("CREATE TEMP TRIGGER fail_at BEFORE INSERT ON records WHEN NEW.seq = %d"
                            " BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END" % seq)
        try:
            yield "simulated write failure"
        finally:
            store._conn.execute("DROP TRIGGER fail_at")
        return
    conn = store.connection()
    conn.execute("CREATE FUNCTION fail_at() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                 f" IF NEW.seq = {int(seq)} THEN RAISE EXCEPTION 'simulated write failure'; END IF;"
                 " RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER fail_at BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION fail_at()")
    try:
        yield "simulated write failure"
    finally:
        conn.execute("DROP TRIGGER fail_at ON records")
        conn.execute("DROP FUNCTION fail_at()")
