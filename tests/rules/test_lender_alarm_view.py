"""The lender's view: alarms raised and cleared per asset, and each asset's status, from the verified evidence store."""
import json
import subprocess
import sys

from agent.assets import Asset
from agent.clock import Instant
from agent.rules import RulesEngine, SensorSpec
from lender.enrollment import registration
from lender.evidence.alarms import alarm_events, asset_status, open_alarms
from lender.evidence.store import SQLiteStore
from tests.kit.rules import BOOT, HOUR, T0, at, sample
from telemetry.envelope import GENESIS, Gap, seal
from telemetry.identity import Identity
from telemetry.senml import Record

DEVICE = "gw-0042"
KEY = Identity(bytes([3]) * 32)
STORE = Asset("cold-store", "stock", ("temp", "door"))
TRUCK = Asset("truck-7", "vehicle", ("gnss",), stationary=False)


class Gateway:
    """Seals what an agent would: readings and the rules' emissions, chained, with clock statements."""

    def __init__(self) -> None:
        self.seq, self.prev, self.sealed = 0, GENESIS, []
        specs = [SensorSpec("temp", "ds18b20", 60), SensorSpec("door", "contact", 60), SensorSpec("gnss", "gnss", 60)]
        self.rules = RulesEngine([STORE, TRUCK], specs, start=at(0))

    def seal(self, records, instant: Instant, gap=None):
        self.seq += 1
        envelope = seal(KEY, device=DEVICE, boot=1, seq=self.seq, prev=self.prev, records=records, gap=gap,
                        clock=instant.statement())
        self.prev = envelope.digest
        self.sealed.append(envelope)
        return envelope

    def reading(self, samples, instant):
        self.seal([Record(s.name, value=s.value, unit=s.unit, time=s.time if instant.synced else None)
                   if not isinstance(s.value, bool) else Record(s.name, boolean=s.value, time=s.time if instant.synced else None)
                   for s in samples], instant)
        for emission in self.rules.observe(samples, instant):
            self.seal(emission.records(), instant)

    def tick(self, instant):
        for emission in self.rules.tick(instant):
            self.seal(emission.records(), instant)


def scenario():
    gw = Gateway()
    gw.seal(gw.rules.manifest(at(0)).records(), at(0))
    night = 20 * HOUR
    gw.rules.lender_contact(at(night - 60))  # the lender acked just before: no connectivity alarm
    for minute in range(5):
        t = night + minute * 60
        gw.reading([sample("temp", 4.5, t, "Cel"), sample("door", False, t)], at(t))
        gw.reading([sample("gnss.lat", 52.52, t, "lat"), sample("gnss.lon", 13.405, t, "lon")], at(t))
        gw.tick(at(t))
    gw.reading([sample("door", True, night + 330)], at(night + 330))                 # raised
    gw.reading([sample("door", False, night + 400)], at(night + 400))                # cleared
    unsynced = Instant(BOOT + night + 500, T0 - 86400 * 300, False, "none")
    gw.reading([sample("door", True, night + 500)], unsynced)                        # raised, clock unsynchronized
    for minute in range(6, 12):                                                      # gnss goes silent
        t = night + minute * 60
        gw.reading([sample("temp", 4.5 + minute / 10, t, "Cel")], at(t))
        gw.tick(at(t))
    return gw


def load(store, envelopes, order=None):
    for index in (order or range(len(envelopes))):
        store.insert_envelope(envelopes[index], received_at=T0 + 100_000 + index, peer="127.0.0.1:5683")


