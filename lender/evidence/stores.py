"""Which evidence store to open: SQLite in the data directory (the default), or PostgreSQL named by a URL.

`open_store(data_dir, url)` is what the CLI, the server and the tools call;
they never pick a backend class themselves. ``data_dir`` always holds the
lender's own files (its signing key, enrollment records, OSCORE contexts
before a PostgreSQL store takes them over); ``url`` (``postgresql://…``)
moves the evidence itself into PostgreSQL (lender.evidence.postgres).
"""
from __future__ import annotations

import os

from lender.evidence.store import DEFAULT_QUARANTINE_LIMIT, EvidenceStore, SQLiteStore
from lender.exc import StoreUnavailableError

URL_SCHEMES = ("postgresql://", "postgres://")


def is_store_url(text: object) -> bool:
    """Whether `text` names a PostgreSQL store (``postgresql://…``) rather than a directory."""
    return isinstance(text, str) and text.startswith(URL_SCHEMES)


def open_store(data_dir: str | os.PathLike, url: str | None = None, *, create: bool = True,
               quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT, log: bool = True) -> EvidenceStore:
    """The lender's store: PostgreSQL at `url` when given (keys in `data_dir`), else SQLite in `data_dir`."""
    if url is None:
        return SQLiteStore.open(data_dir, create=create, quarantine_limit=quarantine_limit, log=log)
    if not is_store_url(url):
        raise StoreUnavailableError(f"--store takes a postgresql://USER@HOST:PORT/DATABASE URL, got {url[:40]!r}")
    from lender.evidence.postgres import PostgresStore  # psycopg only where it is used

    return PostgresStore.open(url, data_dir, create=create, quarantine_limit=quarantine_limit, log=log)
