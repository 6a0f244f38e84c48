"""The node's configuration and signing key: files the provisioning tool writes, checked before anything uses them.

`node.json` (UTF-8 JSON, format in docs/firmware.md) and `node.key` (the 32
raw bytes of the Ed25519 seed) sit in the node's root directory. `load`
returns a Config whose every field has been checked, or raises ConfigError
naming the field, its value and what it should be: a node with a bad config
must say why once, not fail somewhere in the middle of a cycle.
"""

import binascii
import json

from errors import ConfigError

MODELS = ("bc66", "bc95", "sim7080g")
MAX_DEVICE_ID = 64
_ID_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_HEX = "0123456789abcdefABCDEF"
BINDING_BYTES = 8


def _where(where, key):
    return where + key


def _text(section, key, where, default=None):
    value = section.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError("%s must be text, got %r" % (_where(where, key), value))
    return value


def _required_text(section, key, where):
    value = _text(section, key, where)
    if value is None:
        raise ConfigError("%s is missing" % _where(where, key))
    return value


def _optional_int(section, key, where, low=-(1 << 30), high=1 << 30):
    value = section.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ConfigError("%s must be an integer, got %r" % (_where(where, key), value))
    if not low <= value <= high:
        raise ConfigError("%s must be in %d..%d, got %d" % (_where(where, key), low, high, value))
    return value


def _int(section, key, where, default, low, high):
    value = _optional_int(section, key, where, low, high)
    return default if value is None else value


def _number(section, key, where, default, low, high):
    value = section.get(key, default)
    if type(value) not in (int, float):
        raise ConfigError("%s must be a number, got %r" % (_where(where, key), value))
    if not low <= value <= high:
        raise ConfigError("%s must be in %r..%r, got %r" % (_where(where, key), low, high, value))
    return float(value)


def _flag(section, key, where, default):
    value = section.get(key, default)
    if value is not True and value is not False:
        raise ConfigError("%s must be true or false, got %r" % (_where(where, key), value))
    return value


def _section(section, key, where, required=False):
    value = section.get(key)
    if value is None:
        if required:
            raise ConfigError("%s is missing" % _where(where, key))
        return None
    if not isinstance(value, dict):
        raise ConfigError("%s must be a JSON object, got %r" % (_where(where, key), value))
    return value


class Config:
    """Every setting the cycle reads, checked (see docs/firmware.md for each one's meaning and default).

    Data only: `load` fills it in (`_read`). A Config holds no function of this module, so once the node has loaded
    its config it can forget the module and its code goes back to the heap (node.release).
    """

    device: str
    interval_s: int
    watchdog_ms: int
    outbox_slots: int
    max_sends: int
    binding: "bytes | None"
    lender_key: "bytes | None"
    insecure: bool
    lender_host: str
    lender_port: int
    lender_path: str
    ack_timeout_ms: int
    max_retransmit: int
    response_timeout_ms: "int | None"
    modem_model: str
    rai: bool
    uart: int
    baudrate: int
    uart_tx: "int | None"
    uart_rx: "int | None"
    reset_pin: "int | None"
    reset_active: int
    apn: "str | None"
    timeout_ms: int
    network_timeout_ms: int
    reset_pulse_ms: int
    boot_ms: int
    psm: "dict | None"
    tamper_pin: "int | None"
    tamper_open_level: int
    onewire_pin: "int | None"
    i2c: "dict | None"
    lis3dh_address: int
    battery_adc_pin: "int | None"
    battery_divider: float
    tilt_alarm_deg: float
    motion_mg: int
    ds18b20_conversion_ms: int


