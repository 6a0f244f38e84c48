"""Utilization: a machine's run time per local day, from its run input, as a signed daily summary."""
import pytest

from agent.assets import Asset, RuleSettings
from agent.rules import DailyUtilization
from tests.kit.rules import BOOT, DAY, HOUR, T0, at, engine, hours, sample
from agent.clock import Instant

PRESS = Asset("press-2", "machine", ("run",))
SENSORS = [("run", "run-hours", 300.0)]
QUIET = RuleSettings(ack_alarm_hours=24 * 365)


def run_day(edges, until, asset=PRESS, tick_every=60.0):
    """`edges`: (t, running) changes of the run input; the agent ticks every minute until `until`."""
    rules = engine([asset], SENSORS, QUIET)
    changes = dict(edges)
    out, t = [], 0.0
    while t <= until:
        if t in changes:
            out += rules.observe([sample("run.running", changes[t], t)], at(t))
        out += rules.tick(at(t))
        t += tick_every
    return [e for e in out if isinstance(e, DailyUtilization)]


CASES = {
    "idle all day: a zero summary": ([], 1.0 * DAY, [("2026-01-05", 0.0, 0)]),
    "one shift 06:00-14:00": ([(6 * HOUR, True), (14 * HOUR, False)], 1.0 * DAY, [("2026-01-05", 8 * HOUR, 1)]),
    "two runs": ([(2 * HOUR, True), (3 * HOUR, False), (5 * HOUR, True), (5.5 * HOUR, False)], 1.0 * DAY,
                 [("2026-01-05", 1.5 * HOUR, 2)]),
    "a night shift is split at midnight": ([(22 * HOUR, True), (DAY + 6 * HOUR, False)], 2.0 * DAY,
                                           [("2026-01-05", 2 * HOUR, 1), ("2026-01-06", 6 * HOUR, 0)]),
    "running through a whole day counts 24 h": ([(0.0, True)], 2.0 * DAY,
                                                 [("2026-01-05", 24 * HOUR, 1), ("2026-01-06", 24 * HOUR, 0)]),
}


@pytest.mark.parametrize("edges, until, expected", CASES.values(), ids=CASES.keys())
def test_run_time_is_summed_per_local_day(edges, until, expected):
    summaries = run_day(edges, until)
    assert [(s.day, round(s.run_s), s.starts) for s in summaries] == [(d, round(r), n) for d, r, n in expected]


def test_the_day_is_the_assets_local_day():
    tokyo = Asset("press-2", "machine", ("run",), access=hours(timezone="Asia/Tokyo"))
    # Tokyo is UTC+9: its day 2026-01-05 ends at 15:00 UTC
    summaries = run_day([(14 * HOUR, True), (16 * HOUR, False)], 1.0 * DAY, asset=tokyo)
    assert [(s.day, round(s.run_s)) for s in summaries] == [("2026-01-05", 3600)]


def test_a_summary_is_three_records_with_units():
    (summary, *_), = [run_day([(6 * HOUR, True), (7 * HOUR, False)], 1.0 * DAY)]
    records = {r.name: r for r in summary.records()}
    assert records["utilization.press-2.day"].string == "2026-01-05"
    assert records["utilization.press-2.run"].value == 3600 and records["utilization.press-2.run"].unit == "s"
    assert records["utilization.press-2.starts"].value == 1 and records["utilization.press-2.starts"].unit == "count"


def test_an_unsynchronized_clock_accrues_run_time_to_the_day_in_progress():
    rules = engine([PRESS], SENSORS, QUIET)
    rules.observe([sample("run.running", True, 20 * HOUR)], at(20 * HOUR))
    # midnight passes while the clock is not trusted: no day end can be placed
    late = rules.tick(Instant(BOOT + DAY + 1 * HOUR, T0 + 3 * DAY, False, "none"))
    assert not [e for e in late if isinstance(e, DailyUtilization)]
    out = rules.observe([sample("run.running", False, DAY + 2 * HOUR)], Instant(BOOT + DAY + 2 * HOUR, T0, False, "none"))
    out += rules.tick(at(DAY + 3 * HOUR))  # trusted again, on the next day
    (summary,) = [e for e in out if isinstance(e, DailyUtilization)]
    assert summary.day == "2026-01-05" and round(summary.run_s) == 6 * 3600


def test_todays_run_time_survives_a_restart():
    rules = engine([PRESS], SENSORS, QUIET)
    rules.tick(at(0.0))
    rules.observe([sample("run.running", True, HOUR)], at(HOUR))
    rules.observe([sample("run.running", False, 3 * HOUR)], at(3 * HOUR))
    saved = rules.snapshot()
    again = engine([PRESS], SENSORS, QUIET, start=4 * HOUR, restore=saved)
    again.observe([sample("run.running", True, 5 * HOUR)], at(5 * HOUR))
    again.observe([sample("run.running", False, 6 * HOUR)], at(6 * HOUR))
    (summary,) = [e for e in again.tick(at(DAY + 60)) if isinstance(e, DailyUtilization)]
    assert (summary.day, round(summary.run_s), summary.starts) == ("2026-01-05", 3 * 3600, 2)
