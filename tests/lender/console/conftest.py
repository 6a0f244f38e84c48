"""Fixtures for the console's tests: a lender with one asset per state, a running console, logged-in clients."""
from __future__ import annotations

import re

import httpx
import pytest

from tests.kit.console import PASSWORD, ConsoleLender, RunningConsole, add_user


@pytest.fixture
def pledged(tmp_path):
    """A lender on disk with the kit's portfolio (ALARM, SILENT, OK, NO DATA) and three staff accounts."""
    lender = ConsoleLender(tmp_path / "lender")
    lender.gateways = lender.portfolio()
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin")):
        add_user(lender.data_dir, name, role)
    yield lender
    lender.close()


@pytest.fixture
def console(pledged):
    with RunningConsole(pledged.data_dir) as running:
        yield running


def log_in(base_url: str, name: str, password: str = PASSWORD, **client_options) -> httpx.Client:
    """An HTTP client logged in as `name` through the login form, as a browser does it."""
    client = httpx.Client(base_url=base_url, **client_options)
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login", data={"name": name, "password": password, "login_token": token, "next": "/"})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: httpx.Client) -> str:
    return client.get("/api/me").json()["csrf"]
