"""Silence is a risk: the gateway declares how often it speaks, and speaks at least that often.

The story: a technician's agent.toml sets `heartbeat_s` and the site's
[[assets]] and [rules]. The agent command starts against a real lender and
signs its manifest, which declares the heartbeat interval and the digest of
the rules it runs; its only sensor is polled once an hour, so after the first
reading nothing happens, and every `heartbeat_s` it signs a heartbeat, which
reaches the lender although batches are an hour apart. When the rules in
agent.toml are edited, the next manifest's digest changes.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from agent.config import parse
from agent.exc import ConfigError
from durable.keyfile import create_key
from hil.sim.onewire import OneWireTree
from telemetry.identity import Identity
from telemetry.manifest import DEFAULT_HEARTBEAT_S, HEARTBEAT, HEARTBEAT_S, RULES, rules_digest
from telemetry.senml import Record
from tests.kit.agent import build_agent, registered_lender, running, signed_envelopes, stored_at_lender

DEVICE = "gw-heartbeat-1"
CONFIG = """
[device]
id = "{device}"
key_file = "device.key"
state_dir = "state"

[uplink]
insecure = true
lender = "{lender}"
batch_interval = 3600
heartbeat_s = 0.5
backoff_initial = 0.1
backoff_cap = 0.5
ack_timeout = 0.5

[[sensors]]
kind = "ds18b20"
name = "temp"
device_id = "{probe}"
base_dir = "w1/sys/bus/w1/devices"
interval_s = 3600

[rules]
timezone = "Europe/Berlin"

[[assets]]
name = "cold-store"
kind = "stock"
sensors = ["temp"]
temperature = {{ low = 2.0, high = {high}, hold_s = 600 }}
"""


def agent_command(config: Path, seconds: float) -> None:
    """Run `pledgewatch agent run` for `seconds`, then stop it with SIGTERM, as systemd would."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "pledgewatch", "agent", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode(errors="replace")


def named(envelope, name: str) -> Record | None:
    return next((r for r in envelope.records if r.name == name), None)


def test_the_agent_declares_its_heartbeat_and_rules_then_speaks_at_least_every_heartbeat(tmp_path):
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    identity = Identity(create_key(tmp_path / "device.key"))
    config = tmp_path / "agent.toml"
    data = tmp_path / "lender"
    with registered_lender(data, device=DEVICE, identity=identity) as lender:
        uri = f"coap://127.0.0.1:{lender.port}"
        config.write_text(CONFIG.format(device=DEVICE, lender=uri, probe=probe.device_id, high=8.0))
        agent_command(config, 8.0)  # generous: a loaded machine takes seconds to start the agent
        first_run = stored_at_lender(data, DEVICE)
        # the technician edits a threshold: the next start declares other rules
        config.write_text(CONFIG.format(device=DEVICE, lender=uri, probe=probe.device_id, high=12.0))
        agent_command(config, 4.0)
        stored = stored_at_lender(data, DEVICE)
    table = tomllib.loads(config.read_text())
    manifests = [e for e in stored if named(e, HEARTBEAT_S) is not None]
    assert len(manifests) == 2
    declared = named(manifests[0], HEARTBEAT_S)
    assert (declared.value, declared.unit) == (0.5, "s")
    assert named(manifests[0], "asset.cold-store.kind").string == "stock"  # beside the assets, in one envelope
    assert named(manifests[0], RULES).string == rules_digest(
        [{**table["assets"][0], "temperature": {**table["assets"][0]["temperature"], "high": 8.0}}], table["rules"])
    assert named(manifests[1], RULES).string == rules_digest(table["assets"], table["rules"])
    assert named(manifests[0], RULES).string != named(manifests[1], RULES).string
    # after the one reading at start nothing happened, yet the lender heard from the gateway every heartbeat_s,
    # although its batches are an hour apart
    beats = [e for e in first_run if named(e, HEARTBEAT) is not None]
    assert len(beats) >= 4, [[r.name for r in e.records] for e in first_run]
    uptimes = [named(e, HEARTBEAT).value for e in beats]
    assert all(named(e, HEARTBEAT).unit == "s" for e in beats) and uptimes == sorted(uptimes)
    assert all(later - earlier >= 0.45 for earlier, later in zip(uptimes, uptimes[1:]))  # only after heartbeat_s of nothing


def test_no_heartbeat_while_readings_flow(tmp_path):
    agent = build_agent(tmp_path, heartbeat_s=0.4)

    async def readings_every_tenth_of_a_second():
        for value in range(15):
            agent.record([Record("temp", value=float(value), unit="Cel")])
            await asyncio.sleep(0.1)

    asyncio.run(running(agent, readings_every_tenth_of_a_second))
    names = {r.name for e in signed_envelopes(agent) for r in e.records}
    assert HEARTBEAT not in names and HEARTBEAT_S in names


def test_heartbeat_s_is_a_positive_number_of_seconds_in_uplink():
    base = '[device]\nid = "gw-1"\nkey_file = "k"\nstate_dir = "s"\n[uplink]\ninsecure = true\n'
    assert parse(base, Path("/etc/agent.toml")).uplink.heartbeat_s == DEFAULT_HEARTBEAT_S == 300
    config = parse(base + "heartbeat_s = 0.25\nbatch_interval = 60\n", Path("/etc/agent.toml"))
    assert config.uplink.heartbeat_s == 0.25 and config.uplink.send_interval == 0.25  # batches wait no longer
    for bad in ("0", "-5", '"300"', "true"):
        with pytest.raises(ConfigError, match="heartbeat_s must be a positive number of seconds"):
            parse(base + f"heartbeat_s = {bad}\n", Path("/etc/agent.toml"))


def test_the_rules_digest_covers_the_assets_and_rules_tables_as_written():
    base = '[device]\nid = "gw-1"\nkey_file = "k"\nstate_dir = "s"\n[uplink]\ninsecure = true\n'
    bare = parse(base, Path("/etc/agent.toml"))
    assert bare.rules_digest == rules_digest([], {})
    sensors = '[[sensors]]\nkind = "ds18b20"\nname = "temp"\ndevice_id = "28-000005e2fdc3"\n'
    asset = '[[assets]]\nname = "cold-store"\nkind = "stock"\nsensors = ["temp"]\ntemperature = { low = 2, high = 8 }\n'
    written = parse(base + sensors + asset, Path("/etc/agent.toml"))
    as_floats = parse(base + sensors + asset.replace("low = 2, high = 8", "low = 2.0, high = 8.0"), Path("/etc/agent.toml"))
    warmer = parse(base + sensors + asset.replace("high = 8", "high = 9"), Path("/etc/agent.toml"))
    assert written.rules_digest == as_floats.rules_digest != warmer.rules_digest != bare.rules_digest
