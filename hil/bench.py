"""hil.bench — one scenario's running system, built from an environment file.

`Bench(env, workdir)` turns the environment's data into running parts:

    lender   `pledgewatch lender serve` (the gateway registered first, OSCORE contexts made by the lender)
    proxy    hil.netem between agent and lender, when [network] kind = "proxy"
    sensors  simulated DS18B20 probes on a 1-Wire tree the agent's config points at
    modem    a simulator on a pty (or behind socat, or a real port): `bench.modem_port`
    agent    the env's command (`pledgewatch agent run --config FILE`) with the config the rig writes

and gives the scenario its fault injectors (`bench.power`, `bench.network`,
`bench.modem`, `bench.relay`, `bench.disk`, `bench.clock`: see `hil.faults`),
a timeline observer, and `finish()`, which ends every scenario the same way:

1. heal every fault (link clean, modem answering, disk space back);
2. stop the agent cleanly and start it once more *without sensors* (and
   without its modem monitor), so the backlog drains to zero while nothing
   new is measured;
3. wait until the spool is empty (or `drain_timeout` passes), stop the agent;
4. run the invariant check (`hil.invariant`) against the lender's export.

The result (`ScenarioResult`) holds what the report needs: faults with their
times, the timeline, the counts and the verdict.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from durable.keyfile import create_key
from hil import invariant, measure
from hil.env import Environment
from hil.exc import BenchError, FaultError
from hil.faults import AgentPower, ClockJump, DiskFull, FaultLog, FaultRecord, ModemFaults, NetworkFaults, PowerRelay
from hil.netem import UdpProxy
from hil.observer import Observer, Sample, spooled_seqs
from hil.processes import AgentProcess, LenderProcess, SocatBridge
from telemetry.identity import DeviceKey, Identity

log = logging.getLogger(__name__)

CLOCK_SHIM = Path(__file__).resolve().parent / "clockshim"


@dataclass(frozen=True, slots=True)
class Profile:
    """How long scenarios run: 'short' in `make test`, 'long' in `make hil`."""

    name: str = "short"

    def __post_init__(self) -> None:
        if self.name not in ("short", "long"):
            raise ValueError(f"profile must be 'short' or 'long', got {self.name!r}")

    def pick(self, short, long):
        """The short or the long value of a scenario setting."""
        return long if self.name == "long" else short


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario did and how it ended, for the report."""

    name: str
    env: str
    profile: str
    started: float
    ended: float | None = None
    faults: list[FaultRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    invariant: invariant.InvariantReport | None = None
    node_invariants: dict[str, invariant.InvariantReport] = field(default_factory=dict)
    agent_starts: int = 0
    power_cuts: int = 0
    proxy: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)   # part -> log path
    drained_after_s: float | None = None
    fault_delivery: list[measure.FaultDelivery] = field(default_factory=list)   # delivery while each fault lasted
    alarms: list[measure.AlarmDelivery] = field(default_factory=list)           # signed -> stored, after finish()

    def to_json(self) -> dict:
        return {
            "name": self.name, "env": self.env, "profile": self.profile, "started": self.started, "ended": self.ended,
            "faults": [{"kind": f.kind, "start": f.start, "end": f.end, "detail": f.detail, "instant": f.instant}
                       for f in self.faults],
            "samples": [[s.at, s.spooled, s.head_seq, s.delivered, s.lender_max_seq, s.uploads, s.agent_up]
                        for s in self.samples],
            "invariant": self.invariant.to_json() if self.invariant else None,
            "node_invariants": {name: report.to_json() for name, report in self.node_invariants.items()},
            "agent_starts": self.agent_starts, "power_cuts": self.power_cuts, "proxy": self.proxy,
            "notes": self.notes, "logs": self.logs, "drained_after_s": self.drained_after_s,
            "fault_delivery": [f.to_json() for f in self.fault_delivery],
            "alarms": [a.to_json() for a in self.alarms], "alarm_latency": measure.latency_summary(self.alarms),
        }


