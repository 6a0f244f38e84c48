"""The node's config and key files: a bad file says what is wrong and where, before the cycle starts (tests only)."""

import json

import config
from check import equal, fresh_dir, raises
from errors import ConfigError

GOOD = {"device": "yard-17", "lender": {"host": "203.0.113.7"}, "modem": {"model": "bc66"}}


def _provision(data, key=bytes(32)):
    root = fresh_dir("config")
    with open(root + "/node.json", "w") as file:
        file.write(data if isinstance(data, str) else json.dumps(data))
    if key is not None:
        with open(root + "/node.key", "wb") as file:
            file.write(key)
    return root


def test_a_minimal_config_gets_the_documented_defaults():
    settings, seed = config.load(_provision(GOOD))
    equal((settings.interval_s, settings.lender_port, settings.lender_path, settings.ack_timeout_ms,
           settings.max_retransmit, settings.outbox_slots, settings.watchdog_ms), (900, 5683, "n", 2000, 4, 48, 8000))
    equal(seed, bytes(32))
    equal(settings.binding, None, "no binding until provisioning writes one")


def test_the_enrollment_binding_is_read_as_its_8_bytes():
    data = dict(GOOD)
    data["binding"] = "6c6815785E7805f4"
    settings, _ = config.load(_provision(data))
    equal(settings.binding, b"\x6c\x68\x15\x78\x5e\x78\x05\xf4")


def test_every_bad_setting_is_named_in_the_error():
    cases = (
        ({"device": "yard 17"}, "device"),
        ({"device": ""}, "device"),
        ({"modem": {"model": "sim800"}}, "modem.model"),
        ({"modem": {"model": "bc66", "psm": {"tau": "0011", "active": "00000001"}}}, "modem.psm.tau"),
        ({"interval_s": 1}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"lender": {"host": "x", "port": 70000}}, "lender.port"),
        ({"lender": {}}, "lender.host"),
        ({"coap": {"ack_timeout_ms": "2s"}}, "coap.ack_timeout_ms"),
        ({"sensors": {"i2c": {"scl": 22}}}, "sensors.i2c.sda"),
        ({"sensors": {"battery_divider": 0.5}}, "sensors.battery_divider"),
        ({"binding": "6c6815785e7805"}, "binding"),
        ({"binding": "6c6815785e7805zz"}, "binding"),
        ({"binding": 7}, "binding"),
    )
    for change, name in cases:
        data = dict(GOOD)
        data.update(change)
        error = raises(ConfigError, config.load, _provision(data))
        assert name in str(error), (name, str(error))


def test_a_missing_or_wrong_key_file_and_broken_json_are_config_errors():
    assert "node.key" in str(raises(ConfigError, config.load, _provision(GOOD, key=None)))
    assert "32-byte" in str(raises(ConfigError, config.load, _provision(GOOD, key=bytes(31))))
    assert "JSON" in str(raises(ConfigError, config.load, _provision("{not json")))
    assert "node.json" in str(raises(ConfigError, config.load, fresh_dir("empty")))
