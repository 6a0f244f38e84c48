"""The asset model in agent.toml: [[assets]] and [rules], validated with errors a technician can act on."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import (AccessHours, Band, Circle, LatLon, Polygon, RuleSettings, distance_m, parse_assets, parse_rules,
                          parse_window)
from agent.config import parse
from agent.exc import ConfigError
from tests.kit.rules import DEPOT, offset

PATH = __import__("pathlib").Path("/etc/pledgewatch/agent.toml")
HEAD = """
[device]
id = "gw-0042"
key_file = "device.key"
state_dir = "state"

[uplink]
insecure = true

[[sensors]]
kind = "ds18b20"
name = "temp"
device_id = "28-000005e2fdc3"

[[sensors]]
kind = "contact"
name = "door"
pin = 17

[[sensors]]
kind = "contact"
name = "lid"
pin = 27

[[sensors]]
kind = "gnss"
url = "/dev/ttyUSB1"
"""

GOOD = HEAD + """
[rules]
timezone = "Europe/Berlin"
fence_fixes = 4

[[assets]]
name = "cold-store"
kind = "stock"
sensors = ["temp", "door", "lid"]
tamper = ["lid"]
access = ["mon-fri 07:00-18:00", "sat 08:00-12:00"]
temperature = { low = 2.0, high = 8.0, hold_s = 600, hysteresis = 0.5 }
weight = { low = 950, high = 1100 }

[[assets]]
name = "truck-7"
kind = "vehicle"
sensors = ["gnss"]
geofence = { lat = 52.52, lon = 13.405, radius_m = 150 }

