"""Fixtures for the lender's tests: a store, a running lender on 127.0.0.1, a raw CoAP client (see lender_testkit)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "lender_testkit" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("lender_testkit", Path(__file__).with_name("lender_testkit.py"))
    sys.modules["lender_testkit"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["lender_testkit"])

from lender_testkit import LenderThread, RawCoap  # noqa: E402

from lender.store import SQLiteStore  # noqa: E402


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
