"""End to end: simulated sensors → the agent's rules → the uplink → a real lender, while a 50,000-reading backlog drains.

Opening the door out of hours, driving the GNSS out of its fence and silencing
the temperature probe each give exactly one alarm at the lender, and each
alarm overtakes the queue: the lender stores it while envelopes of the
day-sized backlog are still to come, and before any reading newer than the
backlog. Then `pledgewatch lender status` must show that picture. Order, not
speed: the alarm's end-to-end latency is a figure in the report of HIL
scenario (b), hil/scenarios/test_outage_and_drain.py.
"""
import asyncio
import datetime as dt
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

from gpiozero.pins.mock import MockFactory

from agent.assets import Asset, Circle, LatLon, RuleSettings
from agent.clock import TrustedClock
from agent.recorder import SEQ_BLOCK
from agent.rules import SensorSpec
from drivers.gnss import GnssConfig, GnssReceiver
from drivers.gpio import ContactConfig, ContactSensor
from drivers.onewire import DS18B20, DS18B20Config
from hil.sim.nmea import NmeaFeed
from hil.sim.onewire import OneWireTree
from lender.enrollment import registration
from lender.evidence.store import SQLiteStore
from tests.kit.rules import offset
from telemetry.envelope import seal
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.agent import build_agent

DEVICE = "gw-e2e-1"
IDENTITY = Identity(bytes([11]) * 32)
BACKLOG = 50_000
DEPOT = LatLon(52.5200, 13.4050)
INTERVAL = 0.25  # the door and the GNSS are polled every 0.25 s: three fixes outside the fence take 0.75 s
PROBE_INTERVAL = 1.0  # a DS18B20 conversion takes 750 ms: polled every second
SILENCE_FACTOR = 3
EXPECTED = {"alarm.door.cold-store", "alarm.geofence.truck-7", "alarm.silence.cold-store"}
SPOOL = {"synchronous": "NORMAL"}


