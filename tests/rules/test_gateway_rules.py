"""The gateway's own alarms (hours without a lender ack, a swapped SIM or modem), and alarms across a restart."""
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import Asset, Band, Circle, RuleSettings
from agent.rules import AlarmEvent, Manifest, alternation_ok
from tests.kit.rules import DAY, DEPOT, HOUR, alarms, at, engine, fix, hours, offset, sample

SETTINGS = RuleSettings(ack_alarm_hours=6)
C = "alarm.connectivity.gateway"


def test_six_hours_without_a_lender_ack_raise_connectivity_and_the_next_ack_clears_it():
    rules = engine([], [], SETTINGS)
    out = rules.lender_contact(at(0))
    out += rules.tick(at(5.9 * HOUR))
    assert alarms(out) == []
    out += rules.tick(at(6.01 * HOUR)) + rules.tick(at(9 * HOUR))
    assert alarms(out) == [(C, "raised")]
    (raised,) = [e for e in out if isinstance(e, AlarmEvent)]
    assert raised.unit == "h" and 6.0 < raised.value < 6.1 and raised.severity == "minor"
    out = rules.lender_contact(at(10 * HOUR)) + rules.lender_contact(at(10.1 * HOUR))
    assert alarms(out) == [(C, "cleared")]


def test_acks_keep_connectivity_quiet():
    rules = engine([], [], SETTINGS)
    out = []
    for hour in range(48):
        out += rules.lender_contact(at(hour * HOUR)) + rules.tick(at(hour * HOUR + 1800))
    assert alarms(out) == []


def test_a_swapped_sim_raises_until_the_enrolled_one_is_back():
    rules = engine([], [], SETTINGS)
    out = rules.modem_identity(at(0), imei="356938035643809", iccid="8944500102198304826")
    assert out == [] and rules.modem == {"imei": "356938035643809", "iccid": "8944500102198304826"}
    out = rules.modem_identity(at(60), imei="356938035643809", iccid="8949226000001234567")
    out += rules.modem_identity(at(120), imei="356938035643809", iccid="8949226000001234567")
    assert alarms(out) == [("alarm.sim.gateway", "raised")]
    assert "8944500102198304826 replaced by 8949226000001234567" in out[0].detail and out[0].severity == "critical"
    out = rules.modem_identity(at(180), imei="356938035643809", iccid="8944500102198304826")
    assert alarms(out) == [("alarm.sim.gateway", "cleared")]


def test_a_swapped_modem_raises_and_a_technician_can_accept_the_new_one():
    rules = engine([], [], SETTINGS, restore={"modem": {"imei": "356938035643809", "iccid": "8944500102198304826"}})
    out = rules.modem_identity(at(0), imei="490154203237518", iccid="8944500102198304826")
    assert alarms(out) == [("alarm.modem.gateway", "raised")]
    out = rules.accept_modem_identity(at(60), imei="490154203237518")
    out += rules.modem_identity(at(120), imei="490154203237518", iccid="8944500102198304826")
    assert alarms(out) == [("alarm.modem.gateway", "cleared")] and rules.modem["imei"] == "490154203237518"


STORE = Asset("cold-store", "stock", ("temp", "door", "gnss"), access=hours("mon-fri 07:00-18:00"),
              temperature=Band(2, 8, hold_s=60, hysteresis=0.5), geofence=Circle(DEPOT, 100))
SENSORS = [("temp", "ds18b20", 60.0), ("door", "contact", 60.0), ("gnss", "gnss", 60.0)]


def test_an_alarm_raised_before_a_restart_is_not_raised_again_after_it():
    rules = engine([STORE], SENSORS, SETTINGS)
    night = 20 * HOUR
    out = rules.observe([sample("door", True, night)], at(night))
    out += rules.observe([sample("temp", 12.0, night, "Cel")], at(night))
    out += rules.observe([sample("temp", 12.0, night + 61, "Cel")], at(night + 61))
    out += rules.lender_contact(at(night + 200))
    out += rules.tick(at(night + 300))  # gnss never reported: silent
    assert set(alarms(out, "door", "temperature", "silence")) == {("alarm.door.cold-store", "raised"), ("alarm.temperature.cold-store", "raised"),
                                ("alarm.silence.cold-store", "raised")}
    saved = rules.snapshot()
    assert set(saved["raised"]) == {"alarm.door.cold-store", "alarm.temperature.cold-store", "alarm.silence.cold-store"}
    # the agent restarts: same conditions hold, nothing is raised twice
    again = engine([STORE], SENSORS, SETTINGS, start=night + 400, restore=saved)
    out = again.observe([sample("door", True, night + 400), sample("temp", 12.0, night + 400, "Cel")], at(night + 400))
    out += again.observe([sample("temp", 12.0, night + 500, "Cel")], at(night + 500))
    out += again.observe([sample("door", True, night + 460)], at(night + 460))
    out += again.tick(at(night + 700))
    assert alarms(out) == []
    # until each condition ends: then exactly one clear each
    out = again.observe([sample("door", False, night + 800), sample("temp", 5.0, night + 800, "Cel")], at(night + 800))
    out += again.observe(fix("gnss", offset(DEPOT, 0, 0), night + 800), at(night + 800))
    assert set(alarms(out, "door", "temperature", "silence")) == {("alarm.door.cold-store", "cleared"), ("alarm.temperature.cold-store", "cleared"),
                                ("alarm.silence.cold-store", "cleared")}