def _read(config, data):
    """Fill config (a Config) from the parsed node.json data; ConfigError naming the first bad setting."""
    if not isinstance(data, dict):
        raise ConfigError("node.json must hold a JSON object")
    device = _required_text(data, "device", "")
    if not 0 < len(device) <= MAX_DEVICE_ID or device[0] in "._-" or any(c not in _ID_CHARACTERS for c in device):
        raise ConfigError("device %r: use 1..64 of A-Z a-z 0-9 . _ - starting with a letter or digit" % device)
    config.device = device
    config.interval_s = _int(data, "interval_s", "", 900, 10, 7 * 86400)
    # The RP2040's watchdog tops out at 8388 ms; the cycle feeds it at least every 500 ms while it waits.
    config.watchdog_ms = _int(data, "watchdog_ms", "", 8000, 1000, 600000)
    config.outbox_slots = _int(data, "outbox_slots", "", 48, 2, 1024)
    config.max_sends = _int(data, "max_sends_per_cycle", "", 8, 1, 64)
    # The enrollment binding (telemetry.enrollment.binding_of), written by provisioning once the lender enrolled
    # the node; every envelope carries it. Absent (enrollment pending, or a node registered by hand): none.
    binding = _text(data, "binding", "")
    if binding is not None and (len(binding) != 2 * BINDING_BYTES or any(c not in _HEX for c in binding)):
        raise ConfigError("binding must be %d hex digits (the enrollment's binding), got %r" % (2 * BINDING_BYTES, binding))
    config.binding = None if binding is None else binascii.unhexlify(binding)
    # The lender's public key (Ed25519, the enrollment key that signs its commands), pinned by provisioning. Absent:
    # the node applies no command (telemetry.command; the commands module).
    lender_key = _text(data, "lender_key", "")
    if lender_key is not None and (len(lender_key) != 64 or any(c not in _HEX for c in lender_key)):
        raise ConfigError("lender_key must be 64 hex digits (the lender's Ed25519 public key), got %r" % lender_key)
    config.lender_key = None if lender_key is None else binascii.unhexlify(lender_key)
    # Plain CoAP (no node.oscore): only when asked for by name, and warned about at every start (node.run).
    config.insecure = _flag(data, "insecure", "", False)

    lender = _section(data, "lender", "", required=True) or {}
    config.lender_host = _required_text(lender, "host", "lender.")
    config.lender_port = _int(lender, "port", "lender.", 5683, 1, 65535)
    config.lender_path = _text(lender, "path", "lender.", "n") or "n"

    coap = _section(data, "coap", "") or {}
    config.ack_timeout_ms = _int(coap, "ack_timeout_ms", "coap.", 2000, 50, 60000)
    config.max_retransmit = _int(coap, "max_retransmit", "coap.", 4, 0, 10)
    config.response_timeout_ms = _optional_int(coap, "response_timeout_ms", "coap.", 100, 600000)

    modem = _section(data, "modem", "", required=True) or {}
    config.modem_model = _required_text(modem, "model", "modem.")
    if config.modem_model not in MODELS:
        raise ConfigError("modem.model must be one of %s, got %r" % (", ".join(MODELS), config.modem_model))
    config.rai = _flag(modem, "rai", "modem.", True)  # Release Assistance with the cycle's last exchange
    config.uart = _int(modem, "uart", "modem.", 1, 0, 9)
    config.baudrate = _int(modem, "baudrate", "modem.", 9600, 1200, 3000000)
    config.uart_tx = _optional_int(modem, "tx", "modem.", 0, 255)
    config.uart_rx = _optional_int(modem, "rx", "modem.", 0, 255)
    config.reset_pin = _optional_int(modem, "reset_pin", "modem.", 0, 255)
    config.reset_active = _int(modem, "reset_active", "modem.", 0, 0, 1)
    config.apn = _text(modem, "apn", "modem.")
    config.timeout_ms = _int(modem, "timeout_ms", "modem.", 5000, 100, 300000)
    config.network_timeout_ms = _int(modem, "network_timeout_ms", "modem.", 60000, 100, 600000)
    config.reset_pulse_ms = _int(modem, "reset_pulse_ms", "modem.", 300, 10, 10000)
    config.boot_ms = _int(modem, "boot_ms", "modem.", 10000, 100, 120000)
    psm = _section(modem, "psm", "modem.")
    if psm is not None:
        for key in ("tau", "active"):
            timer = _required_text(psm, key, "modem.psm.")
            if len(timer) != 8 or any(c not in "01" for c in timer):
                raise ConfigError("modem.psm.%s must be 8 bits as text (TS 24.008 GPRS timer), got %r" % (key, timer))
    config.psm = psm

    pins = _section(data, "sensors", "") or {}
    config.tamper_pin = _optional_int(pins, "tamper_pin", "sensors.", 0, 255)
    config.tamper_open_level = _int(pins, "tamper_open_level", "sensors.", 1, 0, 1)
    config.onewire_pin = _optional_int(pins, "onewire_pin", "sensors.", 0, 255)
    i2c = _section(pins, "i2c", "sensors.")
    if i2c is not None:
        _int(i2c, "id", "sensors.i2c.", 0, 0, 9)
        for key in ("scl", "sda"):
            if _optional_int(i2c, key, "sensors.i2c.", 0, 255) is None:
                raise ConfigError("sensors.i2c.%s is missing" % key)
    config.i2c = i2c
    config.lis3dh_address = _int(pins, "lis3dh_address", "sensors.", 0x18, 0x08, 0x77)
    config.battery_adc_pin = _optional_int(pins, "battery_adc_pin", "sensors.", 0, 255)
    config.battery_divider = _number(pins, "battery_divider", "sensors.", 2.0, 1.0, 100.0)
    config.tilt_alarm_deg = _number(pins, "tilt_alarm_deg", "sensors.", 15.0, 1.0, 180.0)
    config.motion_mg = _int(pins, "motion_mg", "sensors.", 250, 16, 2000)
    config.ds18b20_conversion_ms = _int(pins, "ds18b20_conversion_ms", "sensors.", 750, 0, 2000)


def path(root, name):
    return root.rstrip("/") + "/" + name


def load(root):
    """(Config, 32-byte seed) from root/node.json and root/node.key (root/node.oscore is the uplink's to read)."""
    try:
        with open(path(root, "node.json")) as file:
            text = file.read()
    except OSError:
        raise ConfigError("no %s/node.json: provision this node (pledgewatch provision node)" % root)
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError("node.json is not valid JSON: %s" % error)
    config = Config()
    _read(config, data)
    try:
        with open(path(root, "node.key"), "rb") as file:
            seed = file.read(64)
    except OSError:
        raise ConfigError("no %s/node.key: provision this node's signing key" % root)
    if len(seed) != 32:
        raise ConfigError("node.key must hold the 32-byte Ed25519 seed, it holds %d bytes" % len(seed))
    return config, seed
