"""Temperature, humidity and weight bands: out of band for the hold time raises; back inside by the hysteresis clears."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import Asset, Band, RuleSettings
from agent.rules import AlarmEvent, alternation_ok
from tests.kit.rules import DAY, alarms, at, engine, sample

FRIDGE = Asset("vaccines", "stock", ("temp", "rh", "scale"),
               temperature=Band(2.0, 8.0, hold_s=600, hysteresis=0.5),
               humidity=Band(None, 70.0, hold_s=1800, hysteresis=5.0),
               weight=Band(950.0, 1100.0, hold_s=120, hysteresis=5.0))
SENSORS = [("temp", "ds18b20", DAY), ("rh", "ds18b20", DAY), ("scale", "ds18b20", DAY)]
QUIET = RuleSettings(ack_alarm_hours=24 * 365)


def feed(rules, series, name="temp", unit="Cel", step=60.0, ticks=False):
    out = []
    for index, value in enumerate(series):
        t = index * step
        out += rules.observe([sample(name, value, t, unit)], at(t))
        if ticks:
            out += rules.tick(at(t + step / 2))
    return out


T = "alarm.temperature.vaccines"
CASES = {
    # one reading a minute; hold 600 s = 10 minutes; clear at <= 7.5 Cel
    "nine minutes warm is not ten: nothing": ([5.0] + [9.0] * 10 + [5.0], []),
    "eleven minutes warm raises once, at the hold time": ([5.0] + [9.0] * 12, [(T, "raised")]),
    "back to 7.8 is inside the band but not past the hysteresis: stays raised": ([9.0] * 12 + [7.8] * 5, [(T, "raised")]),
    "back to 7.4 clears": ([9.0] * 12 + [7.8, 7.4], [(T, "raised"), (T, "cleared")]),
    "too cold counts too": ([1.0] * 12 + [2.6], [(T, "raised"), (T, "cleared")]),
    "a dip back into the band restarts the hold time": ([9.0] * 9 + [7.0] + [9.0] * 9, []),
    "oscillating around 8 after an alarm never clears nor re-raises": (
        [9.0] * 12 + [7.9, 8.1] * 30, [(T, "raised")]),
}


@pytest.mark.parametrize("series, expected", CASES.values(), ids=CASES.keys())
def test_temperature_out_of_band_for_the_hold_time_raises_and_hysteresis_clears(series, expected):
    assert alarms(feed(engine([FRIDGE], SENSORS, QUIET), series)) == expected


def test_the_hold_time_runs_out_on_a_tick_even_when_the_sensor_reports_slowly():
    rules = engine([FRIDGE], SENSORS, QUIET)
    out = rules.observe([sample("scale", 900.0, 0, "kg")], at(0))    # weight band hold: 120 s
    out += rules.tick(at(119))
    assert alarms(out) == []
    out += rules.tick(at(121))
    assert alarms(out) == [("alarm.weight.vaccines", "raised")]
    (raised,) = [e for e in out if isinstance(e, AlarmEvent)]
    assert raised.severity == "critical" and raised.value == 900.0 and raised.unit == "kg"
    assert "below 950" in raised.detail


def test_a_scale_reporting_grams_is_judged_in_kilograms():
    rules = engine([FRIDGE], SENSORS, QUIET)
    out = feed(rules, [1_000_000.0, 1_200_000.0, 1_200_000.0, 1_200_000.0], name="scale", unit="g")
    assert alarms(out) == [("alarm.weight.vaccines", "raised")]


def test_humidity_has_only_a_high_bound():
    rules = engine([FRIDGE], SENSORS, QUIET)
    out = feed(rules, [10.0, 90.0] + [90.0] * 31 + [64.0], name="rh", unit="%RH")
    assert alarms(out) == [("alarm.humidity.vaccines", "raised"), ("alarm.humidity.vaccines", "cleared")]


def test_samples_of_other_units_and_other_assets_sensors_are_not_judged():
    rules = engine([FRIDGE], SENSORS + [("outside", "ds18b20", DAY)], QUIET)
    out = feed(rules, [40.0] * 20, name="outside")        # not bound to the fridge
    out += feed(rules, [40.0] * 20, name="temp", unit="%")  # not a temperature
    assert alarms(out) == []


def test_a_burst_of_samples_at_one_instant_raises_once():
    rules = engine([FRIDGE], SENSORS, QUIET)
    rules.observe([sample("temp", 9.0, 0, "Cel")], at(0))
    burst = [sample("temp", 9.0 + i / 100, 700, "Cel") for i in range(200)]
    out = rules.observe(burst, at(700)) + rules.observe(burst, at(700))
    assert alarms(out) == [(T, "raised")]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0.0, 400.0), st.floats(-5.0, 15.0)), min_size=1, max_size=200),
       st.floats(0.0, 3000.0), st.floats(0.0, 2.5))
def test_under_hysteresis_raises_are_bounded_by_the_hold_time_and_always_alternate(steps, hold, hysteresis):
    """Any stream: per alarm, raised and cleared alternate; raises <= duration / hold + 1."""
    fridge = Asset("vaccines", "stock", ("temp",), temperature=Band(2.0, 8.0, hold_s=hold, hysteresis=hysteresis))
    rules = engine([fridge], [("temp", "ds18b20", DAY)], QUIET)
    t, out = 0.0, []
    for gap, value in steps:
        t += gap
        out += rules.observe([sample("temp", value, t, "Cel")], at(t))
        out += rules.tick(at(t + gap / 2))
    duration = t + steps[-1][0] / 2
    assert alternation_ok(out)
    raises = sum(1 for name, state in alarms(out) if state == "raised")
    if hold > 0:
        assert raises <= duration / hold + 1
    # and with hysteresis, a clear needs a value at least `hysteresis` inside the band
    for event in out:
        if isinstance(event, AlarmEvent) and event.state == "cleared":
            assert 2.0 + hysteresis <= event.value <= 8.0 - hysteresis


@settings(max_examples=100)
@given(st.lists(st.floats(7.6, 8.4), min_size=20, max_size=300))
def test_noise_within_the_hysteresis_band_after_an_alarm_neither_clears_nor_re_raises(values):
    rules = engine([FRIDGE], SENSORS, QUIET)
    out = feed(rules, [9.0] * 12 + values)
    assert alarms(out) == [(T, "raised")]
