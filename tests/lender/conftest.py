"""Fixtures for the lender's tests: a store, a running lender on 127.0.0.1, a raw CoAP client (see tests.kit.lender).

The store is SQLite in a temporary data directory unless the test module is
marked ``pytestmark = pytest.mark.backends``: then each test using it runs
once per backend, PostgreSQL on one throwaway server for the whole session
(tests.kit.postgres; a database per test), so the same suite holds both.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from lender.evidence.stores import open_store
from tests.kit.lender import ONE_BUSY_HOST, LenderThread, RawCoap
from tests.kit.stores import BACKENDS


def pytest_generate_tests(metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args or BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session (Debian's `postgresql`; skipped, saying so, without it)."""
    from tests.kit.postgres import PostgresServer

    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_url(backend, request) -> str | None:
    """None for SQLite (the data directory is the store), else the URL of a fresh PostgreSQL database."""
    if backend == "sqlite":
        return None
    return request.getfixturevalue("postgres").database()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "lender"


@pytest.fixture
def store(data_dir, store_url):
    with open_store(data_dir, store_url) as opened:
        yield opened


@pytest.fixture
def lender(data_dir, store):
    """A running lender (plain CoAP allowed) over the `store` fixture's data directory."""
    with LenderThread(data_dir, insecure=True, gate_policy=ONE_BUSY_HOST) as running:
        yield running


@pytest.fixture
def raw_client(lender):
    client = RawCoap(lender.port)
    yield client
    client.close()
