"""Webhooks: what the console tells the lender's own systems, from a durable outbox, signed, in order, once.

Events (the ``type`` of each JSON body):

* ``alarm.raised`` / ``alarm.cleared`` — every alarm event a device signed, once each, in the device's order;
* ``risk.raised`` / ``risk.cleared`` — a risk the lender's own judgement names (lender.evidence.risks) appears
  or goes away;
* ``device.silent`` / ``device.reporting`` — the ``silent`` risk, under its own name.

`Outbox.observe` turns one device's fresh judgement into events and writes
them to the outbox (``DATA/console.sqlite3``) in the same transaction that
records what is now open, so an event is never lost between the two and never
written twice. `Dispatcher` delivers the outbox to each endpoint strictly in
order: event N+1 is sent only after the endpoint answered 2xx to event N; on
any other answer, a refused connection or a time-out it waits (1 s, 2 s,
4 s, … at most `MAX_BACKOFF_S`) and sends N again. Each endpoint has its own
cursor in the file, so a receiver down for an hour, or a console restarted
meanwhile, gets the whole backlog afterwards, in order, with no event skipped.
A receiver that answered 2xx never sees that event again; one whose 2xx was
lost on the way may (at-least-once delivery, as HTTP allows no better), so
each event carries its outbox id, increasing by one per event: a receiver that
keeps the last id it processed gets every event exactly once, in order.

The signature (docs/lender-console.md): headers ``X-Pledgewatch-Event`` (the
id), ``X-Pledgewatch-Timestamp`` (Unix seconds of the attempt) and
``X-Pledgewatch-Signature: v1=<hex>``, where ``<hex>`` is
HMAC-SHA256(key, timestamp + "." + body) over the exact body bytes, with the
32-byte key in ``DATA/webhook.key`` (0600, made on first start).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from lender.console.records import ConsoleRecords
from lender.evidence.alarms import AlarmRecord
from lender.evidence.registry import iso_time
from lender.evidence.risks import Risk
from lender.exc import WebhookError

log = logging.getLogger(__name__)

KEY_FILE = "webhook.key"
SIGNATURE_HEADER = "X-Pledgewatch-Signature"
TIMESTAMP_HEADER = "X-Pledgewatch-Timestamp"
EVENT_HEADER = "X-Pledgewatch-Event"
MAX_BACKOFF_S = 300.0
PRUNE_EVERY_S = 60.0
TIMEOUT_S = 10.0
TYPES = ("alarm.raised", "alarm.cleared", "risk.raised", "risk.cleared", "device.silent", "device.reporting")


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    return "v1=" + hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(key: bytes, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (a replay window)."""
    try:
        fresh = abs((time.time() if now is None else now) - float(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(key, timestamp, body), signature)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"webhook URL {url!r} must be http:// or https:// with a host")
    return url


def _alarm_body(event: AlarmRecord) -> dict:
    return {"type": f"alarm.{event.state}", "device": event.device, "asset": event.asset,
            "alarm": {"name": event.name, "kind": event.kind, "state": event.state, "severity": event.severity,
                      "seq": event.seq, "time": iso_time(event.time), "received_at": iso_time(event.received_at),
                      "sensors": list(event.sensors), "value": event.value, "unit": event.unit,
                      "detail": event.detail}}


def _risk_key(risk: Risk) -> str:
    return f"risk {risk.kind} {risk.seq}"


def _risk_body(device: str, risk: Risk, raised: bool) -> dict:
    if risk.kind == "silent":
        kind = "device.silent" if raised else "device.reporting"
    else:
        kind = "risk.raised" if raised else "risk.cleared"
    return {"type": kind, "device": device,
            "risk": {"kind": risk.kind, "detail": risk.detail, "since": iso_time(risk.since), "seq": risk.seq}}


