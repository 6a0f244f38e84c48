"""`python -m bench console`: the console's server time for the portfolio (10,000 assets, 10^6 envelopes) and an asset page.

The evidence is written straight into a fresh lender store with SQL (signing
and ingesting 10^6 envelopes would take the bench ~10 minutes and measure
ingest, which `bench ingest` does): 10,000 registered devices with one pledged
asset each, 100 envelopes per device (a signed manifest, readings of a
temperature probe and a GNSS fix, a heartbeat), about 3 % of devices with an
open alarm, 2 % with a signed gap record, 1 % silent for a day. The envelope
bytes are placeholders: no view on these pages decodes them except alarm
facts, which cope with an undecodable envelope (they show no clock source).

Figures (milliseconds, median of `REPEAT` requests through the whole ASGI app,
the session check and the template included, no network):

* ``portfolio_ms_10k_assets`` — ``GET /`` (first page of 100 rows, the counts, the filter choices);
* ``portfolio_filtered_ms`` — ``GET /?state=ALARM&q=...``;
* ``api_portfolio_ms`` — ``GET /api/portfolio``;
* ``asset_page_ms`` — ``GET /assets/<device>/<asset>`` of a device with an open alarm, a gap and 100 envelopes;
* ``first_judgement_s`` — the watcher's first pass over every device when the console starts (pages are
  served meanwhile, with what is judged so far);
* ``rejudge_one_device_ms`` — judging one device again after new evidence.
"""
from __future__ import annotations

import hashlib
import warnings
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

DEVICES = int(os.environ.get("BENCH_CONSOLE_DEVICES", "10000"))
PER_DEVICE = int(os.environ.get("BENCH_CONSOLE_ENVELOPES", "100"))
REPEAT = 20
NOW = time.time()


