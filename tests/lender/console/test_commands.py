"""Operators send a gateway the command issue's commands from its asset page (inspect now, permit a release): the
page shows each command pending until the device fetches and answers it, then the signed snapshot and its round
trip; viewers get no buttons; every command is an audit record with the operator's name."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from lender.console.records import ConsoleRecords
from lender.enrollment.technicians import lender_identity
from lender.evidence import registry
from telemetry.command import Command, Outcome, Permit, outcome_records
from telemetry.senml import Record

from .conftest import csrf_of, log_in

PAGE = "/assets/gw-pallets/pallets-3"
API = "/api/assets/gw-pallets/pallets-3"


def audit_of(pledged, action: str) -> list[tuple[str, str, str]]:
    with ConsoleRecords.open(pledged.data_dir) as records:
        return [(e.actor, e.target, e.detail) for e in records.audit_entries() if e.action == action]


def test_inspect_now_is_pending_until_the_gateway_answers_then_shows_the_signed_snapshot_and_round_trip(
        console, pledged):
    client = log_in(console.url, "otto")
    page = client.get(PAGE).text
    form = re.search(r'<form class="action" method="post" action="/commands/inspect">.*?</form>', page, re.S)
    assert form and "Inspect now" in form.group(0)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(0)))
    assert client.post("/commands/inspect", data=fields).status_code == 303     # the form, as a browser posts it

    (issued,) = pledged.store.issued_commands("gw-pallets")
    assert (issued.kind, issued.issuer) == ("inspect", "otto")
    (shown,) = client.get(API).json()["commands"]
    assert (shown["kind"], shown["state"], shown["pending"], shown["issuer"]) == ("inspect", "issued", True, "otto")
    assert "waiting for gw-pallets to fetch it" in client.get(PAGE).text
    assert audit_of(pledged, "inspect") == [("otto", "gw-pallets command seq 1", f"nonce {issued.nonce.hex()}")]

    # the gateway fetches it at its next poll and signs its snapshot with the outcome (as agent.commands does)
    gateway = pledged.gateways["gw-pallets"]
    command = Command.verify(issued.raw, lender_identity(pledged.data_dir).public_key)
    now = pledged.tick()
    with client.stream("GET", "/events", timeout=15) as events:       # what the page's live region listens to
        lines = events.iter_lines()
        assert next(lines).startswith("retry:")
        pledged.deliver(gateway, gateway.sign(outcome_records(command, Outcome.APPLIED, now)
                                              + [Record("temp", value=4.25, unit="Cel", time=now)]))
        deadline = time.monotonic() + 15
        for line in lines:          # a keep-alive at least every 15 s: the deadline is looked at
            if line == "event: device-gw-pallets":
                break
            assert time.monotonic() < deadline, "no live update for the answering gateway"
    assert 'hx-trigger="sse:device-gw-pallets"' in client.get(PAGE).text
    (answered,) = client.get(API).json()["commands"]
    assert not answered["pending"] and answered["answer_seq"] == gateway.seq
    assert 0 < answered["round_trip_ms"] < 60_000
    assert answered["snapshot"] == [{"name": "temp", "value": 4.25, "unit": "Cel"}]
    page = client.get(PAGE).text
    assert f"the device signed it applied in its envelope seq {gateway.seq}; round trip" in page and "temp = 4.25 Cel" in page


def test_permit_a_release_issues_the_signed_window_and_refuses_what_is_no_permit(console, pledged):
    client = log_in(console.url, "otto")
    token = {"X-CSRF-Token": csrf_of(client)}
    start = int(time.time())
    until = datetime.fromtimestamp(start + 7200, timezone.utc).strftime("%Y-%m-%dT%H:%M")   # a browser's datetime-local
    permit = {"device": "gw-pallets", "asset": "pallets-3", "until": until, "reason": "release of goods, contract C-17"}
    done = client.post("/api/commands/permit", headers=token, json=permit)
    assert done.status_code == 201, done.text
    assert (done.json()["kind"], done.json()["asset"]) == ("permit", "pallets-3")
    (issued,) = pledged.store.issued_commands("gw-pallets")
    signed = Command.verify(issued.raw, lender_identity(pledged.data_dir).public_key)
    assert isinstance(signed.body, Permit) and signed.device == "gw-pallets"
    assert (signed.body.asset, signed.body.reason) == ("pallets-3", "release of goods, contract C-17")
    assert abs(signed.body.start - start) <= 2 and signed.body.until == (start + 7200) // 60 * 60
    assert signed.expires >= signed.body.until          # the desk keeps a permit valid for its whole window
    (shown,) = client.get(API).json()["commands"]
    assert shown["permit"] == {"asset": "pallets-3", "from": shown["permit"]["from"], "until": f"{until}:00.000Z",
                               "reason": "release of goods, contract C-17"} and shown["pending"]
    assert "release of goods, contract C-17" in client.get(PAGE).text
    ((actor, target, detail),) = audit_of(pledged, "permit")
    assert (actor, target) == ("otto", "gw-pallets pallets-3 command seq 1") and detail.endswith("contract C-17")

    def refused(status: int, **changes) -> None:
        answer = client.post("/api/commands/permit", headers=token, json={**permit, **changes})
        assert answer.status_code == status, (changes, answer.status_code, answer.text)

    refused(400, until="2001-01-01T00:00")                       # over before it starts
    refused(400, reason="")
    refused(400, until="tomorrow")
    refused(404, asset="cold-store")                             # not an asset this gateway watches
    refused(404, device="gw-nobody")
    registry.revoke(pledged.store, "gw-pallets", now=time.time())
    refused(409)
    assert client.post("/api/commands/inspect", headers=token, json={"device": "gw-pallets"}).status_code == 409
    assert len(pledged.store.issued_commands()) == 1


def test_a_viewer_sees_the_commands_but_no_buttons(console, pledged):
    otto = log_in(console.url, "otto")
    assert otto.post("/api/commands/inspect", headers={"X-CSRF-Token": csrf_of(otto)},
                     json={"device": "gw-pallets"}).status_code == 201
    page = log_in(console.url, "vera").get(PAGE).text
    assert "#1 inspect" in page and "by otto" in page
    assert "Inspect now" not in page and "Permit a release" not in page
    assert "Inspect now" in otto.get(PAGE).text and "Permit a release" in otto.get(PAGE).text