def test_the_manifest_tells_the_lender_which_sensors_watch_which_asset():
    manifest = engine([STORE], SENSORS, SETTINGS).manifest(at(0))
    assert isinstance(manifest, Manifest) and not manifest.alarm
    records = {r.name: r.string for r in manifest.records()}
    assert records == {"asset.cold-store.kind": "stock", "asset.cold-store.sensors": "temp,door,gnss"}


# --- any stream, any rule: the latches hold ---------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("door"), st.booleans()),
    st.tuples(st.just("temp"), st.floats(-10, 20)),
    st.tuples(st.just("gnss"), st.tuples(st.floats(-300, 300), st.floats(0.5, 12))),
    st.tuples(st.just("tick"), st.none()),
    st.tuples(st.just("ack"), st.none()),
    st.tuples(st.just("sim"), st.sampled_from(["8944500102198304826", "8949226000001234567"])),
    st.tuples(st.just("restart"), st.none()),
)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0, 4 * HOUR), step), max_size=120), st.booleans())
def test_no_alarm_is_ever_raised_twice_without_a_clear_even_across_restarts(steps, synced):
    rules = engine([STORE], SENSORS, SETTINGS)
    t, out = 0.0, []
    for gap, (kind, value) in steps:
        t += gap
        now = at(t, synced=synced or kind == "tick")
        if kind == "door":
            out += rules.observe([sample("door", value, t)], now)
        elif kind == "temp":
            out += rules.observe([sample("temp", value, t, "Cel")], now)
        elif kind == "gnss":
            out += rules.observe(fix("gnss", offset(DEPOT, value[0], 0), t, value[1]), now)
        elif kind == "tick":
            out += rules.tick(now)
        elif kind == "ack":
            out += rules.lender_contact(now)
        elif kind == "sim":
            out += rules.modem_identity(now, iccid=value)
        else:
            rules = engine([STORE], SENSORS, SETTINGS, start=t, restore=rules.snapshot())
    assert alternation_ok(out)
    final = {}
    for name, state in alarms(out):
        final[name] = state
    # what the lender would conclude from the records is what the engine holds, restarts included
    assert {name for name, state in final.items() if state == "raised"} == rules.raised


def test_a_day_of_mixed_bursty_streams_keeps_alternation():
    rules = engine([STORE], SENSORS, SETTINGS)
    out = []
    for minute in range(int(DAY / 60)):
        t = minute * 60.0
        burst = 1 + (minute % 7 == 0) * 20
        for _ in range(burst):
            out += rules.observe([sample("temp", 5.0 + 4 * ((minute // 90) % 2), t, "Cel"),
                                  sample("door", minute % 240 < 3, t)], at(t))
        out += rules.observe(fix("gnss", offset(DEPOT, 95 + 10 * ((minute // 45) % 2), 0), t), at(t))
        out += rules.tick(at(t + 30))
    assert alternation_ok(out)
    assert alarms(out, "temperature") and alarms(out, "door")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=30), inner, max_size=4),
                           max_leaves=20)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["raised", "modem", "usage", "other"]), json_values, max_size=4),
       st.sampled_from(["alarm.door.cold-store", "alarm.silence.cold-store", "alarm.motion.cold-store", "alarm.x.y"]))
def test_a_saved_state_of_any_shape_never_stops_the_agent_from_starting(saved, name):
    if isinstance(saved.get("raised"), dict):
        saved["raised"][name] = saved.get("other")
    rules = engine([STORE], SENSORS, SETTINGS, restore=saved)
    out = rules.tick(at(10)) + rules.observe([sample("door", False, 11)], at(11))
    restored = set(saved["raised"]) if isinstance(saved.get("raised"), dict) else set()
    assert all(state == "raised" or name in restored for name, state in alarms(out))  # only a restored alarm clears