def test_alarms_are_grouped_per_envelope_and_open_ones_follow_the_devices_seq_order(tmp_path):
    gw = scenario()
    with SQLiteStore.open(tmp_path / "lender") as store:
        registration.register(store, tmp_path / "lender", DEVICE, KEY.public_key, with_oscore=False)
        load(store, gw.sealed, order=list(reversed(range(len(gw.sealed)))))  # alarms may arrive in any order
        events = alarm_events(store)
        names = [(e.name, e.state) for e in events]
        assert names == [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared"),
                         ("alarm.door.cold-store", "raised"), ("alarm.silence.truck-7", "raised")]
        first, _, unsynced, silence = events
        assert first.severity == "major" and first.sensors == ("door",) and first.time == T0 + 20 * HOUR + 330
        assert first.clock_source == "ntp" and "outside permitted hours" in first.detail
        assert unsynced.time is None and unsynced.clock_source == "none" and unsynced.uptime_s == BOOT + 20 * HOUR + 500
        assert silence.unit == "s" and silence.value > 180 and silence.sensors == ("gnss",)
        assert set(open_alarms(events)) == {(DEVICE, "alarm.door.cold-store"), (DEVICE, "alarm.silence.truck-7")}
        assert [e.asset for e in alarm_events(store, asset="truck-7")] == ["truck-7"]


def test_status_answers_is_each_asset_ok_and_shows_the_gaps(tmp_path):
    gw = scenario()
    gw.seal([], at(30 * HOUR), gap=Gap("overflow", first=3, last=4, count=2))
    with SQLiteStore.open(tmp_path / "lender") as store:
        registration.register(store, tmp_path / "lender", DEVICE, KEY.public_key, with_oscore=False)
        missing = {3, 4, 9}  # 3..4 explained by the signed gap record, 9 not
        load(store, gw.sealed, order=[i for i in range(len(gw.sealed)) if i + 1 not in missing])
        by_asset = {s.asset: s for s in asset_status(store)}
    assert set(by_asset) == {"cold-store", "truck-7", "gateway"}
    cold, truck, gateway = by_asset["cold-store"], by_asset["truck-7"], by_asset["gateway"]
    assert cold.kind == "stock" and cold.sensors == ("temp", "door") and cold.state == "ALARM"
    assert [a.name for a in cold.open_alarms] == ["alarm.door.cold-store"]
    assert cold.last_reading.name == "temp" and cold.last_reading.value == 4.5 + 11 / 10
    assert truck.state == "ALARM" and truck.last_reading.name in ("gnss.lat", "gnss.lon")
    assert gateway.open_alarms == () and gateway.state == "GAPS" and gateway.unexplained_gaps == ((9, 9),)
    assert cold.explained_gaps == 1 and cold.last_seq == gw.seq and cold.last_seen == T0 + 100_000 + len(gw.sealed) - 1


def test_the_lender_alarms_and_status_commands_print_the_same_picture(tmp_path):
    gw = scenario()
    data = tmp_path / "lender"
    with SQLiteStore.open(data) as store:
        registration.register(store, data, DEVICE, KEY.public_key, with_oscore=False)
        load(store, gw.sealed)

    def cli(*args):
        # the scenario is a recorded past: how long it has been silent since is not this test's point
        patience = ("--missed-heartbeats", "1e9") if args[0] in ("alarms", "status") else ()
        done = subprocess.run([sys.executable, "-m", "pledgewatch", "lender", *args, *patience, "--data", str(data)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = [json.loads(line) for line in cli("alarms", "--json").splitlines()]
    assert [(a["name"], a["state"]) for a in listed][:2] == [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared")]
    opened = [json.loads(line)["name"] for line in cli("alarms", "--open", "--json").splitlines()]
    assert opened == ["alarm.door.cold-store", "alarm.silence.truck-7"]
    status = {s["asset"]: s for s in json.loads(cli("status", "--json"))}
    assert status["cold-store"]["state"] == "ALARM" and status["gateway"]["state"] == "OK"
    text = cli("status")
    assert "cold-store (stock, gw-0042): ALARM" in text and "OPEN ALARM    alarm.door.cold-store (major)" in text
    assert "unsynchronized clock" in cli("alarms", "--asset", "cold-store")
