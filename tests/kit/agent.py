"""The gateway agent as the tests build it: one call wires its parts, the way `pledgewatch agent run` does.

    agent = build_agent(tmp_path, sensors=[door], assets=[STORE], specs=[SensorSpec("door", "contact", 30)])
    asyncio.run(running(agent, scenario))
    envelopes = signed_envelopes(agent)

Everything lives in one directory: the spool (`spool.db`), the state
(`state.json`), the newest lender token (`lender-token`) and the rules' state (`rules.json`), so calling
`build_agent` again on the same directory is the agent starting again
after a stop or a power cut. The parts are the agent's attributes
(`agent.spool`, `agent.state`, `agent.uplink`, `agent.rules`, ...).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from agent.assets import Asset, RuleSettings
from agent.clock import TrustedClock
from agent.daemon import Agent
from agent.freshness import TOKEN_FILE, LenderTokens
from agent.recorder import Recorder
from agent.rules import RulesEngine, RulesStateFile, SensorSpec
from agent.spool import Spool
from agent.state import AgentState
from agent.uplink import Uplink, UplinkConfig
from telemetry.envelope import Envelope, decode, verify
from telemetry.identity import Identity

DEVICE = "gw-test-7"
IDENTITY = Identity(bytes([5]) * 32)  # a test key, never a real device's
QUICK_UPLINK = {"batch_interval": 0.05, "backoff_initial": 0.05, "backoff_cap": 0.5, "ack_timeout": 0.5}  # a lab's timings


def synced_clock() -> TrustedClock:
    """A trusted clock whose kernel says it is synchronized (NTP): records keep their wall times."""
    return TrustedClock(kernel_synced=lambda: True)


def build_agent(directory: Path, *, device: str = DEVICE, identity: Identity = IDENTITY, sensors: Sequence[object] = (),
                spool: Mapping[str, object] | None = None, lender: str | None = None,
                security_context: Path | None = None, uplink: Mapping[str, object] | None = None,
                assets: Sequence[Asset] | None = None, specs: Sequence[SensorSpec] = (),
                settings: RuleSettings = RuleSettings(), trusted_clock: TrustedClock | None = None,
                recording: bool = False, **options) -> Agent:
    """The agent over `directory`: its spool, state, and the parts asked for.

    * `spool`: `Spool.open` options (``max_bytes``, ``synchronous``);
    * `lender`: the uplink's lender URI, with the device's OSCORE `security_context`
      (plain CoAP without one) and `uplink` for the other `UplinkConfig` settings;
    * `assets`: the edge rules over these assets (``[]``: the gateway's own rules only)
      and the sensors' `specs`, restored from and saved to ``rules.json``;
      rules need a trusted clock: `trusted_clock`, or a synchronized one;
    * `recording`: the chain resumed now (a recorder), for a test that calls
      `agent.record()` without `agent.run()`;
    * `options`: the rest of `Agent`'s keywords (``clock``, ``rule_tick``, ``modem_health``,
      ``binding``, ``heartbeat_s``, ``rules_digest``, ...).

    The lender tokens the uplink takes from acks are kept in ``lender-token``
    (`agent.tokens`) and feed the trusted clock, as `pledgewatch agent run` does.
    """
    directory = Path(directory)
    if assets is not None:
        trusted_clock = trusted_clock or synced_clock()
    opened = Spool.open(directory / "spool.db", **(spool or {}))
    state = AgentState.open(directory / "state.json")
    tokens = options.setdefault("tokens", LenderTokens(directory / TOKEN_FILE, clock=trusted_clock))
    if lender is not None:
        config = UplinkConfig(lender=lender, security_context=security_context, insecure=security_context is None,
                              **(uplink or {}))
        options["uplink"] = Uplink(config, opened, tokens=tokens)
    if assets is not None:
        rules_state = RulesStateFile(directory / "rules.json")
        options["rules"] = RulesEngine(assets, specs, settings, start=trusted_clock.now(), restore=rules_state.load())
        options["rules_state"] = rules_state
    agent = Agent(device=device, identity=identity, spool=opened, state=state, sensors=sensors,
                  trusted_clock=trusted_clock, **options)
    if recording:  # as agent.run() starts
        agent.recorder = Recorder.start(identity, device, opened, state, now=agent.clock(), binding=agent.binding,
                                        tokens=tokens)
    return agent


async def running(agent: Agent, scenario: Callable[[], Awaitable[object]], *, timeout: float = 15.0) -> object:
    """Run the agent until `scenario()` (started once the chain is resumed) returns; then stop it, and return that."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.started.wait(), timeout)
        return await scenario()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout)


def registered_lender(data: Path, *, device: str = DEVICE, identity: Identity = IDENTITY):
    """A real lender (`tests.kit.lender.LenderThread`, plain CoAP) over `data`, the device registered there by hand.

    Use as a context manager; the agent's lender URI is ``f"coap://127.0.0.1:{lender.port}"``.
    """
    from lender.enrollment import registration
    from lender.evidence.store import SQLiteStore
    from tests.kit.lender import LenderThread

    with SQLiteStore.open(data) as store:
        registration.register(store, data, device, identity.public_key, with_oscore=False)
    return LenderThread(data, insecure=True)


def stored_at_lender(data: Path, device: str = DEVICE) -> list[Envelope]:
    """The envelopes the lender over `data` has stored for `device`, decoded, in seq order."""
    from lender.evidence.store import SQLiteStore

    with SQLiteStore.open(data) as store:
        return [decode(stored.raw) for stored in store.envelopes(device)]


def signed_envelopes(agent: Agent) -> list[Envelope]:
    """Every envelope in the agent's spool, each signature verified with its key, in seq order."""
    keys = {agent.identity.kid: agent.identity.device_key(agent.device)}
    verdicts = [verify(item.raw, keys) for item in agent.spool.peek(max_count=1_000_000, max_bytes=1 << 30)]
    assert verdicts and all(v.ok for v in verdicts), [v.detail for v in verdicts if not v.ok]
    return sorted((v.envelope for v in verdicts), key=lambda e: e.seq)
