"""Doors and tamper switches: an opening outside permitted hours is an alarm, inside them an event."""
import pytest

from agent.assets import Asset
from agent.rules import AccessEvent, AlarmEvent
from tests.kit.rules import HOUR, alarms, at, engine, hours, sample

STORE = Asset("cold-store", "stock", ("door", "back-door", "lid"), tamper=("lid",),
              access=hours("mon-fri 07:00-18:00", "sun 22:00-06:00"))
# long intervals: these streams are sparse, and silence is its own test
SENSORS = [(name, "contact", 7 * 24 * HOUR) for name in ("door", "back-door", "lid", "enclosure")]
MON, SAT = 0.0, 5 * 24 * HOUR


def drive(steps):
    """Steps: (t, sensor, open) for a contact change, (t, None, None) for a tick, or (t, sensor, open, False) unsynced."""
    rules = engine([STORE], SENSORS)
    out = []
    for t, sensor, value, *synced in steps:
        instant = at(t, synced=synced[0] if synced else True)
        out += rules.tick(instant) if sensor is None else rules.observe([sample(sensor, value, t)], instant)
    return out


def events(emissions):
    return [(e.name, e.state) for e in emissions if isinstance(e, AccessEvent)]


CASES = {
    "door opened and closed in working hours is two events, no alarm": (
        [(MON + 10 * HOUR, "door", True), (MON + 10.1 * HOUR, "door", False)],
        [], [("event.door.cold-store", "opened"), ("event.door.cold-store", "closed")]),
    "door opened at night raises once, repeated polls add nothing, closing clears": (
        [(MON + 20 * HOUR, "door", True), (MON + 20.02 * HOUR, "door", True), (MON + 20.02 * HOUR, None, None),
         (MON + 20.2 * HOUR, "door", False)],
        [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared")], []),
    "tamper lid lifted on Saturday is a tamper alarm": (
        [(SAT + 11 * HOUR, "lid", True)], [("alarm.tamper.cold-store", "raised")], []),
    "door left open past closing time raises at the first tick after 18:00": (
        [(MON + 17.9 * HOUR, "door", True), (MON + 17.99 * HOUR, None, None), (MON + 18.01 * HOUR, None, None),
         (MON + 18.02 * HOUR, None, None), (MON + 18.5 * HOUR, "door", False)],
        [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared")],
        [("event.door.cold-store", "opened")]),
    "an unsynchronized clock cannot prove permission: opening at 10:00 is an alarm": (
        [(MON + 10 * HOUR, "door", True, False)], [("alarm.door.cold-store", "raised")], []),
    "the gateway's own enclosure switch is a gateway tamper alarm at any hour": (
        [(MON + 10 * HOUR, "enclosure", True), (MON + 10.1 * HOUR, "enclosure", False)],
        [("alarm.tamper.gateway", "raised"), ("alarm.tamper.gateway", "cleared")], []),
    "two doors: one alarm, cleared only when the last door closes": (
        [(MON + 22 * HOUR, "door", True), (MON + 22.1 * HOUR, "back-door", True), (MON + 22.2 * HOUR, "door", False),
         (MON + 22.3 * HOUR, "back-door", False)],
        [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared")], []),
    "the night shift window runs over midnight into Monday 05:00": (
        [(MON + 5 * HOUR, "door", True), (MON + 5.5 * HOUR, "door", False)],
        [], [("event.door.cold-store", "opened"), ("event.door.cold-store", "closed")]),
    "a door closed at start is nothing": (
        [(MON + 1 * HOUR, "door", False), (MON + 2 * HOUR, None, None)], [], []),
    "tamper and door are separate alarms": (
        [(SAT, "door", True), (SAT + 60, "lid", True), (SAT + 120, "door", False)],
        [("alarm.door.cold-store", "raised"), ("alarm.tamper.cold-store", "raised"), ("alarm.door.cold-store", "cleared")],
        []),
}


@pytest.mark.parametrize("steps, expected_alarms, expected_events", CASES.values(), ids=CASES.keys())
def test_contact_openings_become_alarms_outside_permitted_hours_and_events_inside(steps, expected_alarms, expected_events):
    out = drive(steps)
    assert alarms(out, "door", "tamper") == expected_alarms
    assert events(out) == expected_events


def test_access_hours_follow_the_assets_time_zone():
    berlin = Asset("yard", "stock", ("gate",), access=hours("mon-fri 07:00-18:00", timezone="Europe/Berlin"))
    rules = engine([berlin], [("gate", "contact", 7 * 24 * HOUR)])
    # 06:30 UTC in January is 07:30 in Berlin: permitted; 17:30 UTC is 18:30 there: not
    assert events(rules.observe([sample("gate", True, 6.5 * HOUR)], at(6.5 * HOUR))) == [("event.door.yard", "opened")]
    rules.observe([sample("gate", False, 6.6 * HOUR)], at(6.6 * HOUR))
    assert alarms(rules.observe([sample("gate", True, 17.5 * HOUR)], at(17.5 * HOUR))) == [("alarm.door.yard", "raised")]


def test_an_alarm_record_names_kind_asset_severity_and_the_sensor():
    (raised,) = drive([(SAT + 3 * HOUR, "lid", True)])
    assert isinstance(raised, AlarmEvent)
    records = {r.name: r for r in raised.records()}
    assert records["alarm.tamper.cold-store"].string == "raised"
    assert records["alarm.tamper.cold-store.severity"].string == "critical"
    assert records["alarm.tamper.cold-store.sensors"].string == "lid"
    assert "outside permitted hours" in records["alarm.tamper.cold-store.detail"].string
    assert {r.time for r in records.values()} == {at(SAT + 3 * HOUR).wall}


def test_alarm_records_carry_no_time_while_the_clock_is_unsynchronized():
    (raised,) = drive([(MON + 10 * HOUR, "door", True, False)])
    assert all(r.time is None for r in raised.records())
