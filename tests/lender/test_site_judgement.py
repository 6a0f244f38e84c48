"""The lender judges raw readings against the site record it holds, where the device raised nothing (issue 12, item 6)."""
from __future__ import annotations

import time

import pytest

from lender.enrollment import registration
from lender.evidence.alarms import asset_status
from lender.evidence.ingest import Ingest
from lender.evidence.risks import Judge, device_risks
from lender.evidence.store import SQLiteStore
from telemetry import cbor
from telemetry.envelope import GENESIS, seal
from telemetry.identity import Identity
from telemetry.senml import Record

KEY = Identity(bytes([9]) * 32)
SITE = """
[asset]
id = "loan-7"
site = "Cold store 2, Mombasa Road"

[[assets]]
name = "cold-store"
kind = "stock"
sensors = ["temp", "gnss"]
temperature = { low = 2.0, high = 8.0, hold_s = 600, hysteresis = 0.5 }
geofence = { lat = -1.3192, lon = 36.8581, radius_m = 150 }
"""


@pytest.fixture
def lender(tmp_path):
    data = tmp_path / "lender"
    with SQLiteStore.open(data) as store:
        registration.register(store, data, "gw-7", KEY.public_key, with_oscore=False, asset="loan-7")
        sites = data / "enroll" / "sites"
        sites.mkdir(parents=True)
        (sites / "loan-7.toml").write_text(SITE)
        yield store, Judge(now=time.time(), sites_dir=sites)


def deliver(store, readings: list[list[Record]]) -> None:
    prev = GENESIS
    raw = []
    for seq, records in enumerate(readings, 1):
        envelope = seal(KEY, device="gw-7", boot=1, seq=seq, prev=prev, records=records)
        prev = envelope.digest
        raw.append(envelope.raw)
    assert Ingest(store).batch(cbor.encode(raw), peer="test").stored == tuple(range(1, len(readings) + 1))


def fix(lat: float, lon: float, t: float) -> list[Record]:
    return [Record("gnss.lat", value=lat, unit="lat", time=t), Record("gnss.lon", value=lon, unit="lon", time=t)]


def test_a_fix_440_km_away_and_40_degrees_on_cold_stock_are_risks_when_the_device_stayed_silent(lender):
    store, judge = lender
    t = time.time() - 3000
    deliver(store, [fix(-1.3192, 36.8581, t)]
            + [[Record("temp", value=40.0, unit="Cel", time=t + 60 * i)] for i in range(1, 20)]
            + [fix(-4.0435, 39.6682, t + 1300)])  # Mombasa, ~440 km from Nairobi
    risks = [r for r in device_risks(store, "gw-7", judge) if r.kind == "site"]
    details = " | ".join(r.detail for r in risks)
    assert len(risks) == 2, details
    assert "km from the enrolled site" in details and "temperature 40" in details
    assert all(s.state == "RISK" for s in asset_status(store, "gw-7", judge) if s.asset == "gateway")


def test_readings_inside_the_site_record_or_out_for_less_than_the_hold_time_are_no_risk(lender):
    store, judge = lender
    t = time.time() - 3000
    deliver(store, [fix(-1.3195, 36.8583, t), [Record("temp", value=5.0, unit="Cel", time=t)],
                    [Record("temp", value=9.0, unit="Cel", time=t + 60)],      # out, but for 1 min of a 10 min hold
                    [Record("temp", value=9.5, unit="Cel", time=t + 120)]])
    assert [r for r in device_risks(store, "gw-7", judge) if r.kind == "site"] == []


def test_an_alarm_the_device_raised_for_it_is_not_a_second_risk(lender):
    store, judge = lender
    t = time.time() - 3000
    deliver(store, [[Record("temp", value=40.0, unit="Cel", time=t + 60 * i)] for i in range(20)])
    assert [r.kind for r in device_risks(store, "gw-7", judge, {"alarm.temperature.cold-store"})
            if r.kind == "site"] == []
    assert [r.kind for r in device_risks(store, "gw-7", judge) if r.kind == "site"] == ["site"]