def _agent_config(*, device: str, state_dir: Path, lender_uri: str, security_context: Path | None,
                  synchronous: str, spool_max_bytes: int, uplink: dict, probes: Sequence[str], interval_s: float,
                  onewire_dir: Path, modem: dict | None = None) -> str:
    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    lines = [
        "# written by the HIL rig for one scenario run",
        "[device]", f"id = {value(device)}", 'key_file = "device.key"', f"state_dir = {value(str(state_dir))}",
        "", "[spool]", f"max_bytes = {spool_max_bytes}", f"synchronous = {value(synchronous)}",
        "", "[uplink]", f"lender = {value(lender_uri)}",
    ]
    lines.append(f"security_context = {value(str(security_context))}" if security_context else "insecure = true")
    lines += [f"{key} = {value(v)}" for key, v in uplink.items()]
    if modem is not None:
        lines += ["", "[modem]"] + [f"{key} = {value(v)}" for key, v in modem.items()]
    for index, probe in enumerate(probes, 1):
        lines += ["", "[[sensors]]", 'kind = "ds18b20"', f'name = "probe-{index}"', f"device_id = {value(probe)}",
                  f"base_dir = {value(str(onewire_dir))}", f"interval_s = {interval_s}"]
    return "\n".join(lines) + "\n"


def _public_key(seed: bytes) -> bytes:
    return Identity(seed).public_key


def _copy_private(source: Path, target: Path) -> None:
    """Copy a directory of secrets with the modes the agent insists on (0700 / 0600)."""
    shutil.copytree(source, target)
    os.chmod(target, 0o700)
    for path in target.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