def start_lender(data):
    with SQLiteStore.open(data) as store:
        registration.register(store, data, DEVICE, IDENTITY.public_key, with_oscore=False, asset="loan 2026-117")
    lender = subprocess.Popen(
        [sys.executable, "-m", "pledgewatch", "lender", "serve", "--data", str(data), "--bind", "127.0.0.1:0", "--insecure"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = lender.stdout.readline()
    match = re.search(r"coap://127\.0\.0\.1:(\d+)/t", line)
    assert match, (line, lender.stderr.read() if lender.poll() is not None else "")
    return lender, int(match.group(1))


def prefill(directory):
    """A day offline: 50,000 routine readings already signed and spooled, as a previous run left them."""
    agent = build_agent(directory, device=DEVICE, identity=IDENTITY, spool=SPOOL, recording=True)
    recorder, spool, state = agent.recorder, agent.spool, agent.state
    state.reserve_seqs(recorder.seq + BACKLOG + SEQ_BLOCK)
    seq, prev, batch, t0 = recorder.seq, recorder.prev, [], time.time() - 86_400
    for index in range(BACKLOG):
        seq += 1
        envelope = seal(IDENTITY, device=DEVICE, boot=recorder.boot, seq=seq, prev=prev, records=[
            Record("temp", value=4.0 + (index % 40) / 8, unit="Cel", time=t0 + index),
            Record("door", boolean=False, time=t0 + index)])
        prev = envelope.digest
        batch.append(envelope)
        if len(batch) == 2_000:
            spool.append_many(batch)
            batch = []
    state.mark_clean_shutdown()
    spool.close()
    state.close()
    return seq


class LenderView:
    """Reads the lender's store while it runs (SQLite WAL: readers never block its ingest)."""

    def __init__(self, data) -> None:
        self.conn = sqlite3.connect(f"file:{data / 'lender.sqlite3'}?mode=ro", uri=True, timeout=10)

    def stored(self) -> int:
        return self.conn.execute("SELECT count(*) FROM envelopes WHERE device = ?", (DEVICE,)).fetchone()[0]

    def alarms(self, above_seq: int) -> list[tuple[str, str, int]]:
        """(name, state, seq) of alarm events past the backlog, in seq order."""
        return self.conn.execute(
            "SELECT name, string, seq FROM records WHERE device = ? AND seq > ? AND name GLOB 'alarm.*'"
            " AND string IN ('raised', 'cleared') ORDER BY seq", (DEVICE, above_seq)).fetchall()

    def overtaken(self, seq: int, last_backlog_seq: int) -> tuple[int, int]:
        """Around envelope `seq`, in the order the lender stored them (its row ids, not clocks): how many
        backlog envelopes it stored after it, and how many readings newer than the backlog before it."""
        (position,) = self.conn.execute("SELECT id FROM envelopes WHERE device = ? AND seq = ?", (DEVICE, seq)).fetchone()
        return self.conn.execute(
            "SELECT coalesce(sum(seq <= ?2 AND id > ?3), 0), coalesce(sum(seq > ?2 AND alarm = 0 AND id < ?3), 0)"
            " FROM envelopes WHERE device = ?1", (DEVICE, last_backlog_seq, position)).fetchone()


def test_door_gnss_and_silence_alarms_overtake_a_50000_reading_backlog_at_the_lender(tmp_path):
    data = tmp_path / "lender"
    lender, port = start_lender(data)
    feed = NmeaFeed(latitude=DEPOT.lat, longitude=DEPOT.lon, utc=lambda: dt.datetime.now(dt.timezone.utc))
    try:
        last_backlog_seq = prefill(tmp_path)

        tree = OneWireTree(tmp_path / "w1")
        probe = tree.add_ds18b20(celsius=4.5)
        factory = MockFactory()
        feed.start(rate_hz=10)
        sensors = [
            DS18B20(DS18B20Config("temp", probe.device_id, base_dir=tree.devices_dir, interval_s=PROBE_INTERVAL)),
            ContactSensor(ContactConfig("door", 17, settle_s=0.02, interval_s=INTERVAL), pin_factory=factory),
            GnssReceiver(GnssConfig(feed.path, name="gnss", interval_s=INTERVAL, max_age_s=2.0)),
        ]
        factory.pin(17).drive_low()  # the cold-store door is shut (the switch pulls the pin to ground)
        time.sleep(0.1)  # longer than settle_s: shut is the debounced state
        assert not sensors[1].is_open
        assets = [Asset("cold-store", "stock", ("temp", "door")),  # no access hours: any opening is an alarm
                  Asset("truck-7", "vehicle", ("gnss",), geofence=Circle(DEPOT, 200.0), stationary=False)]
        # the rules expect a sample at least every second from each (silent after 3 s): the door and the GNSS are
        # polled faster for the geofence's sake, and a loaded test machine stalling 1 s is not silence
        specs = [SensorSpec(s.name, kind, max(s.interval, 1.0)) for s, kind in zip(sensors, ("ds18b20", "contact", "gnss"))]
        clock = TrustedClock(kernel_synced=lambda: False)  # no NTP here: the GNSS receiver's UTC is the time source
        view = LenderView(data)

        async def scenario():
            agent = build_agent(tmp_path, device=DEVICE, identity=IDENTITY, sensors=sensors, spool=SPOOL,
                                lender=f"coap://127.0.0.1:{port}",
                                uplink={"batch_interval": 1.0, "max_batch_bytes": 30_000, "max_batch_count": 500},
                                assets=assets, specs=specs, settings=RuleSettings(silence_factor=SILENCE_FACTOR, fence_fixes=3),
                                trusted_clock=clock, rule_tick=0.1)
            spool = agent.spool
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await asyncio.wait_for(agent.started.wait(), 10)

            async def until(predicate, timeout):
                deadline = time.monotonic() + timeout
                while not predicate():
                    assert time.monotonic() < deadline, "timed out"
                    assert not task.done(), task
                    await asyncio.sleep(0.05)

            await until(lambda: view.stored() > 2_000 and clock.now().synced, 30)  # draining, and GNSS gave the time
            await asyncio.sleep(1.2)  # a probe reading with a trusted time

            async def event(act, after):
                await asyncio.sleep(after)
                act()

            far = offset(DEPOT, 1_000.0, 0.0)
            await asyncio.gather(  # the slowest to become an alarm (silence: 3 s) first, all while the backlog drains
                event(probe.unplug, 0.0),
                event(lambda: factory.pin(17).drive_high(), 0.7),
                event(lambda: feed.move_to(far.lat, far.lon), 1.4),
            )
            await until(lambda: {n for n, s, _ in view.alarms(last_backlog_seq) if s == "raised"} >= EXPECTED, 45)
            await until(lambda: len(spool) == 0 or view.stored() >= last_backlog_seq + 100, 120)  # drained
            await asyncio.sleep(1.0)
            status = subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "status", "--data", str(data), "--json"],
                                    capture_output=True, text=True, timeout=60)
            stop.set()
            await asyncio.wait_for(task, 10)
            return status

        status = asyncio.run(scenario())
        events = view.alarms(last_backlog_seq)
        overtaken = {name: view.overtaken(seq, last_backlog_seq) for name, _, seq in events}
    finally:
        feed.close()
        lender.send_signal(signal.SIGTERM)
        lender.communicate(timeout=20)

    # each event: exactly one alarm, and it overtook the queue: stored while backlog envelopes were still to
    # come, and before every reading sampled after the backlog (those wait behind it; the alarm does not)
    assert sorted((n, s) for n, s, _ in events) == sorted((name, "raised") for name in EXPECTED), events
    for name, (backlog_after, newer_before) in overtaken.items():
        assert backlog_after > 0, f"{name}: stored only once the whole backlog had arrived"
        assert newer_before == 0, f"{name}: {newer_before} readings newer than the backlog were stored before it"
    # and `lender status` tells the lender exactly that
    assert status.returncode == 0, status.stderr
    by_asset = {s["asset"]: s for s in json.loads(status.stdout)}
    assert set(by_asset) == {"cold-store", "truck-7", "gateway"}
    cold, truck, gateway = by_asset["cold-store"], by_asset["truck-7"], by_asset["gateway"]
    assert cold["state"] == "ALARM" and {a["name"] for a in cold["open_alarms"]} == {"alarm.door.cold-store",
                                                                                     "alarm.silence.cold-store"}
    assert cold["sensors"] == ["temp", "door"] and cold["last_reading"]["name"] == "door"
    assert cold["last_reading"]["value"] is True  # the door is still open, and the probe says nothing any more
    assert truck["state"] == "ALARM" and [a["name"] for a in truck["open_alarms"]] == ["alarm.geofence.truck-7"]
    assert truck["last_reading"]["name"].startswith("gnss.")
    assert all(a["clock_source"] == "gnss" and a["time"] is not None for a in cold["open_alarms"] + truck["open_alarms"]), cold["open_alarms"] + truck["open_alarms"]
    assert gateway["state"] == "OK" and gateway["open_alarms"] == []
    for asset in (cold, truck, gateway):
        assert asset["unexplained_gaps"] == [] and time.time() - asset["last_seen"] < 30
