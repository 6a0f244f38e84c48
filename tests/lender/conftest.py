"""Fixtures for the lender's tests: a store, a running lender on 127.0.0.1, a raw CoAP client (see tests.kit.lender)."""
from __future__ import annotations

from pathlib import Path

import pytest

from lender.evidence.store import SQLiteStore
from tests.kit.lender import LenderThread, RawCoap


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "lender"


@pytest.fixture
def store(data_dir):
    with SQLiteStore.open(data_dir) as opened:
        yield opened


@pytest.fixture
def lender(data_dir, store):
    """A running lender (plain CoAP allowed) over the `store` fixture's data directory."""
    with LenderThread(data_dir, insecure=True) as running:
        yield running


@pytest.fixture
def raw_client(lender):
    client = RawCoap(lender.port)
    yield client
    client.close()
