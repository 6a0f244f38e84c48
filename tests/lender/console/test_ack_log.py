"""An operator's alarm acknowledgement is an entry of the lender's tamper-evident log (kind 7, ack), as a gap review
is, in SQLite and in PostgreSQL; a device's evidence bundle carries its acks and verifies with them, and an ack that
names no alarm the device signed fails verification."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from lender.evidence.export import export_bundle
from lender.evidence.ingest import Ingest
from lender.evidence.log import lender_identity
from lender.evidence.store import Ack
from pledgewatch import cli as pledgewatch_cli
from telemetry import cbor
from telemetry.bundle import verify_bundle
from telemetry.exc import SchemaError
from telemetry.logentry import AlarmAckNote, EntryKind, LogEntry
from tests.kit.lender import Device, batch, enroll

from .conftest import csrf_of, log_in

pytestmark = pytest.mark.backends
T = 1_800_000_000.0


def acks_logged(store) -> list[tuple[str, AlarmAckNote]]:
    return [(e.device, LogEntry.decode(e.entry).body) for e in store.log.entries() if e.kind is EntryKind.ALARM_ACK]


def lender_verify(document: dict, key: bytes, path: Path) -> tuple[int, dict]:
    """`pledgewatch lender verify FILE --lender-key KEY --json`, in this process."""
    path.write_text(json.dumps(document))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = pledgewatch_cli.main(["lender", "verify", str(path), "--lender-key", key.hex(), "--json"])
    return code, json.loads(out.getvalue())


def test_an_ack_is_a_log_entry_and_the_bundle_verifies_with_it_in_either_store(store, data_dir, tmp_path):
    gateway = Device("gw-1")
    enroll(store, data_dir, gateway, now=T)
    envelopes = [gateway.next(), gateway.next(alarm=True), gateway.next()]
    Ingest(store, clock=lambda: T + 5).batch(batch(envelopes), peer="test")
    store.add_ack(Ack("gw-1", "alarm.tamper", 2, "otto", "called the site: a delivery", T + 60))
    assert acks_logged(store) == [("gw-1", AlarmAckNote(2, "otto", "called the site: a delivery", "alarm.tamper"))]
    assert store.log.audit().ok
    key = lender_identity(data_dir).public_key
    document, warnings = export_bundle(store, "gw-1")
    report = verify_bundle(document, key)
    assert report.ok and not warnings, report.failures
    assert [e["kind"] for e in document["entries"]] == ["registration"] + ["envelope"] * 3 + ["alarm_ack"]
    assert any(f.check == "alarm_ack" and f.ok for f in report.findings)
    code, verdict = lender_verify(document, key, tmp_path / "gw-1.bundle.json")
    assert code == 0 and verdict["ok"] and verdict["entries"] == 5

    store.add_ack(Ack("gw-1", "alarm.tamper", 3, "otto", "the wrong seq: no alarm there", T + 90))
    document = export_bundle(store, "gw-1")[0]
    report = verify_bundle(document, key)
    assert [(f.check, f.index) for f in report.failures] == [("alarm_ack", 5)]
    code, verdict = lender_verify(document, key, tmp_path / "gw-1.bundle.json")
    assert code == 1 and [f["check"] for f in verdict["findings"] if not f["ok"]] == ["alarm_ack"]


def test_an_alarm_ack_entry_has_one_shape():
    entry = LogEntry(EntryKind.ALARM_ACK, "gw-1", 5, AlarmAckNote(2, "otto", "n", "alarm.tamper"))
    assert LogEntry.decode(entry.encode()) == entry
    for body in ({1: 2, 2: "otto", 3: "n"}, {1: 2, 2: "otto", 3: "n", 4: ""}, {1: -1, 2: "otto", 3: "n", 4: "a"},
                 {1: 2, 2: b"otto", 3: "n", 4: "a"}, {1: 2, 2: "otto", 3: "n", 4: "a", 5: "more"}):
        with pytest.raises(SchemaError, match="alarm ack body"):
            LogEntry.decode(cbor.encode([7, "gw-1", 5, body]))


@pytest.mark.backends("sqlite")    # the console's own tests run on SQLite (tests/lender/test_store_everywhere: PG)
def test_the_console_logs_the_ack_it_keeps_and_its_bundle_download_carries_it(console, pledged):
    client = log_in(console.url, "otto")
    raised = pledged.gateways["gw-cold"].seq
    done = client.post("/api/alarms/ack", headers={"X-CSRF-Token": csrf_of(client)}, json={
        "device": "gw-cold", "alarm": "alarm.door.cold-store", "seq": raised, "note": "site called"})
    assert done.status_code == 201
    assert acks_logged(pledged.store) == [
        ("gw-cold", AlarmAckNote(raised, "otto", "site called", "alarm.door.cold-store"))]
    assert [(a.by, a.note) for a in pledged.console_acks()] == [("otto", "site called")]   # the page's record too
    bundle = client.get("/devices/gw-cold/evidence.bundle.json").json()
    assert bundle["entries"][-1]["kind"] == "alarm_ack"
    report = verify_bundle(bundle, lender_identity(pledged.data_dir).public_key)
    assert any(f.check == "alarm_ack" and f.ok for f in report.findings)
    # the kit binds its gateways by hand (store.bind, no enrollment entry in the log), which the bundle shows;
    # nothing else fails (the store-level test above verifies a whole bundle with an ack in it)
    assert {f.check for f in report.failures} == {"binding"}, report.failures
