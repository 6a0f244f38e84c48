"""The [modem] table: parsed into the monitor's settings, every mistake named; `pledgewatch agent run` builds the monitor."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import parse
from agent.exc import ConfigError
from agent.health import ModemHealthConfig
from agent.spool import Spool
from durable.keyfile import create_key
from hil.sim.modem import ModemSimulator
from telemetry.envelope import verify
from telemetry.identity import Identity

PATH = Path("/etc/pledgewatch/agent.toml")
BASE = """
[device]
id = "gw-modem-1"
key_file = "device.key"
state_dir = "state"

[uplink]
insecure = true
lender = "coap://127.0.0.1:9"
batch_interval = 3600
"""


def test_without_a_modem_table_there_is_no_monitor():
    assert parse(BASE, PATH).modem is None


def test_a_modem_table_gives_the_monitor_its_settings_and_keeps_the_defaults_for_the_rest():
    config = parse(BASE + """
[modem]
port = "/dev/pledgewatch-modem-at"
model = "rm520n"
status_interval_s = 60
max_resets_per_hour = 2
power_pin = 26
power_off_s = 8
""", PATH).modem
    assert config == ModemHealthConfig(model="rm520n", status_interval_s=60, max_resets_per_hour=2, power_pin=26,
                                       power_off_s=8)
    line = config.power_line()
    assert (line.pin, line.off_s, line.active_high) == (26, 8, True)
    assert config.slow_probe_s == 900 and config.backoff_s == 30 and config.hotplug


@pytest.mark.parametrize(("table", "message"), [
    ("max_resets_per_hour = 0", "[modem] max_resets_per_hour = 0 must be an integer >= 1"),
    ("model = \"nokia\"", "[modem] model 'nokia' is unknown; allowed: auto, "),
    ("status_interval_s = -5", "[modem] status_interval_s = -5 must be > 0"),
    ("status_interval_s = \"5m\"", "[modem] status_interval_s = '5m' must be a float"),
    ("power_pin = \"GPIO26\"", "[modem] power_pin = 'GPIO26' must be a int"),
    ("baud = 9600", "[modem] has unknown key(s) baud; allowed: port, model,"),
    ("power_pin = 26\npower_off_s = 500", "[modem] power_pin / power_off_s:"),
])
def test_every_modem_setting_mistake_names_the_file_and_key(table, message):
    with pytest.raises(ConfigError) as caught:
        parse(BASE + "\n[modem]\n" + table + "\n", PATH)
    assert str(caught.value).startswith(f"{PATH}: ") and message in str(caught.value)


def test_a_modem_that_is_not_a_table_is_refused():
    with pytest.raises(ConfigError, match=r"\[modem\] must be a table"):
        parse('modem = "/dev/ttyUSB2"\n' + BASE, PATH)


def test_the_agent_command_runs_the_monitor_from_the_config_and_signs_its_status(tmp_path):
    identity = Identity(create_key(tmp_path / "device.key"))
    with ModemSimulator("ec25", link=tmp_path / "modem-at") as sim:
        (tmp_path / "agent.toml").write_text(BASE + f'\n[modem]\nport = "{sim.path}"\nstatus_interval_s = 600\n')
        agent = subprocess.Popen([sys.executable, "-m", "pledgewatch", "agent", "run", "--config",
                                  str(tmp_path / "agent.toml")], stderr=subprocess.PIPE, text=True)
        try:
            sim.wait_for_command(r"^AT\+QENG", timeout=20)  # the first status query
            time.sleep(0.5)
        finally:
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=15)
        iccid = sim.state.iccid
    assert agent.returncode == 0, stderr
    spool = Spool.open(tmp_path / "state" / "spool.db")
    keys = {identity.kid: identity.device_key("gw-modem-1")}
    records = {r.name: r for item in spool.peek(max_count=1000, max_bytes=1 << 24)
               for r in verify(item.raw, keys).envelope.records}
    spool.close()
    assert records["modem.registration"].string == "home" and records["modem.iccid"].string == iccid
    assert records["modem.rat"].string == "LTE" and records["modem.rsrp"].unit == "dBm"
