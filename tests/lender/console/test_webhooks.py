"""Webhooks reach the lender's own systems: every event once, in order, signed, across a receiver outage and a restart."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lender.console.records import ConsoleRecords
from lender.console.webhooks import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Outbox, sign, verify
from lender.evidence.alarms import alarm_events
from lender.evidence.risks import Risk
from lender.evidence.store import Review
from telemetry.alarms import CLEARED, RAISED
from tests.kit.console import RunningConsole, cold_alarm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def documented_signature(key: bytes, timestamp: str, body: bytes) -> str:
    """The scheme as docs/lender-console.md states it, written here with the standard library alone:
    ``v1=<hex of HMAC-SHA256(key, timestamp + "." + body)>``."""
    return "v1=" + hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


class Receiver:
    """The lender's own system: takes signed events on 127.0.0.1, may be stopped and started again on one port."""

    def __init__(self, key: bytes, port: int) -> None:
        self.key, self.port = key, port
        self.events: list[dict] = []       # every accepted event, in arrival order
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stamp, signature = self.headers[TIMESTAMP_HEADER], self.headers[SIGNATURE_HEADER]
                # what a receiver built from the documentation alone checks, and the Python helper the docs name
                documented = (hmac.compare_digest(signature, documented_signature(receiver.key, stamp, body))
                              and abs(time.time() - int(stamp)) <= 300)
                if not (documented and verify(receiver.key, stamp, body, signature)):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                else:
                    event = json.loads(body)
                    assert str(event["id"]) == self.headers[EVENT_HEADER]
                    receiver.events.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/pledgewatch"

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} of {count} events arrived: {self.events}"
            time.sleep(0.05)


def test_a_receiver_down_for_a_while_gets_every_event_once_in_order_signed(pledged):
    key = (pledged.data_dir / "webhook.key")
    receiver = Receiver(b"", free_port())
    options = {"webhooks": (receiver.url,), "webhook_backoff_s": 0.5}
    cold, pallets = pledged.gateways["gw-cold"], pledged.gateways["gw-pallets"]
    with RunningConsole(pledged.data_dir, **options) as console:
        receiver.key = key.read_bytes()
        receiver.start()
        pledged.tick()
        pledged.deliver(pallets, pallets.sign(pallet_alarm(pledged.now, RAISED)))
        receiver.wait_for(1)
        receiver.stop()                                    # the lender's system goes down
        pledged.tick()
        pledged.deliver(pallets, pallets.sign(pallet_alarm(pledged.now, CLEARED)))
        console.wait_for(lambda: outbox_size(pledged) >= 2, what="the outbox")
        pledged.deliver(cold, cold.sign(cold_alarm(pledged.now, state=CLEARED)))
        console.wait_for(lambda: outbox_size(pledged) >= 3, what="the outbox")
        gap = pledged.store.gap_records("gw-cold")[0].seq
        pledged.store.add_review(Review("gw-cold", gap, "otto", "power cut confirmed", pledged.now))
        console.wait_for(lambda: outbox_size(pledged) >= 4, what="the outbox")
    # the console restarts while the receiver is still down; meanwhile the forklift's gateway comes back
    forklift = pledged.gateways["gw-forklift"]
    pledged.tick()
    pledged.deliver(forklift, forklift.reading(11.0))
    with RunningConsole(pledged.data_dir, **options) as console:
        console.wait_for(lambda: outbox_size(pledged) >= 5, what="the outbox after the restart")
        time.sleep(1.5)                                    # several tries fail while it is down
        receiver.start()
        receiver.wait_for(5)
        time.sleep(1.0)                                    # nothing more, nothing twice
    kinds = [(e["type"], e["device"]) for e in receiver.events]
    assert kinds == [("alarm.raised", "gw-pallets"), ("alarm.cleared", "gw-pallets"), ("alarm.cleared", "gw-cold"),
                     ("risk.cleared", "gw-cold"), ("device.reporting", "gw-forklift")]
    assert [e["id"] for e in receiver.events] == list(range(1, 6))
    assert receiver.bad_signatures == 0
    assert receiver.events[0]["alarm"]["name"] == "alarm.tamper.pallets-3"
    assert receiver.events[3]["risk"]["kind"] == "gap"


def pallet_alarm(t: float, state: str):
    from telemetry.alarms import SEVERITY, alarm_name
    from telemetry.senml import Record

    name = alarm_name("tamper", "pallets-3")
    return [Record(name, string=state, time=t), Record(f"{name}.severity", string=SEVERITY["tamper"], time=t)]


def outbox_size(pledged) -> int:
    with ConsoleRecords.open(pledged.data_dir) as records:
        return Outbox(records).last_id()


