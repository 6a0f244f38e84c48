"""The console lets nobody in without a login, no state change without its CSRF token, no viewer act, no guesser on."""
from __future__ import annotations

import re
import sqlite3

import httpx
import pytest
from starlette.routing import Mount, Route

from lender.console.accounts import MAX_FAILURES
from tests.kit.console import PASSWORD, RunningConsole, add_user

from .conftest import csrf_of, log_in

OPEN_TO_ANYONE = {"/login", "/login/once/{token}"}
PARAMETERS = {"device": "gw-cold", "asset": "cold-store", "token": "x"}


def every_route(console: RunningConsole) -> list[tuple[str, str]]:
    app = console.console.app
    found = []
    for route in app.routes:
        if isinstance(route, Route):
            path = route.path.format(**PARAMETERS) if "{" in route.path else route.path
            found += [(method, path) for method in sorted(route.methods - {"HEAD"})
                      if route.path not in OPEN_TO_ANYONE]
        else:
            assert isinstance(route, Mount) and route.path == "/static", f"unexpected mount {route.path}"
    return found


def test_every_route_refuses_an_anonymous_request(console):
    routes = every_route(console)
    assert len(routes) >= 16
    with httpx.Client(base_url=console.url) as anonymous:
        for method, path in routes:
            for accept in ("application/json", "text/html"):
                answer = anonymous.request(method, path, headers={"accept": accept})
                if method == "GET" and accept == "text/html" and not path.startswith("/api/"):
                    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next="), path
                else:
                    assert answer.status_code == 401, (method, path, answer.status_code)
                assert "gw-cold" not in answer.text or answer.status_code == 303


def test_a_forged_or_stale_session_cookie_opens_nothing(console):
    with httpx.Client(base_url=console.url, cookies={"pw_session": "forged" * 8}) as client:
        assert client.get("/api/portfolio").status_code == 401
    client = log_in(console.url, "vera")
    assert client.get("/api/portfolio").status_code == 200
    assert client.post("/logout", data={"csrf": csrf_of(client)}).status_code == 303
    assert client.get("/api/portfolio").status_code == 401


