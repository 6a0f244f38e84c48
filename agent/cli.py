"""`pledgewatch agent`: run the gateway daemon, or show what it holds."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

from agent import config as agent_config
from agent.clock import TrustedClock
from agent.commands import CommandInbox, rules_validator
from agent.daemon import Agent
from agent.exc import AgentError
from agent.freshness import TOKEN_FILE, LenderTokens
from agent.health import ModemHealthMonitor
from agent.rules import RulesEngine, RulesStateFile, sensor_specs
from agent.sensors import build_sensors
from agent.spool import Spool
from agent.state import AgentState
from agent.uplink import Uplink
from drivers.exc import DriverError
from durable.exc import DurableError
from durable.keystore import DeviceKeys, open_device_key
from telemetry.exc import TelemetryError
from telemetry.identity import Signer

log = logging.getLogger("pledgewatch.agent")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, default=agent_config.DEFAULT_CONFIG, help="agent.toml (default %(default)s)")
    run.set_defaults(run=cmd_run)
    status = sub.add_parser("status", help="show the spool and the chain head")
    status.add_argument("--config", type=Path, default=agent_config.DEFAULT_CONFIG)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)


def open_parts(config: agent_config.AgentConfig) -> tuple[Signer, Spool, AgentState]:
    """The signing key, spool and state the config names (the state dir is created 0700 if missing).

    The key is the seed file, or the TPM key that `device.keystore` beside it describes (durable.keystore), of
    the kind `[device] key_store` names when it names one."""
    key_file = Path(config.device.key_file)
    identity = open_device_key(key_file.parent, key_file=key_file.name, kind=config.device.key_store)
    config.device.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    spool = Spool.open(config.device.state_dir / "spool.db", max_bytes=config.spool.max_bytes,
                       synchronous=config.spool.synchronous)
    state = AgentState.open(config.device.state_dir / "state.json")
    return identity, spool, state


async def serve(agent: Agent) -> None:
    """Run `agent` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await agent.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = agent_config.load(args.config)
        identity, spool, state = open_parts(config)
        sensors = build_sensors(config.sensors)
        modem_health = (ModemHealthMonitor.build(config.modem, state_dir=config.device.state_dir)
                        if config.modem is not None else None)
    except (AgentError, TelemetryError, DurableError, DriverError) as exc:
        print(f"pledgewatch agent: {exc}", file=sys.stderr)
        return 2
    clock = TrustedClock()
    tokens = LenderTokens(config.device.state_dir / TOKEN_FILE, clock=clock)
    rules_state = RulesStateFile(config.device.state_dir / "rules.json")
    kinds = {cls: kind for kind, cls in agent_config.SENSOR_KINDS.items()}
    sensor_kinds = {s.name: kinds[type(s)] for s in config.sensors}
    inbox = None
    settings, assets = config.rules, config.assets
    if config.device.lender_key is not None:  # the lender's signed commands (agent.commands)
        key_file = Path(config.device.key_file)  # rotate-key changes the key store open_parts opened
        inbox = CommandInbox(config.device.state_dir, config.device.id, bytes.fromhex(config.device.lender_key),
                             validate=rules_validator(sensor_kinds), clock=time.time,
                             keys=DeviceKeys(key_file.parent, key_file.name, config.device.key_store))
        settings, assets = inbox.configured(sensor_kinds) or (settings, assets)
    rules = RulesEngine(assets, sensor_specs(config.sensors, kinds), settings, start=clock.now(),
                        restore=rules_state.load(), permits=inbox.permitted if inbox is not None else None)
    agent = Agent(device=config.device.id, identity=identity, spool=spool, state=state, sensors=sensors,
                  uplink=Uplink(config.uplink, spool, tokens=tokens, receipts=state), rules=rules, trusted_clock=clock,
                  rules_state=rules_state, modem_health=modem_health, tokens=tokens,
                  binding=config.device.binding_bytes, heartbeat_s=config.uplink.heartbeat_s,
                  rules_digest=(inbox.rules_digest if inbox is not None else None) or config.rules_digest,
                  commands=inbox, local_rules_digest=config.rules_digest)
    try:
        asyncio.run(serve(agent))
    finally:
        spool.close()
        for sensor in sensors:
            if hasattr(sensor, "close"):
                sensor.close()
        if modem_health is not None:
            modem_health.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = agent_config.load(args.config)
        identity, spool, state = open_parts(config)
    except (AgentError, TelemetryError, DurableError) as exc:
        print(f"pledgewatch agent: {exc}", file=sys.stderr)
        return 2
    with spool:
        stats, head = spool.stats(), spool.head()
        info = {
            "device": config.device.id, "kid": identity.kid.hex(),
            "spooled": stats.count, "spooled_bytes": stats.bytes, "spooled_alarms": stats.alarm_count,
            "head_seq": head.seq if head else None, "boot": state.boot,
            "binding": config.device.binding,
        }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0