def test_a_tampered_body_a_wrong_key_or_an_old_timestamp_fails_the_documented_check():
    key, body, stamp = bytes(range(32)), b'{"id": 7, "type": "alarm.raised"}', str(int(time.time()))
    signature = sign(key, stamp, body)
    assert signature.startswith("v1=") and len(signature) == 3 + 64
    assert signature == documented_signature(key, stamp, body)          # the code signs as the docs say
    tampered = body.replace(b"raised", b"cleared")
    assert documented_signature(key, stamp, tampered) != signature      # a receiver following the docs sees it
    assert documented_signature(key, str(int(stamp) + 1), body) != signature
    assert verify(key, stamp, body, signature)
    assert not verify(key, stamp, body.replace(b"raised", b"cleared"), signature)
    assert not verify(bytes(32), stamp, body, signature)
    assert not verify(key, str(int(stamp) - 3600), body, sign(key, str(int(stamp) - 3600), body))
    assert not verify(key, "not-a-time", body, signature)


def test_the_outbox_queues_each_change_once_and_a_baseline_queues_nothing(pledged):
    with ConsoleRecords.open(pledged.data_dir) as records:
        outbox = Outbox(records)
        events = alarm_events(pledged.store, "gw-cold")
        gap = Risk("gap", "seq 12 declares overflow", 1.0, 12)
        silent = Risk("silent", "no envelope for 2 h", 2.0, None)
        assert outbox.observe("gw-cold", events, [gap], now=1.0, baseline=True) == 0
        assert outbox.observe("gw-cold", events, [gap], now=2.0) == 0
        assert outbox.observe("gw-cold", events, [gap, silent], now=3.0) == 1
        assert outbox.observe("gw-cold", events, [gap, silent], now=4.0) == 0
        assert outbox.observe("gw-cold", events, [], now=5.0) == 2
        bodies = [json.loads(b) for (b,) in records.query("SELECT body FROM outbox ORDER BY id")]
    assert [b["type"] for b in bodies] == ["device.silent", "risk.cleared", "device.reporting"]


def test_the_outbox_keeps_only_what_some_endpoint_still_owes_and_ids_go_on_after_pruning(pledged):
    silent = Risk("silent", "no envelope for 2 h", 2.0, None)
    with ConsoleRecords.open(pledged.data_dir) as records:
        outbox = Outbox(records)
        fast, slow = "http://127.0.0.1:9/fast", "http://127.0.0.1:9/slow"
        outbox.endpoint(fast)
        outbox.endpoint(slow)
        for step in range(6):                         # six events: silent, reporting, silent, ...
            outbox.observe("gw-cold", [], [silent] if step % 2 == 0 else [], now=float(step))
        with records.transaction() as conn:           # fast has had all six, slow only the first two
            conn.execute("UPDATE cursors SET delivered = 6 WHERE url = ?", (fast,))
            conn.execute("UPDATE cursors SET delivered = 2 WHERE url = ?", (slow,))
        assert outbox.prune([fast, slow]) == 2
        assert [i for (i,) in records.query("SELECT id FROM outbox ORDER BY id")] == [3, 4, 5, 6]
        assert outbox.backlog(slow) == 4 and outbox.backlog(fast) == 0
        assert outbox.prune([fast]) == 4              # slow taken out of the configuration holds nothing back
        assert outbox.last_id() == 6
        outbox.endpoint("http://127.0.0.1:9/new")     # a new endpoint starts after the last id, pruned or not
        outbox.observe("gw-cold", [], [silent], now=7.0)
        assert outbox.backlog("http://127.0.0.1:9/new") == 1
        assert [i for (i,) in records.query("SELECT id FROM outbox")] == [7]
        assert outbox.prune([]) == 1                  # no endpoint at all: nobody can ever be owed an event
        assert outbox.last_id() == 7


def test_the_dispatcher_prunes_what_its_receiver_has_had(pledged):
    from lender.console.webhooks import Dispatcher

    receiver = Receiver(b"k" * 32, free_port()).start()
    dispatcher = Dispatcher(pledged.data_dir, [receiver.url], receiver.key, poll_s=0.05, prune_every_s=0.0)
    dispatcher.start()
    try:
        with ConsoleRecords.open(pledged.data_dir) as records:
            outbox = Outbox(records)
            silent = Risk("silent", "no envelope for 2 h", 2.0, None)
            for step in range(3):
                outbox.observe("gw-cold", [], [silent] if step % 2 == 0 else [], now=float(step))
            dispatcher.wake.set()
            receiver.wait_for(3)
            deadline = time.monotonic() + 10
            while records.query("SELECT count(*) FROM outbox")[0][0] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert records.query("SELECT count(*) FROM outbox")[0][0] == 0
            assert outbox.last_id() == 3
    finally:
        dispatcher.stop()
        receiver.stop()
    assert [e["id"] for e in receiver.events] == [1, 2, 3]
