"""Silence: no sample from a sensor within k x its interval raises an alarm that clears when samples return.

Durations run on the monotonic clock, so wall-clock jumps (an NTP step, a
dead RTC battery) neither fake silence nor hide it.
"""
import pytest

from agent.assets import Asset, RuleSettings
from agent.rules import AlarmEvent
from tests.kit.rules import BOOT, T0, alarms, at, engine, sample
from agent.clock import Instant

STORE = Asset("cold-store", "stock", ("temp", "door"))
SENSORS = [("temp", "ds18b20", 60.0), ("door", "contact", 60.0), ("enclosure", "contact", 600.0)]
QUIET = RuleSettings(ack_alarm_hours=24 * 365, silence_factor=3)
S = "alarm.silence.cold-store"


def stream(steps, sensors=SENSORS):
    """Steps: (t, [sensor names that report]) — each step also ticks."""
    rules = engine([STORE], sensors, QUIET)
    out = []
    for t, reporting in steps:
        out += rules.observe([sample(name, 5.0 if name == "temp" else False, t, "Cel" if name == "temp" else None)
                              for name in reporting], at(t))
        out += rules.tick(at(t))
    return out


def every(period, until, names, start=0.0):
    steps, t = [], start
    while t <= until:
        steps.append((t, list(names)))
        t += period
    return steps


CASES = {
    "regular samples: nothing": (every(60, 3600, ["temp", "door"]), []),
    "temp stops at 600 s: raised after 3 x 60 s, only once": (
        every(60, 600, ["temp", "door"]) + every(60, 1800, ["door"], start=660), [(S, "raised")]),
    "temp returns: cleared": (
        every(60, 600, ["temp", "door"]) + every(60, 1200, ["door"], start=660) + every(60, 1500, ["temp", "door"], start=1260),
        [(S, "raised"), (S, "cleared")]),
    "a late sample within k x interval is not silence": (
        [(0, ["temp", "door"]), (170, ["temp", "door"]), (340, ["temp", "door"]), (500, ["temp", "door"])], []),
    "two sensors silent: one alarm, cleared when the last returns": (
        [(0, ["temp", "door"]), (200, []), (250, ["temp"]), (400, ["temp"]), (401, ["temp", "door"])],
        [(S, "raised"), (S, "cleared")]),
    "a sensor that never reports is silent k x interval after start": ([(0, ["door"]), (120, ["door"]), (181, ["door"])], [(S, "raised")]),
}


@pytest.mark.parametrize("steps, expected", CASES.values(), ids=CASES.keys())
def test_a_silent_sensor_raises_once_and_clears_when_it_reports_again(steps, expected):
    assert [a for a in alarms(stream(steps), "silence") if a[0] == S] == expected


def test_an_unbound_sensor_going_silent_is_a_gateway_alarm_with_how_long():
    out = stream(every(60, 2400, ["temp", "door"]))
    (raised,) = [e for e in out if isinstance(e, AlarmEvent) and e.kind == "silence"]
    assert raised.name == "alarm.silence.gateway" and raised.sensors == ("enclosure",)
    assert raised.unit == "s" and raised.value > 1800


def test_a_burst_after_silence_clears_once():
    rules = engine([STORE], SENSORS, QUIET)
    out = rules.tick(at(1000))
    burst = [sample("temp", 5.0 + i / 10, 1001, "Cel") for i in range(50)] + [sample("door", False, 1001)] * 20
    out += rules.observe(burst, at(1001)) + rules.observe(burst, at(1001))
    assert [(n, s) for n, s in alarms(out, "silence") if n == S] == [(S, "raised"), (S, "cleared")]


@pytest.mark.parametrize("jump", [-3 * 3600.0, -1.0, +26 * 3600.0, +365 * 86400.0])
def test_a_wall_clock_jump_neither_fakes_nor_hides_silence(jump):
    """The wall clock steps by `jump` half way; samples keep coming every 60 s of monotonic time."""
    rules = engine([STORE], SENSORS[:2], QUIET)
    out = []
    for step in range(60):
        mono = step * 60.0
        wall = T0 + mono + (jump if step >= 30 else 0.0)
        instant = Instant(BOOT + mono, wall, True, "ntp")
        out += rules.observe([sample("temp", 5.0, mono), sample("door", False, mono)], instant)
        out += rules.tick(instant)
    assert alarms(out) == []
    # and silence after the jump is still measured in monotonic seconds
    out = rules.tick(Instant(BOOT + 59 * 60.0 + 179.0, T0 - 10 * 86400.0, True, "ntp"))
    assert alarms(out) == []
    out = rules.tick(Instant(BOOT + 59 * 60.0 + 181.0, T0 - 10 * 86400.0, True, "ntp"))
    assert alarms(out) == [(S, "raised")]