def test_a_state_change_without_the_csrf_token_is_refused(console, pledged):
    client = log_in(console.url, "otto")
    alarm = {"device": "gw-cold", "alarm": "alarm.door.cold-store", "seq": pledged.gateways["gw-cold"].seq,
             "note": "called the site"}
    assert client.post("/alarms/ack", data=alarm).status_code == 403
    assert client.post("/alarms/ack", data={**alarm, "csrf": "wrong"}).status_code == 403
    assert client.post("/api/alarms/ack", json=alarm).status_code == 403
    assert client.post("/api/alarms/ack", json=alarm, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    token = csrf_of(client)
    # the right token from another origin is refused too (a page elsewhere posting with the user's cookie)
    assert client.post("/api/alarms/ack", json=alarm, headers={"X-CSRF-Token": token,
                                                               "Origin": "http://evil.example"}).status_code == 403
    assert client.post("/logout").status_code == 403
    assert not pledged.console_acks()
    done = client.post("/api/alarms/ack", json=alarm, headers={"X-CSRF-Token": token})
    assert done.status_code == 201, done.text
    assert [(a.by, a.note) for a in pledged.console_acks()] == [("otto", "called the site")]


def state_changes(console: RunningConsole) -> list[str]:
    """Every route of the app's route table that changes state (not GET), the login form aside."""
    return [path for method, path in every_route(console) if method != "GET"]


def test_every_state_change_in_the_route_table_refuses_a_missing_or_wrong_csrf_token(console, pledged):
    client = log_in(console.url, "ada")      # an admin: the role would let every one of them through
    posts = state_changes(console)
    assert {"/logout", "/alarms/ack", "/api/alarms/ack", "/gaps/review", "/api/gaps/review", "/commands/inspect",
            "/api/commands/inspect", "/commands/permit", "/api/commands/permit"} <= set(posts)
    body = {"device": "gw-cold", "alarm": "alarm.door.cold-store", "seq": pledged.gateways["gw-cold"].seq,
            "note": "no token"}
    for path in posts:
        assert client.post(path, data=body).status_code == 403, path
        assert client.post(path, data={**body, "csrf": "wrong"}).status_code == 403, path
        assert client.post(path, json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403, path
    assert client.get("/api/me").status_code == 200          # the refused logout left the session open
    assert not pledged.console_acks() and not pledged.store.reviews() and not pledged.store.issued_commands()


def test_a_viewer_can_act_through_no_state_changing_route_but_logout(console, pledged):
    client = log_in(console.url, "vera")
    token = csrf_of(client)
    gap = pledged.store.gap_records("gw-cold")[0].seq
    acts = [path for path in state_changes(console) if path != "/logout"]
    assert len(acts) >= 4
    for path in acts:
        body = {"device": "gw-cold", "alarm": "alarm.door.cold-store", "note": "a viewer tries",
                "seq": gap if "gaps" in path else pledged.gateways["gw-cold"].seq,
                "asset": "cold-store", "until": "2100-01-01T00:00", "reason": "a viewer tries"}  # a whole permit
        answer = client.post(path, json=body, headers={"X-CSRF-Token": token})
        assert answer.status_code == 403, (path, answer.status_code)
        assert client.post(path, data={**body, "csrf": token}).status_code == 403, path
    assert not pledged.console_acks() and not pledged.store.reviews() and not pledged.store.issued_commands()


def test_a_viewer_reads_everything_and_can_act_on_nothing(console, pledged):
    client = log_in(console.url, "vera")
    token = csrf_of(client)
    assert client.get("/").status_code == 200
    assert client.get("/assets/gw-cold/cold-store").status_code == 200
    assert client.get("/devices/gw-cold/evidence.jsonl").status_code == 200
    ack = client.post("/api/alarms/ack", headers={"X-CSRF-Token": token},
                      json={"device": "gw-cold", "alarm": "alarm.door.cold-store",
                            "seq": pledged.gateways["gw-cold"].seq, "note": "n"})
    assert ack.status_code == 403 and "operator" in ack.json()["error"]
    review = client.post("/gaps/review", data={"csrf": token, "device": "gw-cold", "seq": 12, "note": "n"})
    assert review.status_code == 403
    assert client.get("/admin").status_code == 403
    assert "Acknowledge" not in client.get("/assets/gw-cold/cold-store").text
    assert not pledged.console_acks() and not pledged.store.reviews() and not pledged.store.issued_commands()
    assert log_in(console.url, "ada").get("/admin").status_code == 200


def test_login_is_rate_limited_per_name_and_address_even_for_the_right_password(console):
    client = httpx.Client(base_url=console.url)
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)

    def attempt(name: str, password: str) -> httpx.Response:
        return client.post("/login", data={"name": name, "password": password, "login_token": token})

    for _ in range(MAX_FAILURES):
        assert attempt("otto", "guess-guess-guess").status_code == 401
    refused = attempt("otto", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    # the same address trying another name is held back too
    assert attempt("vera", PASSWORD).status_code == 429


def test_sessions_use_hardened_cookies_and_passwords_are_argon2id(console, pledged):
    client = httpx.Client(base_url=console.url)
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login", data={"name": "vera", "password": PASSWORD, "login_token": token})
    cookie = answer.headers["set-cookie"].lower()
    assert "pw_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    with sqlite3.connect(pledged.data_dir / "console.sqlite3") as conn:
        hashes = [h for (h,) in conn.execute("SELECT password_hash FROM users")]
        stored_ids = [i for (i,) in conn.execute("SELECT id_hash FROM sessions")]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    session_id = client.cookies["pw_session"]
    assert all(session_id.encode() not in bytes(i) for i in stored_ids)  # only its hash is kept


def test_a_login_form_from_elsewhere_and_an_open_redirect_are_refused(console):
    client = httpx.Client(base_url=console.url)
    assert client.post("/login", data={"name": "vera", "password": PASSWORD, "login_token": "x"}).status_code == 403
    form = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
    answer = client.post("/login", data={"name": "vera", "password": PASSWORD, "login_token": token,
                                         "next": "//evil.example/steal"})
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_a_login_link_works_once_and_a_removed_user_is_out_at_once(console, pledged):
    from lender.console.accounts import Accounts
    from lender.console.records import ConsoleRecords

    add_user(pledged.data_dir, "temp", "viewer")
    with ConsoleRecords.open(pledged.data_dir) as records:
        link = Accounts(records).login_link("temp", now=pledged.tick())
    client = httpx.Client(base_url=console.url)
    assert client.get(f"/login/once/{link}").status_code == 303
    assert client.get("/api/me").json()["name"] == "temp"
    assert httpx.get(f"{console.url}/login/once/{link}").status_code == 401
    done = pledged.cli("users", "remove", "--name", "temp")
    assert done.returncode == 0, done.stderr
    assert client.get("/api/me").status_code == 401


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "192.0.2.1:8080"])
def test_the_console_will_not_listen_beyond_loopback_without_being_told(pledged, bind):
    done = pledged.cli("web", "--bind", bind)
    assert done.returncode == 1 and "not a loopback address" in done.stderr


def test_a_live_stream_ends_with_its_session(console, monkeypatch):
    from lender.console import app

    monkeypatch.setattr(app, "SSE_KEEPALIVE_S", 0.2)
    client = log_in(console.url, "vera")
    token = csrf_of(client)
    with client.stream("GET", "/events", timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        assert client.post("/logout", data={"csrf": token}).status_code == 303
        rest = list(lines)   # ends by itself once the session is gone
    assert all(not line.startswith("event:") for line in rest)