class Outbox:
    """The events owed to webhook endpoints, in ``DATA/console.sqlite3``."""

    def __init__(self, records: ConsoleRecords) -> None:
        self.records = records

    def observe(self, device: str, alarms: Sequence[AlarmRecord], risks: Iterable[Risk], *, now: float,
                baseline: bool = False) -> int:
        """Record `device`'s alarm events and current risks; queue an event for each change. Returns how many.

        `baseline` (the console's very first look at a lender that already holds
        evidence) records what is there without queueing it: the receiver gets
        what happens from then on, not the lender's whole history.
        """
        risks = {_risk_key(r): r for r in risks}
        with self.records.transaction() as conn:
            seen = {key: body for key, body in conn.execute("SELECT key, body FROM watch WHERE device = ?", (device,))}
            queued: list[dict] = []
            for event in sorted(alarms, key=lambda a: a.seq):
                key = f"alarm {event.seq} {event.name}"
                if key not in seen:
                    conn.execute("INSERT INTO watch (device, key, body) VALUES (?, ?, '')", (device, key))
                    queued.append(_alarm_body(event))
            for key, risk in risks.items():
                if key not in seen:
                    body = _risk_body(device, risk, True)
                    conn.execute("INSERT INTO watch (device, key, body) VALUES (?, ?, ?)",
                                 (device, key, json.dumps(body["risk"])))
                    queued.append(body)
            for key, body in seen.items():
                if key.startswith("risk ") and key not in risks:
                    conn.execute("DELETE FROM watch WHERE device = ? AND key = ?", (device, key))
                    old = json.loads(body)
                    queued.append(_risk_body(device, Risk(old["kind"], old["detail"], None, old["seq"]), False)
                                  | {"risk": old})
            if not baseline:
                conn.executemany("INSERT INTO outbox (type, at, body) VALUES (?, ?, ?)",
                                 [(b["type"], now, json.dumps(b, sort_keys=True)) for b in queued])
        return 0 if baseline else len(queued)

    def last_id(self) -> int:
        """The id of the newest event ever queued (AUTOINCREMENT keeps it when the event itself is pruned)."""
        rows = self.records.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return rows[0][0] if rows else 0

    def prune(self, urls: Sequence[str]) -> int:
        """Delete the events every endpoint in `urls` has had; how many. With no endpoint, every event: a new
        endpoint starts from the events queued after it (`endpoint`), so nobody can ever be owed them.

        An endpoint taken out of the configuration no longer holds events back; put back, it resumes from its
        cursor, and events pruned meanwhile show to its receiver as a jump in the ids.
        """
        with self.records.transaction() as conn:
            if urls:
                marks = ", ".join("?" * len(urls))
                (floor,), = conn.execute(f"SELECT min(delivered) FROM cursors WHERE url IN ({marks})", tuple(urls))
            else:
                (floor,), = conn.execute("SELECT coalesce(max(id), 0) FROM outbox")
            return 0 if floor is None else conn.execute("DELETE FROM outbox WHERE id <= ?", (floor,)).rowcount

    def backlog(self, url: str) -> int:
        rows = self.records.query("SELECT delivered FROM cursors WHERE url = ?", (url,))
        delivered = rows[0][0] if rows else self.last_id()
        return self.records.query("SELECT count(*) FROM outbox WHERE id > ?", (delivered,))[0][0]

    def endpoint(self, url: str) -> None:
        """Start delivering to `url`: a new endpoint gets the events queued from now on."""
        with self.records.transaction() as conn:
            conn.execute("INSERT INTO cursors (url, delivered) VALUES (?, coalesce((SELECT seq FROM sqlite_sequence"
                         " WHERE name = 'outbox'), 0)) ON CONFLICT (url) DO NOTHING", (url,))

    def cursors(self) -> list[tuple[str, int, int, float, str | None, int, int]]:
        return self.records.query("SELECT url, delivered, attempts, next_attempt, last_error, delivered_total,"
                                  " failed_total FROM cursors ORDER BY url")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as it goes out: its id and its exact body bytes."""

    id: int
    body: bytes


class Dispatcher:
    """Delivers the outbox to every endpoint in order, with retries and backoff, in a thread of its own."""

    def __init__(self, data_dir, urls: Sequence[str], key: bytes, *, poll_s: float = 0.5,
                 timeout_s: float = TIMEOUT_S, max_backoff_s: float = MAX_BACKOFF_S,
                 prune_every_s: float = PRUNE_EVERY_S) -> None:
        self.data_dir = data_dir
        self.prune_every_s = prune_every_s
        self.max_backoff_s = max_backoff_s
        self.urls = [check_url(u) for u in urls]
        self.key = key
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        records = ConsoleRecords.open(self.data_dir)
        outbox = Outbox(records)
        for url in self.urls:
            outbox.endpoint(url)
        self._thread = threading.Thread(target=self._run, args=(records,), name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)

    def _run(self, records: ConsoleRecords) -> None:
        outbox, pruned_at = Outbox(records), time.monotonic()
        try:
            while not self._stop.is_set():
                busy = False
                for url in self.urls:
                    busy |= self.deliver_next(records, url)
                if not busy and time.monotonic() - pruned_at >= self.prune_every_s:
                    outbox.prune(self.urls)  # what every endpoint has had goes: the outbox stays as long as the backlog
                    pruned_at = time.monotonic()
                if not busy:
                    self.wake.wait(self.poll_s)
                    self.wake.clear()
        finally:
            records.close()

    def deliver_next(self, records: ConsoleRecords, url: str, *, now: float | None = None) -> bool:
        """Try the endpoint's next event if it is due; True when there may be more to send right away."""
        now = time.time() if now is None else now
        (delivered, attempts, next_attempt), = records.query(
            "SELECT delivered, attempts, next_attempt FROM cursors WHERE url = ?", (url,))
        if next_attempt > now:
            return False
        rows = records.query("SELECT id, body FROM outbox WHERE id > ? ORDER BY id LIMIT 1", (delivered,))
        if not rows:
            return False
        event_id, body = rows[0]
        payload = json.dumps({"id": event_id, **json.loads(body)}, sort_keys=True).encode("utf-8")
        error = self._post(url, Delivery(event_id, payload))
        with records.transaction() as conn:
            if error is None:
                conn.execute("UPDATE cursors SET delivered = ?, attempts = 0, next_attempt = 0, last_error = NULL,"
                             " delivered_total = delivered_total + 1 WHERE url = ? AND delivered = ?",
                             (event_id, url, delivered))
            else:
                backoff = min(self.max_backoff_s, 2.0 ** attempts) * random.uniform(0.8, 1.0)
                conn.execute("UPDATE cursors SET attempts = attempts + 1, next_attempt = ?, last_error = ?,"
                             " failed_total = failed_total + 1 WHERE url = ?", (now + backoff, error[:500], url))
                log.warning("webhook %s: event %d not delivered (%s); next try in %.1f s", url, event_id, error,
                            backoff)
        return error is None

    def _post(self, url: str, delivery: Delivery) -> str | None:
        """POST one event; None when the endpoint answered 2xx, else why not."""
        stamp = str(int(time.time()))
        request = urllib.request.Request(url, data=delivery.body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "pledgewatch-console",
            EVENT_HEADER: str(delivery.id), TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(self.key, stamp, delivery.body),
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310 (checked scheme)
                answer.read(65536)
                return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
