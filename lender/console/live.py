"""The console's watch on the evidence store: judge again each device whose evidence changed, and say so.

One thread (`Watcher`) polls the evidence store (``DATA/lender.sqlite3``, or
the PostgreSQL database of ``--store``, written by the CoAP server or its
workers, maybe on other hosts) every `poll_s` seconds for what changed since
it last looked, with cheap queries on the tables' own orders (lender.console.tables):
envelopes by their row id (SQLite) or the log's entries by their index
(PostgreSQL), reviews by their id (all only ever grow), quarantine rows by
their last sighting, the registry by its
generation counter, site records by their modification time, and devices
whose silence deadline has passed. Only those devices are judged again
(lender.evidence.alarms.asset_status with the lender's full `Judge`); their
rows replace the old ones in the `Portfolio`, their alarm events and risks go
to the webhook `Outbox`, and `on_change` hears which devices changed (the
pages' live updates: lender.console.app).

The first pass judges every device; the portfolio says how far it got.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lender.console.portfolio import Portfolio, read_site, rows_of
from lender.console.records import ConsoleRecords
from lender.console.tables import Tables, open_tables
from lender.console.webhooks import Outbox
from lender.evidence.alarms import alarm_events, asset_status
from lender.evidence.risks import MISSED_HEARTBEATS, Judge, declared_heartbeat
from lender.evidence.store import EvidenceStore
from lender.evidence.stores import open_store
from lender.evidence.tokens import token_key
from lender.exc import StoreError

log = logging.getLogger(__name__)

SITE_CHECK_S = 10.0


class Changes:
    """High-water marks over the evidence store, read with a read-only connection of its own."""

    def __init__(self, data_dir: Path, store_url: str | None = None) -> None:
        self.tables: Tables = open_tables(data_dir, store_url)
        self.envelope_id = 0
        self.review_id = 0
        self.quarantine_seen = 0.0
        self.generation: object = None
        self.registry: dict[str, tuple] = {}

    def close(self) -> None:
        self.tables.close()

    def start(self) -> None:
        """Mark everything present as seen (the first pass judges every device anyway)."""
        rows = self.tables.rows
        self.envelope_id = rows(self.tables.stored_top)[0][0]
        self.review_id = rows("SELECT coalesce(max(id), 0) FROM reviews")[0][0]
        self.quarantine_seen = rows("SELECT coalesce(max(last_seen), 0) FROM quarantine")[0][0]
        self.registry_changed()

    def devices(self) -> set[str]:
        known = set(self.registry)
        known |= {d for (d,) in self.tables.rows(self.tables.stored_devices)}
        return known

    def registry_changed(self) -> set[str]:
        (generation,), = self.tables.rows(f"SELECT value FROM {self.tables.meta} WHERE key = 'registry_generation'")
        if generation == self.generation:
            return set()
        self.generation = generation
        rows = {d: tuple(rest) for d, *rest in
                self.tables.rows("SELECT device, status, asset, binding, revoked_at FROM devices")}
        changed = {d for d in rows.keys() | self.registry.keys() if rows.get(d) != self.registry.get(d)}
        self.registry = rows
        return changed

    def poll(self) -> set[str]:
        """Devices whose evidence, reviews, quarantine or registry row changed since the last poll."""
        changed: set[str] = set()
        rows = self.tables.rows(self.tables.stored_since, (self.envelope_id,))
        for device, top in rows:
            changed.add(device)
            self.envelope_id = max(self.envelope_id, top)
        rows = self.tables.rows("SELECT device, max(id) FROM reviews WHERE id > ? GROUP BY device", (self.review_id,))
        for device, top in rows:
            changed.add(device)
            self.review_id = max(self.review_id, top)
        rows = self.tables.rows("SELECT device, max(last_seen) FROM quarantine WHERE last_seen > ?"
                                " AND device IS NOT NULL GROUP BY device", (self.quarantine_seen,))
        for device, seen in rows:
            changed.add(device)
            self.quarantine_seen = max(self.quarantine_seen, seen)
        return changed | self.registry_changed()


class Watcher:
    """Keeps `portfolio` and the webhook outbox current with the evidence store, in a thread of its own."""

    def __init__(self, data_dir: str | Path, portfolio: Portfolio, *, poll_s: float = 1.0,
                 missed_heartbeats: float = MISSED_HEARTBEATS, on_change: Callable[[set[str]], None] | None = None,
                 clock: Callable[[], float] = time.time, store_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.store_url = store_url          # None: SQLite in data_dir
        self.sites_dir = self.data_dir / "enroll" / "sites"
        self.portfolio = portfolio
        self.poll_s = poll_s
        self.missed_heartbeats = missed_heartbeats
        self.on_change = on_change or (lambda devices: None)
        self.clock = clock
        self.ready = threading.Event()      # the first pass is done
        self.judged = 0                     # devices judged so far (all passes)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._site_times: dict[str, float] | None = None
        self._site_checked = 0.0
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def poke(self) -> None:
        """Look now instead of at the next poll (a review was just written, say)."""
        self._wake.set()

    def _judge(self) -> Judge:
        return Judge(now=self.clock(), token_key=token_key(self.data_dir, create=False), sites_dir=self.sites_dir,
                     missed_heartbeats=self.missed_heartbeats)

    def judge_device(self, store: EvidenceStore, outbox: Outbox, changes: Changes, device: str, *,
                     baseline: bool = False) -> None:
        """Judge `device` again: its rows in the portfolio, its events in the outbox."""
        judge = self._judge()
        registered = changes.registry.get(device)
        if registered is None and not store.last_received(device):
            self.portfolio.forget(device)
            return
        statuses = asset_status(store, device, judge)
        heartbeat = declared_heartbeat(store, device)
        asset = registered[1] if registered else None
        rows = rows_of(statuses, heartbeat, read_site(self.sites_dir, asset), registered_asset=asset,
                       revoked=bool(registered and registered[0] == "revoked"))
        last = statuses[0].last_seen if statuses else None
        if last is None:
            found = store.device(device)
            last = found.registered_at if found else None
        silent = any(r.kind == "silent" for r in (statuses[0].risks if statuses else ()))
        silent_at = None if silent or last is None else last + self.missed_heartbeats * heartbeat
        self.portfolio.update(device, rows, silent_at=silent_at, judged_at=judge.now)
        risks = statuses[0].risks if statuses else ()
        outbox.observe(device, alarm_events(store, device), risks, now=judge.now, baseline=baseline)
        self.judged += 1

    def _sites_changed(self, changes: Changes, now: float) -> set[str]:
        if now - self._site_checked < SITE_CHECK_S:
            return set()
        self._site_checked = now
        times = {}
        if self.sites_dir.is_dir():
            for path in self.sites_dir.glob("*.toml"):
                try:
                    times[path.stem] = path.stat().st_mtime
                except OSError:
                    continue
        before, self._site_times = self._site_times, times
        if before is None:
            return set()
        moved = {a for a in times.keys() | before.keys() if times.get(a) != before.get(a)}
        return {d for d, row in changes.registry.items() if row[1] in moved}

    def _run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # the pages show it; the server keeps serving what it has
            self.failure = exc
            log.exception("console: the watch on the evidence store stopped")
            raise

    def _watch(self) -> None:
        # a PostgreSQL store is never given its schema by the console: `lender migrate` or the server does that
        store = open_store(self.data_dir, self.store_url, create=self.store_url is None)
        records = ConsoleRecords.open(self.data_dir)
        outbox = Outbox(records)
        changes = Changes(self.data_dir, self.store_url)
        try:
            changes.start()
            self._sites_changed(changes, self.clock())
            first_look = not records.query("SELECT 1 FROM meta WHERE key = 'watched'")
            devices = sorted(changes.devices())
            self.portfolio.expected = len(devices)
            for device in devices:
                if self._stop.is_set():
                    return
                self.judge_device(store, outbox, changes, device, baseline=first_look)
            with records.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watched', 1)")
            self.ready.set()
            self.on_change(set(devices))
            while not self._stop.is_set():
                self._wake.wait(self.poll_s)
                self._wake.clear()
                now = self.clock()
                try:
                    due = changes.poll() | set(self.portfolio.due_for_silence(now)) | self._sites_changed(changes, now)
                    for device in sorted(due):
                        self.judge_device(store, outbox, changes, device)
                except StoreError as exc:  # a locked or busy store, a database restarting: try at the next poll
                    log.warning("console: cannot read the evidence store now (%s); trying again", exc)
                    continue
                self.portfolio.expected = max(self.portfolio.expected, len(self.portfolio))
                if due:
                    self.on_change(due)
        finally:
            changes.close()
            records.close()
            store.close()