[[assets]]
name = "yard"
kind = "stock"
sensors = ["gnss"]
timezone = "Asia/Tokyo"
geofence = { polygon = [[52.52, 13.40], [52.53, 13.40], [52.53, 13.41]] }
"""


def test_a_site_with_stock_a_vehicle_and_a_yard_parses_into_frozen_assets():
    config = parse(GOOD, PATH)
    store, truck, yard = config.assets
    assert config.rules.timezone == "Europe/Berlin" and config.rules.fence_fixes == 4
    assert store.sensors == ("temp", "door", "lid") and store.tamper == ("lid",) and store.stationary
    assert store.temperature == Band(2.0, 8.0, 600, 0.5) and store.weight.hold_s == 300.0
    assert store.access.timezone == "Europe/Berlin" and len(store.access.windows) == 2
    assert isinstance(truck.geofence, Circle) and not truck.stationary  # vehicles move unless declared otherwise
    assert isinstance(yard.geofence, Polygon) and yard.access.timezone == "Asia/Tokyo" and yard.access.windows == ()
    with pytest.raises(AttributeError):
        store.name = "other"


def test_a_config_without_assets_still_parses():
    config = parse(HEAD, PATH)
    assert config.assets == () and config.rules == RuleSettings()


def asset(body: str) -> str:
    return HEAD + '\n[[assets]]\nname = "cold-store"\nkind = "stock"\nsensors = ["temp", "door"]\n' + body


BAD = {
    "unknown kind": (HEAD + '[[assets]]\nname = "x"\nkind = "cattle"\nsensors = []\n', "kind 'cattle' is unknown; allowed: stock, vehicle, machine"),
    "missing sensors": (HEAD + '[[assets]]\nname = "x"\nkind = "stock"\n', "needs key 'sensors'"),
    "an unconfigured sensor": (asset('').replace('"door"]', '"door", "scale"]'), "sensors scale are not configured; allowed: the [[sensors]] names temp, door, lid, gnss"),
    "a dotted name": (asset('').replace('"cold-store"', '"cold.store"'), "name 'cold.store' must be 1..32 of A-Z a-z 0-9 - _"),
    "the reserved name": (asset('').replace('"cold-store"', '"gateway"'), "name 'gateway' is reserved"),
    "tamper not a contact": (asset('tamper = ["temp"]\n'), "tamper lists temp; allowed: contact sensors of this asset"),
    "tamper not bound": (asset('tamper = ["lid"]\n'), "tamper lists ['lid'], which are not in sensors"),
    "an unknown key": (asset('colour = "red"\n'), "unknown key(s) colour; allowed: name, kind, sensors"),
    "a bad window": (asset('access = ["weekdays 7-18"]\n'), "access: access window 'weekdays 7-18' must look like 'mon-fri 07:00-18:00'"),
    "a bad day": (asset('access = ["mon-fry 07:00-18:00"]\n'), "use mon..sun"),
    "an empty window": (asset('access = ["mon 07:00-07:00"]\n'), "is empty"),
    "a bad zone": (asset('timezone = "Mars/Olympus"\n'), "timezone 'Mars/Olympus' is not an IANA zone name"),
    "a band without bounds": (asset('temperature = { hold_s = 60 }\n'), "temperature: a band needs low, high or both"),
    "a band narrower than its hysteresis": (asset('temperature = { low = 2, high = 3, hysteresis = 0.6 }\n'), "by more than twice the hysteresis"),
    "a band with a text bound": (asset('temperature = { low = "2" }\n'), "temperature.low = '2' must be a number"),
    "a band with an unknown key": (asset('temperature = { min = 2 }\n'), "unknown key(s) min; allowed: low, high, hold_s, hysteresis"),
    "a geofence with a wrong shape": (asset('geofence = { lat = 52.5, lon = 13.4 }\n'), "geofence has keys lat, lon; allowed:"),
    "a latitude off the earth": (asset('geofence = { lat = 95, lon = 13.4, radius_m = 10 }\n'), "lat 95.0 is outside -90..90"),
    "a tiny radius": (asset('geofence = { lat = 52, lon = 13.4, radius_m = 0.5 }\n'), "radius_m 0.5 must be between 1 and 50000"),
    "a polygon of two points": (asset('geofence = { polygon = [[52, 13], [52.1, 13]] }\n'), "at least 3 vertices"),
    "a self-crossing polygon": (asset('geofence = { polygon = [[52, 13], [52.01, 13.01], [52, 13.01], [52.01, 13]] }\n'), "edges 1 and 3 cross"),
    "a polygon on one line": (asset('geofence = { polygon = [[52, 13], [52.01, 13], [52.02, 13]] }\n'), "no area"),
    "stationary not a bool": (asset('stationary = "yes"\n'), "stationary = 'yes' must be true or false"),
    "two assets, one name": (asset('') + '\n[[assets]]\nname = "cold-store"\nkind = "machine"\nsensors = []\n', "asset name(s) cold-store used twice"),
    "an unknown rule setting": (HEAD + "[rules]\nsilence = 3\n", "[rules] has unknown key(s) silence; allowed: timezone, silence_factor"),
    "a rule setting out of range": (HEAD + "[rules]\nfence_fixes = 0\n", "[rules] fence_fixes = 0 must be an integer 1..100"),
    "assets not an array": (HEAD + "[assets]\nname = 'x'\n", "assets must be an array of tables ([[assets]])"),
}


@pytest.mark.parametrize("text, message", BAD.values(), ids=BAD.keys())
def test_a_wrong_asset_config_names_the_file_the_key_and_what_is_allowed(text, message):
    with pytest.raises(ConfigError) as caught:
        parse(text, PATH)
    assert str(caught.value).startswith(f"{PATH}: ")
    assert message in str(caught.value)


@settings(max_examples=200)
@given(st.sampled_from(["name", "kind", "sensors", "tamper", "access", "temperature", "geofence", "timezone", "stationary"]),
       st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=20),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)))
def test_any_wrong_value_in_an_asset_is_a_config_error_never_a_crash(key, value):
    import tomllib

    data = tomllib.loads(GOOD)
    if value is None:
        data["assets"][0].pop(key, None)
    else:
        data["assets"][0][key] = value
    try:
        rules = parse_rules(PATH, data["rules"])
        parse_assets(PATH, data["assets"], {"temp": "ds18b20", "door": "contact", "lid": "contact", "gnss": "gnss"}, rules)
    except ConfigError:
        pass


# --- geometry and hours -------------------------------------------------------------------------------

def test_distances_match_the_haversine_reference():
    # one degree of latitude is 111.2 km on the IUGG mean sphere
    assert distance_m(LatLon(0, 0), LatLon(1, 0)) == pytest.approx(111_195, rel=1e-4)
    assert distance_m(LatLon(52.52, 13.405), LatLon(48.1372, 11.5756)) == pytest.approx(504_400, rel=2e-3)  # Berlin-Munich


def test_a_circle_says_how_far_outside_or_inside_a_point_is():
    fence = Circle(DEPOT, 100)
    assert fence.outside_by_m(offset(DEPOT, 150, 0)) == pytest.approx(50, abs=0.1)
    assert fence.outside_by_m(offset(DEPOT, 0, -30)) == pytest.approx(-70, abs=0.1)


def test_a_polygon_says_how_far_outside_or_inside_a_point_is():
    square = Polygon(tuple(offset(DEPOT, n, e) for n, e in ((0, 0), (0, 100), (100, 100), (100, 0))))
    assert square.outside_by_m(offset(DEPOT, 50, 50)) == pytest.approx(-50, abs=0.2)
    assert square.outside_by_m(offset(DEPOT, 50, 130)) == pytest.approx(30, abs=0.2)
    assert square.outside_by_m(offset(DEPOT, 130, 140)) == pytest.approx(50, abs=0.3)  # past a corner: 30-40-50


def test_a_polygon_across_the_antimeridian_works():
    fence = Polygon((LatLon(-17.0, 179.99), LatLon(-17.0, -179.99), LatLon(-16.99, -179.99), LatLon(-16.99, 179.99)))
    assert fence.outside_by_m(LatLon(-16.995, 180.0)) < 0
    assert fence.outside_by_m(LatLon(-16.995, 179.9)) > 0


@settings(max_examples=200)
@given(st.floats(-60, 60), st.floats(-179, 179), st.floats(10, 5000), st.floats(0, 2 * math.pi), st.floats(0, 3))
def test_circle_and_a_fine_polygon_agree_on_inside_and_outside(lat, lon, radius, bearing, factor):
    centre = LatLon(lat, lon)
    circle = Circle(centre, radius)
    ring = Polygon(tuple(offset(centre, radius * math.cos(a), radius * math.sin(a))
                         for a in (2 * math.pi * i / 90 for i in range(90))))
    point = offset(centre, factor * radius * math.cos(bearing), factor * radius * math.sin(bearing))
    if abs(factor - 1) > 0.01:
        assert (circle.outside_by_m(point) > 0) == (ring.outside_by_m(point) > 0)
        assert circle.outside_by_m(point) == pytest.approx(ring.outside_by_m(point), abs=radius * 0.01 + 0.5)


WINDOWS = {
    "mon-fri 07:00-18:00": [((0, 7 * 60), True), ((4, 17 * 60 + 59), True), ((0, 18 * 60), False), ((5, 9 * 60), False)],
    "fri-mon 10:00-11:00": [((4, 630), True), ((6, 630), True), ((0, 630), True), ((1, 630), False)],
    "sun 22:00-06:00": [((6, 23 * 60), True), ((0, 5 * 60), True), ((0, 6 * 60), False), ((6, 21 * 60), False)],
    "daily 00:00-24:00": [((d, m), True) for d in range(7) for m in (0, 720, 1439)],
    "sat,sun 08:00-12:00": [((5, 8 * 60), True), ((6, 11 * 60), True), ((3, 9 * 60), False)],
}


@pytest.mark.parametrize("text, checks", WINDOWS.items(), ids=WINDOWS.keys())
def test_access_windows_cover_what_they_say(text, checks):
    window = parse_window(text)
    for (weekday, minute), expected in checks:
        assert window.covers(weekday, minute) is expected, (weekday, minute)


def test_no_access_hours_means_access_is_never_permitted():
    assert not AccessHours().permits(1_767_612_000)
