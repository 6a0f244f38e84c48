"""The agent daemon end to end on this machine: simulated sensors in, signed chained envelopes in the spool out."""
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from agent.spool import Spool
from agent.state import AgentState
from drivers.gpio import ContactConfig, ContactSensor
from drivers.onewire import DS18B20, DS18B20Config
from durable.keyfile import create_key
from hil.sim.onewire import OneWireTree
from telemetry.chain import check_chain
from telemetry.envelope import GENESIS
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.agent import DEVICE, build_agent, running, signed_envelopes


def test_agent_signs_every_reading_and_reports_tamper_changes_at_once(tmp_path):
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    factory = MockFactory()
    tamper = ContactSensor(ContactConfig("tamper", 17, settle_s=0.01, interval_s=60), pin_factory=factory)
    factory.pin(17).drive_low()  # the lid is shut: the switch pulls the pin to ground
    time.sleep(0.05)  # longer than settle_s: the shut state is the debounced one
    temp = DS18B20(DS18B20Config("temp", probe.device_id, base_dir=tree.devices_dir, interval_s=1))
    agent = build_agent(tmp_path, sensors=[temp, tamper])

    async def open_the_lid():
        await asyncio.sleep(0.2)
        factory.pin(17).drive_high()  # contact opens (pull-up, open_when="high")
        probe.set_celsius(7.25)
        await asyncio.sleep(1.6)

    asyncio.run(running(agent, open_the_lid))
    envelopes = signed_envelopes(agent)
    assert check_chain(envelopes).intact
    names = [(r.name, r.value if r.value is not None else r.boolean) for e in envelopes for r in e.records]
    assert ("temp", 4.5) in names and ("temp", 7.25) in names
    # the poll at start saw it shut; the opening was reported as it happened, not at the next poll (60 s)
    assert names.index(("tamper", False)) < names.index(("tamper", True)), names
    assert agent.state.clean_shutdown


def test_a_failing_sensor_becomes_a_signed_fault_and_the_others_keep_reporting(tmp_path):
    tree = OneWireTree(tmp_path / "w1")
    good, bad = tree.add_ds18b20(celsius=3.0), tree.add_ds18b20(celsius=3.0)
    bad.crc_error()
    sensors = [DS18B20(DS18B20Config(n, p.device_id, base_dir=tree.devices_dir, interval_s=1)) for n, p in (("good", good), ("bad", bad))]
    agent = build_agent(tmp_path, sensors=sensors)
    asyncio.run(running(agent, lambda: asyncio.sleep(1.2)))
    records = [r for e in signed_envelopes(agent) for r in e.records]
    assert any(r.name == "good" and r.value == 3.0 for r in records)
    faults = [r for r in records if r.name == "fault.bad"]
    assert faults and "CRC" in faults[0].string.upper()


def test_restart_after_a_power_cut_continues_the_chain_with_a_signed_gap_record(tmp_path):
    agent = build_agent(tmp_path, recording=True)
    first = [agent.recorder.record([]) for _ in range(5)]
    agent.spool.close()
    agent.state.close()  # no mark_clean_shutdown: the power went
    agent = build_agent(tmp_path, recording=True)
    after = agent.recorder.record([])
    envelopes = signed_envelopes(agent)
    gap = [e for e in envelopes if e.gap is not None]
    assert [g.gap.reason for g in gap] == ["power-loss"] and gap[0].boot == 2
    assert after.seq == first[-1].seq + 2 and check_chain(envelopes).intact


def test_a_lost_spool_never_reuses_a_seq_and_says_so_in_a_signed_gap_record(tmp_path):
    agent = build_agent(tmp_path, recording=True)
    used = [agent.recorder.record([]).seq for _ in range(3)]
    agent.spool.ack(used[:1])
    agent.checkpoint()
    agent.state.mark_clean_shutdown()
    agent.spool.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp_path / "spool.db") + suffix).unlink(missing_ok=True)
    agent = build_agent(tmp_path, recording=True)
    (reset,) = signed_envelopes(agent)
    assert reset.gap.reason == "spool-reset" and reset.prev == GENESIS
    assert reset.seq > max(used) and reset.gap.first == 2 and reset.gap.last == reset.seq - 1
    assert agent.recorder.record([]).seq == reset.seq + 1


def test_spool_overflow_is_reported_as_one_signed_gap_record(tmp_path):
    agent = build_agent(tmp_path, spool={"max_bytes": 64 * 1024}, recording=True)
    for index in range(600):  # ~200 B each: well over the bound
        agent.recorder.record([Record("temp", value=float(index), unit="Cel", time=1767225600 + index)])
    envelopes = signed_envelopes(agent)
    gaps = [e for e in envelopes if e.gap is not None]
    assert gaps and all(g.gap.reason == "overflow" for g in gaps)
    report = check_chain(envelopes, starts_at_genesis=False)
    assert all(p.kind == "gap" and p.explained for p in report.problems), report.problems


CONFIG = """
[device]
id = "{device}"
key_file = "device.key"
state_dir = "state"

[uplink]
insecure = true
lender = "coap://127.0.0.1:9"
batch_interval = 3600

[[sensors]]
kind = "ds18b20"
name = "temp"
device_id = "{probe}"
base_dir = "w1/sys/bus/w1/devices"
interval_s = 1
"""


def _spooled_count(path: Path) -> int:
    """Envelopes in a spool another process holds (a read-only SQLite look, not the Spool API and its lock)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return sum(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("alarm", "routine"))
    except sqlite3.Error:
        return 0


def test_the_agent_command_runs_until_sigterm_and_stops_cleanly(tmp_path):
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=2.5)
    assert tree.devices_dir == tmp_path / "w1/sys/bus/w1/devices"
    create_key(tmp_path / "device.key")
    (tmp_path / "agent.toml").write_text(CONFIG.format(device=DEVICE, probe=probe.device_id))
    agent = subprocess.Popen([sys.executable, "-m", "pledgewatch", "agent", "run", "--config", str(tmp_path / "agent.toml")],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "state" / "spool.db").exists():
        time.sleep(0.1)
    while time.monotonic() < deadline and _spooled_count(tmp_path / "state" / "spool.db") < 2:
        time.sleep(0.1)
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=10)
    assert agent.returncode == 0, stderr
    assert "insecure" in stderr  # the warning at every start
    state = AgentState.open(tmp_path / "state" / "state.json")
    assert state.clean_shutdown and state.boot == 1
    spool = Spool.open(tmp_path / "state" / "spool.db")
    assert len(spool) >= 2


def test_the_agent_refuses_a_key_file_others_can_read(tmp_path):
    create_key(tmp_path / "device.key")
    os.chmod(tmp_path / "device.key", 0o644)
    (tmp_path / "agent.toml").write_text(CONFIG.format(device=DEVICE, probe="28-000000000001"))
    result = subprocess.run([sys.executable, "-m", "pledgewatch", "agent", "run", "--config", str(tmp_path / "agent.toml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "chmod 600" in result.stderr
