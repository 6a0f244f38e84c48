"""Movement: leaving the geofence (judged with the fix's HDOP, so noise at the fence raises nothing) and a stationary asset moving."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import Asset, Circle, Polygon, RuleSettings
from tests.kit.rules import DAY, DEPOT, HOUR, alarms, at, engine, fix, hours, noise_trace, offset, sample

FENCE = Circle(DEPOT, 100.0)
TRUCK = Asset("truck-7", "vehicle", ("gnss",), geofence=FENCE, stationary=False)
SENSORS = [("gnss", "gnss", 60.0)]
QUIET = RuleSettings(ack_alarm_hours=24 * 365)


def run_fixes(rules, positions, *, start=0.0, step=60.0, hdop=1.0):
    out = []
    for index, position in enumerate(positions):
        t = start + index * step
        p, h = position if isinstance(position, tuple) else (position, hdop)
        out += rules.observe(fix("gnss", p, t, h), at(t))
    return out


def north(metres):
    return offset(DEPOT, metres, 0.0)


GEOFENCE_CASES = {
    # fixes at distances from the centre (fence radius 100 m); N = 3, 2 sigma, UERE 5 m, HDOP 1 -> margin 10 m
    "driving off: raised on the third confident fix outside": ([50, 130, 200, 400, 800], [("alarm.geofence.truck-7", "raised")]),
    "two fixes out and one back: nothing": ([50, 130, 200, 60, 130, 200, 60], []),
    "parked 5 m beyond the fence is within the noise margin: nothing": ([105] * 20, []),
    "out and back: raised, then cleared after three fixes inside": (
        [300, 300, 300, 90, 80, 95], [("alarm.geofence.truck-7", "raised"), ("alarm.geofence.truck-7", "cleared")]),
    "back to the fence edge but outside at face value does not clear": ([300, 300, 300, 103, 104, 102, 101], [("alarm.geofence.truck-7", "raised")]),
    "staying out raises once, however long": ([500] * 50, [("alarm.geofence.truck-7", "raised")]),
}


@pytest.mark.parametrize("distances, expected", GEOFENCE_CASES.values(), ids=GEOFENCE_CASES.keys())
def test_geofence_exit_needs_n_consecutive_fixes_confidently_outside(distances, expected):
    rules = engine([TRUCK], SENSORS, QUIET)
    assert alarms(run_fixes(rules, [north(d) for d in distances])) == expected


def test_a_poor_hdop_widens_the_margin_and_a_very_poor_fix_is_ignored():
    rules = engine([TRUCK], SENSORS, QUIET)
    # HDOP 4: sigma 20 m, margin 40 m: 130 m from the centre (30 m out) is not confident
    assert alarms(run_fixes(rules, [(north(130), 4.0)] * 5)) == []
    # HDOP 15 is beyond max_hdop 10: ignored, so it neither counts nor breaks the run of confident fixes
    out = run_fixes(rules, [(north(300), 1.0), (north(300), 15.0), (north(300), 1.0), (north(300), 15.0), (north(300), 1.0)],
                    start=10 * 60)
    assert alarms(out) == [("alarm.geofence.truck-7", "raised")]


def test_the_same_fix_polled_again_is_not_new_evidence():
    rules = engine([TRUCK], SENSORS, QUIET)
    outside = fix("gnss", north(400), 0.0)  # one fix; the receiver went quiet and the agent polls it again
    out = []
    for poll in range(5):
        out += rules.observe(outside, at(poll * 60.0))
    assert alarms(out) == []


def test_a_polygon_fence_works_like_a_circle():
    yard = Polygon(tuple(offset(DEPOT, n, e) for n, e in ((-50, -50), (-50, 50), (50, 50), (50, -50))))
    rules = engine([Asset("yard-stock", "stock", ("gnss",), geofence=yard)], SENSORS, QUIET)
    out = run_fixes(rules, [offset(DEPOT, 0, 0), offset(DEPOT, 0, 80), offset(DEPOT, 0, 90), offset(DEPOT, 0, 95)])
    assert alarms(out) == [("alarm.geofence.yard-stock", "raised")]


@pytest.mark.parametrize("seed", range(4))
def test_ten_days_of_realistic_gnss_noise_at_the_fence_raise_no_alarm(seed):
    """A truck parked 2 m inside its fence for ten days, a fix a minute: 14,400 noisy fixes, zero alarms."""
    rules = engine([TRUCK], SENSORS, QUIET)
    parked = 98.0  # metres north of the centre: 2 m inside the fence
    out = []
    for index, (dn, de, hdop) in enumerate(noise_trace(seed, int(10 * DAY / 60))):
        t = index * 60.0
        out += rules.observe(fix("gnss", offset(DEPOT, parked + dn, de), t, hdop), at(t))
    assert alarms(out, "geofence") == []


def test_noise_traces_really_do_cross_the_fence_at_face_value():
    """The test above would be empty if the noise never crossed: check it crosses often."""
    crossings = sum(98.0 + dn > 100.0 for dn, _, _ in noise_trace(0, 14_400))
    assert crossings > 2_000


@settings(max_examples=150)
@given(st.lists(st.tuples(st.floats(-1.0, 1.0), st.floats(0.5, 10.0)), min_size=1, max_size=120))
def test_fixes_never_confidently_outside_never_raise(trace):
    """Whatever the HDOP, positions within 2 sigma beyond the fence are noise: no alarm."""
    rules = engine([TRUCK], SENSORS, QUIET)
    out = []
    for index, (fraction, hdop) in enumerate(trace):
        margin = 2 * hdop * 5.0
        out += rules.observe(fix("gnss", north(100 + fraction * margin * 0.999), index * 60.0, hdop), at(index * 60.0))
    assert alarms(out, "geofence") == []


STORE = Asset("grain", "stock", ("pir", "gnss"), access=hours("mon-fri 07:00-18:00"))
STORE_SENSORS = [("pir", "motion", DAY), ("gnss", "gnss", DAY)]


def test_motion_at_night_raises_and_clears_after_a_quiet_period():
    rules = engine([STORE], STORE_SENSORS, RuleSettings(motion_quiet_s=300, ack_alarm_hours=1000))
    night = 22 * HOUR
    out = rules.observe([sample("pir", True, night)], at(night))
    out += rules.observe([sample("pir", False, night + 5)], at(night + 5))
    out += rules.observe([sample("pir", True, night + 60)], at(night + 60))  # more motion: still one alarm
    out += rules.observe([sample("pir", False, night + 70)], at(night + 70))
    out += rules.tick(at(night + 200))
    out += rules.tick(at(night + 300))   # 240 s since the last motion: not yet
    out += rules.tick(at(night + 361))
    assert alarms(out, "motion") == [("alarm.motion.grain", "raised"), ("alarm.motion.grain", "cleared")]


def test_motion_in_working_hours_is_expected_and_a_vehicle_may_move():
    rules = engine([STORE, TRUCK], STORE_SENSORS, QUIET)
    out = rules.observe([sample("pir", True, 10 * HOUR)], at(10 * HOUR))
    assert alarms(out) == []


def test_a_pir_event_count_rising_between_polls_is_motion():
    rules = engine([STORE], STORE_SENSORS, QUIET)
    out = rules.observe([sample("pir", False, 20 * HOUR), sample("pir.events", 4, 20 * HOUR, "count")], at(20 * HOUR))
    assert alarms(out) == []
    out = rules.observe([sample("pir", False, 21 * HOUR), sample("pir.events", 5, 21 * HOUR, "count")], at(21 * HOUR))
    assert alarms(out) == [("alarm.motion.grain", "raised")]


def test_gnss_speed_on_n_fixes_is_movement_of_a_stationary_asset_but_a_speed_spike_is_not():
    rules = engine([STORE], STORE_SENSORS, QUIET)
    night = 23 * HOUR
    spike = [fix("gnss", DEPOT, night + i * 10, 1.0, speed) for i, speed in enumerate([0.1, 4.0, 0.2, 0.1])]
    out = [e for i, s in enumerate(spike) for e in rules.observe(s, at(night + i * 10))]
    assert alarms(out) == []
    moving = [fix("gnss", DEPOT, night + 100 + i * 10, 1.0, 3.0) for i in range(3)]
    out = [e for i, s in enumerate(moving) for e in rules.observe(s, at(night + 100 + i * 10))]
    assert alarms(out) == [("alarm.motion.grain", "raised")]
