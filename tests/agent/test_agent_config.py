"""The agent's config file: a valid one builds the whole tree; every broken one gets a message naming file, key and what is allowed."""
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from agent.config import load, parse
from agent.exc import ConfigError
from agent.sensors import build_sensors
from drivers.gnss import GnssConfig, GnssReceiver

PATH = Path("/etc/pledgewatch/agent.toml")
GOOD = """
[device]
id = "gw-0001"
key_file = "device.key"
state_dir = "/var/lib/pledgewatch"

[spool]
max_bytes = 1048576
synchronous = "NORMAL"

[uplink]
lender = "coap://lender.example:5683"
security_context = "oscore"

[[sensors]]
kind = "ds18b20"
name = "temp"
device_id = "28-000005e2fdc3"

[[sensors]]
kind = "gnss"
url = "/dev/ttyUSB1"
"""


def test_a_valid_config_builds_every_part_with_paths_relative_to_the_file():
    config = parse(GOOD, PATH)
    assert config.device.key_file == Path("/etc/pledgewatch/device.key")
    assert config.device.state_dir == Path("/var/lib/pledgewatch")
    assert config.uplink.security_context == Path("/etc/pledgewatch/oscore")
    assert (config.spool.max_bytes, config.spool.synchronous) == (1048576, "NORMAL")
    assert [type(s).__name__ for s in config.sensors] == ["DS18B20Config", "GnssConfig"]
    assert isinstance(build_sensors(config.sensors[1:])[0], GnssReceiver)


@pytest.mark.parametrize("change, message", [
    (("id = \"gw-0001\"", "id = 7"), "[device] id = 7 must be a str"),
    (("key_file = \"device.key\"\n", ""), "[device] needs key 'key_file'"),
    (("synchronous = \"NORMAL\"", "synchronous = \"OFF\""), "allowed: FULL, NORMAL"),
    (("max_bytes = 1048576", "max_bytes = 10"), "allowed: >= 65536"),
    (("lender = \"coap://lender.example:5683\"", "lender = \"http://x\""), "coap://"),
    (("security_context = \"oscore\"", "batch_interval = 5"), "insecure = true"),
    (("kind = \"gnss\"", "kind = \"laser\""), "allowed: ds18b20, contact, motion, run-hours, gnss"),
    (("device_id = \"28-000005e2fdc3\"", "device_id = \"29-x\""), "1-Wire id"),
    (("url = \"/dev/ttyUSB1\"", "url = \"/dev/ttyUSB1\"\nbaud = 4800"), "unknown key(s) baud; allowed: url, name"),
    (("[spool]", "[spoool]"), "unknown table(s) spoool"),
    (("name = \"temp\"", "name = \"gnss\""), "gnss used twice"),
    (("[device]", "[device"), "not valid TOML"),
    (("state_dir = ", 'binding = "1f7b3085"\nstate_dir = '), "binding = '1f7b3085' must be 16 hex digits"),
    (("state_dir = ", 'binding = "1f7b3085f8c585zz"\nstate_dir = '), "must be 16 hex digits"),
    (("state_dir = ", "binding = 7\nstate_dir = "), "[device] binding = 7 must be a str"),
    (("security_context = \"oscore\"", "security_context = \"oscore\"\nheartbeat_s = 0"),
     "heartbeat_s must be a positive number of seconds, got 0"),
])
def test_each_mistake_names_the_file_the_key_and_what_is_allowed(change, message):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as caught:
        parse(GOOD.replace(old, new, 1), PATH)
    assert str(caught.value).startswith(str(PATH)) and message in str(caught.value)


def test_the_enrollment_binding_is_optional_and_read_as_the_bytes_every_envelope_carries():
    assert parse(GOOD, PATH).device.binding_bytes is None
    bound = parse(GOOD.replace("state_dir = ", 'binding = "1F7B3085f8c585dc"\nstate_dir = ', 1), PATH)
    assert bound.device.binding_bytes == bytes.fromhex("1f7b3085f8c585dc")


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")


values = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=10), st.booleans(), st.lists(st.integers(), max_size=2))


@settings(max_examples=1000)
@given(st.sampled_from(["id", "key_file", "max_bytes", "synchronous", "lender", "security_context", "kind", "device_id", "url",
                        "name", "binding", "heartbeat_s"]), values)
def test_any_wrong_value_is_a_config_error_never_a_crash(key, value):
    import tomllib

    data = tomllib.loads(GOOD)
    for table in (data["device"], data["spool"], data["uplink"], *data["sensors"]):
        if key in table:
            table[key] = value
    if key in ("binding", "heartbeat_s"):  # optional keys: set where they belong
        data["device" if key == "binding" else "uplink"][key] = value
    text = _dump(data)
    try:
        parse(text, PATH)
    except ConfigError:
        pass


def _dump(data) -> str:
    def literal(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode().replace("\\\\u", "\\u") + '"'
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        if isinstance(value, float) and value != value:
            return "nan"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)

    out = []
    for table in ("device", "spool", "uplink"):
        out.append(f"[{table}]")
        out += [f"{k} = {literal(v)}" for k, v in data[table].items()]
    for sensor in data["sensors"]:
        out.append("[[sensors]]")
        out += [f"{k} = {literal(v)}" for k, v in sensor.items()]
    return "\n".join(out) + "\n"