class Bench:
    """The running bench of one scenario (see the module docstring). Use as a context manager."""

    def __init__(self, env: Environment, workdir: Path, *, name: str = "scenario", profile: Profile = Profile(),
                 agent_command: Sequence[str] | None = None, limited_disk: bool = False, with_modem: bool = False,
                 with_nodes: bool = False, observe_every_s: float = 0.25) -> None:
        self.env = env
        self.workdir = Path(workdir)
        self.profile = profile
        self.device = env.gateway.device
        self.agent_command = tuple(agent_command) if agent_command else env.gateway.command
        self.faults = FaultLog()
        self.result = ScenarioResult(name=name, env=env.name, profile=profile.name, started=time.time())
        self._limited_disk = limited_disk
        self._with_modem = with_modem
        self._with_nodes = with_nodes
        self.nodes: dict = {}               # name -> hil.node.SimulatedNode
        self.node_modems: dict = {}         # name -> its simulated NB-IoT modem
        self._observe_every_s = observe_every_s
        self._finished = False
        self.gateway_dir = self.workdir / "gateway"
        self.state_dir = self.gateway_dir / "state"
        self.lender_dir = self.workdir / "lender"
        self.logs_dir = self.workdir / "logs"
        # parts (set by start)
        self.identity: Identity | None = None
        self.lender: LenderProcess | None = None
        self.proxy: UdpProxy | None = None
        self.agent: AgentProcess | None = None
        self.observer: Observer | None = None
        self.onewire = None
        self.probes: list = []
        self.modem_simulator = None
        self.socat: SocatBridge | None = None
        self.modem_port: str | None = None
        # fault injectors
        self.power: AgentPower | None = None
        self.network = NetworkFaults(None, self.faults)
        self.modem = ModemFaults(None, self.faults, kind="none")
        self.relay: PowerRelay | None = None
        self.disk: DiskFull | None = None
        self.clock: ClockJump | None = None

    # --- building ------------------------------------------------------------------------

    def __enter__(self) -> Bench:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> Bench:
        from hil.sim.onewire import OneWireTree

        for directory in (self.gateway_dir, self.logs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.gateway_dir, 0o700)
        gateway = self.env.gateway
        self.identity = Identity(create_key(self.gateway_dir / "device.key"))

        lender_spec = self.env.lender
        self.lender = LenderProcess(self.lender_dir, bind=lender_spec.bind, insecure=lender_spec.security == "insecure",
                                    max_body=lender_spec.max_body, log_path=self.logs_dir / "lender.log")
        context = self.lender.register(self.device, self.identity.public_key.hex())
        node_seeds = {spec.name: os.urandom(32) for spec in self.env.nodes} if self._with_nodes else {}
        for name, seed in node_seeds.items():
            self.lender.register_node(name, _public_key(seed).hex())
        security_context = None
        if context is not None:
            security_context = self.gateway_dir / "oscore"
            _copy_private(context, security_context)
        self.lender.start()
        self.result.logs["lender"] = str(self.lender.log_path)

        target = self.lender.address
        if self.env.network.kind == "proxy":
            self.proxy = UdpProxy(target, seed=self.env.network.seed).start()
            self.network = NetworkFaults(self.proxy, self.faults)
            lender_uri = f"coap://127.0.0.1:{self.proxy.port}"
        else:
            lender_uri = f"coap://{target[0]}:{target[1]}"

        if node_seeds:
            self._start_nodes(node_seeds, self.proxy.port if self.proxy is not None else target[1])

        self.onewire = OneWireTree(self.gateway_dir / "w1")
        sensors = gateway.sensors
        self.probes = [self.onewire.add_ds18b20(celsius=4.0 + i) for i in range(sensors.probes)]

        if self._with_modem and self.env.modem is not None:
            self._start_modem()

        agent_env = dict(os.environ)
        if self.env.clock is not None and self.env.clock.kind == "shim":
            self.clock = ClockJump(self.workdir / "clock-offset", self.faults)
            agent_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(CLOCK_SHIM), agent_env.get("PYTHONPATH", "")) if p)
            agent_env["PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE"] = str(self.clock.offset_file)

        if self._limited_disk:
            if self.env.disk is None:
                raise FaultError("this bench declares no [disk]: a disk-full scenario needs one")
            self.disk = DiskFull(self.env.disk, self.state_dir, self.faults)
            self.disk.prepare()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

        config_args = dict(device=self.device, state_dir=self.state_dir, lender_uri=lender_uri,
                           security_context=security_context, synchronous=gateway.synchronous,
                           spool_max_bytes=gateway.spool_max_bytes, uplink=dict(gateway.uplink),
                           interval_s=sensors.interval_s, onewire_dir=self.onewire.devices_dir)
        self.config_path = self.gateway_dir / "agent.toml"
        modem = {"port": self.modem_port, **gateway.modem} if self.modem_port is not None else None
        self.config_path.write_text(_agent_config(probes=[p.device_id for p in self.probes], modem=modem,
                                                  **config_args))
        self.drain_config_path = self.gateway_dir / "agent-drain.toml"
        self.drain_config_path.write_text(_agent_config(probes=[], **config_args))

        self.agent = AgentProcess(self.agent_command, self.config_path, log_path=self.logs_dir / "agent.log",
                                  env=agent_env)
        self.result.logs["agent"] = str(self.agent.log_path)
        if self.disk is not None:
            self.disk.agent = self.agent
        self.power = AgentPower(self.agent, self.faults)
        self.observer = Observer(state_dir=self.state_dir, lender_data=self.lender_dir, device=self.device,
                                 agent_up=lambda: self.agent is not None and self.agent.running,
                                 uploads=(lambda: self.network.uploads()) if self.proxy else (lambda: None),
                                 interval_s=self._observe_every_s)
        self.agent.start()
        self.observer.start()
        return self

    def _start_nodes(self, seeds: dict[str, bytes], lender_port: int) -> None:
        from hil.node import SimulatedNode
        from hil.sim.modem import ModemSimulator

        for spec in self.env.nodes:
            node = SimulatedNode(spec, self.workdir / "nodes" / spec.name, lender_port=lender_port, seed=seeds[spec.name])
            self.nodes[spec.name] = node
            self.node_modems[spec.name] = ModemSimulator(node.model, link=self.workdir / "nodes" / f"{spec.name}-uart").start()

    def run_node(self, name: str, cycles: list[dict]) -> list[dict]:
        """Run cycles of node `name` under MicroPython on its simulated modem; one result per cycle."""
        return self.nodes[name].run(self.node_modems[name].path, cycles)

    def _start_modem(self) -> None:
        from hil.sim.modem import ModemSimulator

        spec = self.env.modem
        if spec.kind == "serial":
            self.modem_port = spec.port
            self.modem = ModemFaults(None, self.faults, kind="serial")
        else:
            modem_dir = self.workdir / "modem"
            modem_dir.mkdir(exist_ok=True)
            self.modem_simulator = ModemSimulator(spec.model, link=modem_dir / "sim-at").start()
            self.modem = ModemFaults(self.modem_simulator, self.faults, kind=spec.kind)
            if spec.kind == "simulator":
                self.modem_port = str(self.modem_simulator.path)
            else:
                # The "real" modem: the simulator's pty relayed by socat to another path, as a USB
                # serial adapter would show up; the scenario opens only that path.
                self.socat = SocatBridge(self.modem_simulator.pty_path, modem_dir / "ttyUSB2",
                                         log_path=self.logs_dir / "socat.log")
                self.socat.start()
                self.modem_port = str(self.socat.link)
                self.result.logs["socat"] = str(self.socat.log_path)
        if self.env.power_relay is not None:
            self.relay = PowerRelay(self.env.power_relay, self.faults, simulator=self.modem_simulator,
                                    after_power_on=self._modem_powered_on)

    def _modem_powered_on(self) -> None:
        sim = self.modem_simulator
        if sim is None:
            return
        deadline = time.monotonic() + 10
        while sim.pty_path is None or not os.path.exists(sim.path):
            if time.monotonic() > deadline:
                raise BenchError("the simulated modem did not come back within 10 s of its power cycle")
            time.sleep(0.01)
        if self.socat is not None:  # the USB serial device re-enumerates: a new bridge to the new pty
            self.socat.kill()
            self.socat.retarget(sim.pty_path)
            self.socat.start()

    # --- while the scenario runs ---------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise (with its log) if the agent or the lender died on its own."""
        for part in (self.agent, self.lender):
            if part is not None:
                part.check_alive()

    def run_for(self, seconds: float, *, step_s: float = 0.1) -> None:
        """Let the system run for `seconds`, failing at once if the agent or lender crashes."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(step_s, left))

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
        """Wait (checking the processes) until `predicate()`; returns the seconds it took."""
        started = time.monotonic()
        while not predicate():
            self.check_alive()
            if time.monotonic() - started > timeout:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.05)
        return time.monotonic() - started

    def sample(self) -> Sample:
        """A look at the system now (spooled, head seq, delivered, ...); the timeline has its own sampler."""
        return self.observer.sample(record=False)

    def wait_delivered(self, *, timeout: float, caught_up_to: int | None = None) -> float:
        """Wait until the lender holds seq `caught_up_to` (default: the agent's chain head now); returns seconds.

        The uplink sends in seq order (alarms first), so the lender's highest
        seq reaching the head means the backlog before it has arrived too.
        """
        target = caught_up_to if caught_up_to is not None else (self.sample().head_seq or 0)
        return self.wait_until(lambda: (self.sample().lender_max_seq or 0) >= target, timeout=timeout,
                               what=f"the lender to catch up to seq {target}")

    def delivery_during(self, kind: str = "link-impaired") -> measure.Delivery:
        """Envelopes produced and delivered during the latest fault of `kind` (up to now, if it still lasts)."""
        fault = next((f for f in reversed(self.faults.records()) if f.kind == kind and not f.instant), None)
        if fault is None:
            raise BenchError(f"no {kind!r} fault was injected in this scenario")
        now = self.observer.sample()       # recorded: the window's end is on the timeline
        end = now.at if fault.end is None else min(fault.end, now.at)
        delivery = measure.delivery_during(self.observer.samples(), fault.start, end)
        if delivery is None:
            raise BenchError("the timeline has no readings of the agent and the lender to measure delivery with")
        return delivery

    def alarm_deliveries(self, start: float | None = None, end: float | None = None) -> list[measure.AlarmDelivery]:
        """The alarms signed between `start` and `end` (wall seconds; default all), with when the lender stored each.

        After `finish()` (it reads the lender's export).
        """
        return [a for a in self.result.alarms
                if (start is None or a.signed_at >= start) and (end is None or a.signed_at <= end)]

    def note(self, key: str, value: object) -> None:
        """A fact for the report (e.g. how long the drain took)."""
        self.result.notes[key] = str(value)

    # --- the end of every scenario -----------------------------------------------------------

    def heal(self) -> None:
        """End every fault still in place."""
        self.network.heal()
        self.modem.clear()
        if self.disk is not None and self.disk.filled:
            self.disk.free()
        self.faults.end_all()

    def finish(self, *, drain_timeout: float = 60.0) -> invariant.InvariantReport:
        """Heal, drain with a sensorless agent, stop, and check the invariant; raise InvariantViolation on failure."""
        if self._finished:
            raise BenchError("finish() was already called for this bench")
        self._finished = True
        self.heal()
        self.check_alive()
        self.agent.stop()
        self.agent.argv = tuple(a.replace(str(self.config_path), str(self.drain_config_path)) for a in self.agent.argv)
        if str(self.drain_config_path) not in self.agent.argv:
            raise BenchError("the agent command does not pass the rig's config path; cannot drain")
        self.agent.start()
        started = time.monotonic()
        try:
            self.wait_until(lambda: (self.sample().spooled == 0), timeout=drain_timeout,
                            what="the agent's spool to drain")
            self.result.drained_after_s = round(time.monotonic() - started, 2)
        except BenchError as exc:
            if not self.agent.running:
                raise
            log.warning("%s", exc)
        self.agent.stop()
        self.result.invariant = self.verdict()
        self.result.alarms = measure.alarm_deliveries(self.received(), measure.booted_at())
        for name, node in self.nodes.items():
            self.result.node_invariants[name] = self.verdict(device=name, head_seq=node.head_seq, spooled=node.buffered)
        for report in (self.result.invariant, *self.result.node_invariants.values()):
            report.raise_if_failed()
        return self.result.invariant

    def verdict(self, device: str | None = None, *, head_seq: int | None = None,
                spooled: Sequence[int] | None = None) -> invariant.InvariantReport:
        """The invariant check for the gateway (the agent must be stopped), or for `device` with its head and outbox."""
        if device is None:
            device, head_seq, spooled = self.device, self.agent.status()["head_seq"], spooled_seqs(self.state_dir)
        export = self.lender.export(device, self.workdir / f"export-{device}.jsonl")
        rows = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
        keys = [DeviceKey(d["device"], bytes.fromhex(d["public_key_hex"])) for d in self.lender.devices()]
        return invariant.check(device, head_seq=head_seq, rows=rows, keys=keys, spooled=spooled or ())

    def envelopes(self) -> list:
        """The device's envelopes as the lender exported them at the end (`finish()` first), decoded, by seq."""
        return [envelope for envelope, _ in self.received()]

    def received(self) -> list[tuple]:
        """(envelope, when the lender stored it: wall seconds) as the lender exported them at the end, by seq."""
        import base64
        from datetime import datetime

        from telemetry.envelope import decode

        export = self.workdir / f"export-{self.device}.jsonl"
        if not export.exists():
            raise BenchError("no export yet: call finish() before reading the lender's envelopes")
        rows = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
        pairs = [(decode(base64.b64decode(row["envelope_b64"])), datetime.fromisoformat(row["received_at"]).timestamp())
                 for row in rows]
        return sorted(pairs, key=lambda pair: pair[0].seq)

    def spooled_envelopes(self) -> list:
        """The envelopes waiting in the agent's spool right now, decoded (read-only; the agent keeps running)."""
        import sqlite3

        from hil.observer import SPOOL_FILE
        from telemetry.envelope import decode

        path = self.state_dir / SPOOL_FILE
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            raws = conn.execute("SELECT raw FROM alarm UNION ALL SELECT raw FROM routine").fetchall()
        except sqlite3.Error:
            return []
        finally:
            conn.close()
        return sorted((decode(raw) for raw, in raws), key=lambda e: e.seq)

    def close(self) -> None:
        """Stop everything (idempotent); the run directory and logs stay for the report."""
        if self.observer is not None:
            self.observer.stop()
            self.result.samples = self.observer.samples()
        errors = []
        for part in (self.agent, self.socat, self.lender):
            if part is None:
                continue
            try:
                part.stop(grace_s=10)
            except BenchError as exc:
                errors.append(str(exc))
        if self.proxy is not None:
            self.result.proxy = {d: {k: getattr(s, k) for k in s.__slots__} for d, s in self.proxy.stats().items()}
            self.proxy.stop()
        if self.modem_simulator is not None:
            self.modem_simulator.stop()
        for simulator in self.node_modems.values():
            simulator.stop()
        if self.relay is not None:
            self.relay.close()
        if self.disk is not None:
            self.disk.release()
        self.faults.end_all()
        self.result.faults = self.faults.records()
        self.result.fault_delivery = measure.delivery_per_fault(self.result.faults, self.result.samples)
        self.result.ended = time.time()
        if self.agent is not None:
            self.result.agent_starts = self.agent.starts
            self.result.power_cuts = self.agent.power_cuts
        if errors:
            log.error("bench teardown: %s", "; ".join(errors))