def populate(data: Path, devices: int = DEVICES, per_device: int = PER_DEVICE, *,
             asset_name=lambda n: f"asset-{n:05d}") -> None:
    """A lender store with `devices` × `per_device` envelopes, written with SQL in one transaction."""
    from lender.evidence.store import SQLiteStore

    SQLiteStore.open(data).close()
    sites = data / "enroll" / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    rng = random.Random(16)
    conn = sqlite3.connect(data / "lender.sqlite3", isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    envelope_rows, record_rows, gap_rows, device_rows = [], [], [], []
    for n in range(devices):
        device, asset = f"gw-{n:05d}", asset_name(n)
        public_key = hashlib.sha256(device.encode()).digest()
        device_rows.append((device, public_key, public_key[:8], asset, "active", NOW - 90 * 86400))
        silent = n % 100 == 7
        alarm = n % 33 == 5
        gap = n % 50 == 11
        last = NOW - (86400 if silent else rng.uniform(5, 250))
        lat, lon = 53.5 + (n % 100) / 100, 9.9 + (n // 100) / 100
        prev = b"\0" * 16
        alarm_seq, gap_seq = per_device - 3, min(per_device - 5, 42)
        top = per_device + (2 if gap else 0)  # the two seqs a gap record explains are not stored: 10^6 all told
        for seq in range(1, top + 1):
            at = last - (top - seq) * 300
            digest = hashlib.sha256(f"{device}/{seq}".encode()).digest()[:16]
            if gap and seq in (gap_seq - 2, gap_seq - 1):
                continue
            gap_reason = "overflow" if gap and seq == gap_seq else None
            is_alarm = alarm and seq == alarm_seq
            # the signed counters: alarm envelopes and gap records so far, as an honest agent signs them
            alarms_so_far, gaps_so_far = int(alarm and seq >= alarm_seq), int(gap and seq >= gap_seq)
            envelope_rows.append((device, seq, 1, public_key[:8], digest, prev, b"\xa0", int(is_alarm or bool(gap_reason)),
                                  gap_reason, at, "198.51.100.7:5683", 2, int(is_alarm), alarms_so_far, gaps_so_far))
            prev = digest
            if seq == 1:
                records = [(f"asset.{asset}.kind", None, "stock", None), (f"asset.{asset}.sensors", None, "temp,gnss", None),
                           ("device.heartbeat_s", 300.0, None, "s")]
            elif gap_reason:
                gap_rows.append((device, seq, "overflow", gap_seq - 2, gap_seq - 1, 2))
                records = []
            elif is_alarm:
                name = f"alarm.temperature.{asset}"
                records = [(name, None, "raised", None), (f"{name}.severity", None, "major", None),
                           (f"{name}.value", 9.5, None, "Cel"), (f"{name}.detail", None, "above the band", None)]
            else:
                records = [("temp", round(3 + rng.random() * 4, 2), None, "Cel")]
                if seq % 10 == 0:
                    records += [("gnss.lat", lat + rng.gauss(0, 1e-4), None, "lat"),
                                ("gnss.lon", lon + rng.gauss(0, 1e-4), None, "lon")]
            record_rows += [(device, seq, i, name, value, string, unit, at, at)
                            for i, (name, value, string, unit) in enumerate(records)]
        if len(envelope_rows) > 200_000:
            _flush(conn, envelope_rows, record_rows, gap_rows)
    _flush(conn, envelope_rows, record_rows, gap_rows)
    conn.executemany("INSERT INTO devices (device, public_key, kid, asset, status, registered_at) VALUES (?, ?, ?, ?, ?, ?)",
                     device_rows)
    conn.execute("COMMIT")
    conn.close()
    for n in range(0, devices):
        borrower = f"Borrower {n % 40:02d}"
        (sites / f"{asset_name(n)}.toml").write_text(
            f'site = "Site {n % 200:03d}"\nborrower = "{borrower}"\n\n[[assets]]\nname = "{asset_name(n)}"\nkind = "stock"\n'
            f'sensors = ["temp", "gnss"]\ntemperature = {{ low = 2.0, high = 8.0, hold_s = 600 }}\n'
            f'geofence = {{ lat = {53.5 + (n % 100) / 100}, lon = {9.9 + (n // 100) / 100}, radius_m = 500 }}\n\n'
            f'[rules]\ntimezone = "Europe/Berlin"\n', "utf-8")


def _flush(conn, envelope_rows: list, record_rows: list, gap_rows: list) -> None:
    conn.executemany(
        "INSERT INTO envelopes (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer,"
        " version, alarm_records, alarm_count, gap_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        envelope_rows)
    conn.executemany("INSERT INTO records (device, seq, idx, name, value, string, unit, time, at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", record_rows)
    conn.executemany("INSERT INTO gap_records (device, seq, reason, first_seq, last_seq, count)"
                     " VALUES (?, ?, ?, ?, ?, ?)", gap_rows)
    envelope_rows.clear()
    record_rows.clear()
    gap_rows.clear()


def _median_ms(client, path: str, repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        answer = client.get(path, headers={"accept": "text/html"})
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    return round(statistics.median(times), 1)


def measure(data: Path) -> dict:
    with warnings.catch_warnings():  # starlette 1.x would rather have httpx2; httpx is what the tests use
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from lender.console.accounts import Accounts
    from lender.console.app import SESSION_COOKIE, create_app
    from lender.console.live import Changes
    from lender.console.records import ConsoleRecords
    from lender.console.server import Console, ConsoleConfig
    from lender.console.webhooks import Outbox
    from lender.evidence.store import SQLiteStore

    with ConsoleRecords.open(data) as records:
        accounts = Accounts(records)
        user = accounts.add("bench", "viewer", "bench-password-1", now=NOW)
        session = accounts.open_session(user, now=time.time())
    console = Console(ConsoleConfig(data_dir=data, port=0))
    state = console.build()
    start = time.perf_counter()
    console.watcher.start()
    assert console.watcher.ready.wait(3600), "the first judgement did not finish"
    first = time.perf_counter() - start
    console.watcher.stop()
    app = create_app(state)
    client = TestClient(app, cookies={SESSION_COOKIE: session})
    counts = state.portfolio.counts()
    alarmed = next(r for r in state.portfolio.rows() if r.state == "ALARM" and r.device.endswith("5"))
    figures = {
        "assets": len(state.portfolio.rows()), "envelopes": None, "counts": counts,
        "portfolio_ms_10k_assets": _median_ms(client, "/"),
        "portfolio_filtered_ms": _median_ms(client, "/?state=ALARM&q=asset-0"),
        "api_portfolio_ms": _median_ms(client, "/api/portfolio"),
        "asset_page_ms": _median_ms(client, f"/assets/{alarmed.device}/{alarmed.asset}"),
        "first_judgement_s": round(first, 1),
    }
    store = SQLiteStore.open(data, create=False)
    with ConsoleRecords.open(data) as records:
        changes = Changes(data)
        changes.start()
        times = []
        for _ in range(REPEAT):
            t0 = time.perf_counter()
            console.watcher.judge_device(store, Outbox(records), changes, alarmed.device)
            times.append((time.perf_counter() - t0) * 1000)
        changes.close()
    figures["rejudge_one_device_ms"] = round(statistics.median(times), 1)
    figures["envelopes"] = store.counts().envelopes
    store.close()
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        data = Path(folder) / "lender"
        start = time.perf_counter()
        populate(data)
        built = time.perf_counter() - start
        figures = measure(data)
        figures["populate_s"] = round(built, 1)
        figures["target_portfolio_ms"] = 500
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
