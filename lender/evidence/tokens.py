"""The lender's token key: the secret behind the freshness tokens in its acks (telemetry.freshness).

One key per lender data directory, ``DATA/token.key`` (0600, made on first
use). Ingest stamps tokens with it; the risk view checks with it that each
token an envelope carries is one this lender issued to that device.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from durable.exc import KeyFileExistsError
from durable.keyfile import create_key, read_key

TOKEN_KEY_FILE = "token.key"


def token_key(data_dir: str | os.PathLike, *, create: bool = True) -> bytes | None:
    """The lender's token key; made when missing and `create`, else None when missing."""
    path = Path(data_dir) / TOKEN_KEY_FILE
    if not path.exists():
        if not create:
            return None
        with contextlib.suppress(KeyFileExistsError):  # a concurrent first start made it: read theirs
            return create_key(path)
    return read_key(path)
