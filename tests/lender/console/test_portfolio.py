"""The portfolio names every asset's state, worst first, follows the evidence as it changes, and turns SILENT by itself."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx

from lender.console.portfolio import STATES
from tests.kit.console import PASSWORD, RunningConsole
from tests.kit.lender import free_environment

from .conftest import csrf_of, log_in


def test_each_asset_has_its_state_worst_first_with_site_and_borrower(console):
    client = log_in(console.url, "vera")
    portfolio = client.get("/api/portfolio").json()
    assert [(a["asset"], a["state"]) for a in portfolio["assets"]] == [
        ("cold-store", "ALARM"), ("forklift-7", "SILENT"), ("press-2", "NO DATA"), ("pallets-3", "OK")]
    cold, forklift = portfolio["assets"][0], portfolio["assets"][1]
    assert (cold["site"], cold["borrower"]) == ("Hamburg cold store 2", "Nordfisk GmbH")
    assert [a["name"] for a in cold["open_alarms"]] == ["alarm.door.cold-store"]
    assert [r["kind"] for r in cold["risks"]] == ["gap"]
    assert forklift["stale"] and forklift["last_seen_age_s"] > 7000 and not cold["stale"]
    assert portfolio["counts"] == dict.fromkeys(STATES, 0) | {"ALARM": 1, "SILENT": 1, "NO DATA": 1, "OK": 1}
    assert [a["asset"] for a in client.get("/api/portfolio?borrower=Nordfisk GmbH").json()["assets"]] == [
        "cold-store", "pallets-3"]
    assert [a["asset"] for a in client.get("/api/portfolio?site=Bremen yard").json()["assets"]] == ["forklift-7"]
    assert [a["asset"] for a in client.get("/api/portfolio?q=press").json()["assets"]] == ["press-2"]
    assert client.get("/api/portfolio?state=BROKEN").status_code == 400


def test_the_asset_api_shows_the_fence_fixes_series_gaps_and_the_actions_taken(console, pledged):
    client = log_in(console.url, "otto")
    token = csrf_of(client)
    gap = pledged.store.gap_records("gw-cold")[0]
    raised = pledged.gateways["gw-cold"].seq
    assert client.post("/api/alarms/ack", headers={"X-CSRF-Token": token}, json={
        "device": "gw-cold", "alarm": "alarm.door.cold-store", "seq": raised - 1, "note": "wrong seq"}).status_code == 409
    assert client.post("/api/alarms/ack", headers={"X-CSRF-Token": token}, json={
        "device": "gw-cold", "alarm": "alarm.door.cold-store", "seq": raised, "note": "site called"}).status_code == 201
    assert client.post("/api/gaps/review", headers={"X-CSRF-Token": token}, json={
        "device": "gw-cold", "seq": gap.seq, "note": ""}).status_code == 400
    assert client.post("/api/gaps/review", headers={"X-CSRF-Token": token}, json={
        "device": "gw-cold", "seq": gap.seq, "note": "modem outage, confirmed"}).status_code == 201
    console.wait_for(lambda: not client.get("/api/portfolio?q=cold").json()["assets"][0]["risks"],
                     what="the reviewed gap to stop being a risk")
    asset = client.get("/api/assets/gw-cold/cold-store").json()
    assert asset["geofence"] == {"lat": 53.5413, "lon": 9.9836, "radius_m": 300}
    assert len(asset["fixes"]) == 8 and len(asset["series"]["temperature"]) == 8
    assert asset["open_alarms"][0]["acknowledged"] is True
    assert [(a["by"], a["note"]) for a in asset["acks"]] == [("otto", "site called")]
    assert asset["gap_records"][0]["reviews"][0]["by"] == "otto"
    assert asset["gaps"] == [{"first": gap.first, "last": gap.last, "explained": True, "explained_by": gap.seq}]
    assert asset["device_record"]["kid"] == pledged.gateways["gw-cold"].identity.kid.hex()
    assert pledged.store.reviews("gw-cold")[0].reviewer == "otto"           # the evidence store's audit record
    assert client.get("/api/assets/gw-cold/no-such-asset").status_code == 404


def test_a_gateway_that_stops_reporting_turns_silent_by_itself_and_back_when_it_reports(pledged):
    pallets = pledged.gateways["gw-pallets"]
    pallets.heartbeat_s = 0.5
    pledged.tick()
    pledged.deliver(pallets, pledged.manifest(pallets, "pallets-3", "stock", "temp"))
    with RunningConsole(pledged.data_dir) as console:
        def state() -> str:
            return next(r.state for r in console.console.portfolio.rows() if r.asset == "pallets-3")

        console.wait_for(lambda: state() == "SILENT", what="pallets-3 to turn SILENT with no new evidence")
        pledged.tick()
        pledged.deliver(pallets, pallets.reading(4.2))
        console.wait_for(lambda: state() == "OK", what="pallets-3 to report again")


def test_staff_accounts_are_managed_from_the_command_line_with_the_password_on_stdin(tmp_path):
    data = tmp_path / "lender"

    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "users", *args, "--data", str(data)],
                              input=stdin, capture_output=True, text=True, timeout=60, env=free_environment())

    added = users("add", "--name", "j.otieno", "--role", "operator", stdin=PASSWORD + "\n")
    assert added.returncode == 0 and "added operator j.otieno" in added.stdout
    assert PASSWORD not in added.stdout + added.stderr
    assert users("add", "--name", "short", "--role", "viewer", stdin="hunter2\n").returncode == 1
    assert users("add", "--name", "j.otieno", "--role", "viewer", stdin=PASSWORD + "\n").returncode == 1
    assert users("add", "--name", "x", "--role", "root", stdin=PASSWORD + "\n").returncode == 2
    listed = users("list", "--json")
    assert [(u["name"], u["role"]) for u in json.loads(listed.stdout)] == [("j.otieno", "operator")]
    assert users("login-link", "--name", "j.otieno").stdout.startswith("/login/once/")
    assert users("remove", "--name", "j.otieno").returncode == 0
    assert users("remove", "--name", "j.otieno").returncode == 1
    assert json.loads(users("list", "--json").stdout) == []
    assert (data / "console.sqlite3").stat().st_mode & 0o077 == 0


def test_prometheus_reads_metrics_with_its_token_and_sees_assets_refusals_and_the_webhook_backlog(pledged):
    from tests.kit.lender import batch

    pledged.ingest.batch(b"\xff not cbor", peer="203.0.113.9:5683")
    pledged.ingest.batch(batch([b"\x01\x02"]), peer="203.0.113.9:5683")
    with RunningConsole(pledged.data_dir, webhooks=("http://127.0.0.1:9/nowhere",)) as console:
        token = (pledged.data_dir / "metrics.token").read_text().strip()
        assert (pledged.data_dir / "metrics.token").stat().st_mode & 0o077 == 0
        assert httpx.get(f"{console.url}/metrics").status_code == 401
        assert httpx.get(f"{console.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        text = httpx.get(f"{console.url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    lines = set(text.splitlines())
    assert 'pledgewatch_assets{state="ALARM"} 1.0' in lines and 'pledgewatch_assets{state="SILENT"} 1.0' in lines
    assert 'pledgewatch_refusals_total{kind="request",reason="malformed"} 1.0' in lines
    assert 'pledgewatch_refusals_total{kind="envelope",reason="malformed"} 1.0' in lines
    assert 'pledgewatch_devices{status="active"} 4.0' in lines
    assert any(line.startswith("pledgewatch_envelopes_stored_total ") for line in lines)
    assert 'pledgewatch_webhook_backlog{endpoint="http://127.0.0.1:9/nowhere"} 0.0' in lines
