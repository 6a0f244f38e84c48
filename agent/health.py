"""agent.health — the modem health monitor: status telemetry, a capped recovery ladder, and who the modem is.

Layer 4 of the modem stack (transport → AT channel → modem driver → **health
monitor**). Every `status_interval_s` the monitor asks the modem (through
`agent.modem.ModemLink`) for its SIM, registration, operator, cell and
signal and records the answer as signed telemetry (`modem.*` records, see
docs/modem-health.md). What it does when something is wrong is decided by
`RecoveryPolicy`, pure code over observations and a clock:

* **modem sick** — no answer, garbage, or its port is gone. The ladder is
  climbed one rung per failed probe, with a growing wait after each
  (`backoff_s` × 2^rung): re-query → AT+CFUN=0 then 1 → AT+CFUN=1,1 (reboot,
  wait for the port to come back) → power-cycle through the `ModemPowerLine`
  (if there is one) → stop: raise ``alarm.modem-down.gateway`` and only probe,
  every `slow_probe_s`. A port that is gone skips the rungs that need it.
* **network refuses** — the modem answers fine but is not registered
  (denied, searching: a wrong APN, a barred SIM, no coverage). The modem is
  *not* reset: status keeps going out, ``alarm.registration.gateway`` is
  raised after `refused_alarm_after_s`, and at most a radio re-attach
  (AT+CFUN=0/1) is tried after `refused_reattach_s`, then twice as long each
  time, up to every 6 h.
* Every reset, of either kind, counts against one cap, `max_resets_per_hour`
  in any sliding hour; a rung the cap forbids waits until the cap allows it
  (and the modem-down alarm is raised meanwhile). So a gateway never enters
  a reset loop, whatever the modem and the network do.

The IMEI and ICCID of every good probe go to the agent's `modem_identity`
entry point, where the edge rules (agent.rules) enroll the first ones and raise
``alarm.sim.gateway`` / ``alarm.modem.gateway`` on a change: the tamper alarm
lives in one place. A SIM URC (``+CPIN:``) or a modem that announces a reboot
(``RDY``) triggers a probe at once, at most one per `URC_PROBE_GAP_S`; a udev
remove of the AT port closes it and an add reopens it (drivers.hotplug).
Raised alarms and the resets of the last hour are kept in a state file
(`HealthStateFile`), so a restarted agent clears what it raised and an agent
that keeps restarting cannot reset the modem more often than the cap either.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from agent.exc import ModemHealthConfigError, StateError
from agent.modem import ModemLink, ModemStatus
from agent.state import AtomicJSONStorage
from drivers.at import Urc
from drivers.exc import DriverError, HotplugError
from drivers.gpio import ModemPowerLine, PowerLineConfig
from drivers.hotplug import ModemPortWatcher
from drivers.modem.detect import DRIVERS
from telemetry.alarms import GATEWAY, SEVERITY, alarm_name
from telemetry.senml import Record

log = logging.getLogger(__name__)

HOUR_S = 3600.0
#: Longest wait between radio re-attaches while the network refuses the modem.
MAX_REATTACH_S = 6 * HOUR_S
#: URC-triggered probes (SIM changed, modem rebooted) come at most this often, whatever a URC storm does.
URC_PROBE_GAP_S = 10.0
#: URCs that mean "look now": the SIM changed or the modem restarted on its own.
WAKE_URC_PREFIXES = ("+CPIN:", "+QUSIM:", "+SIMCARD:")
WAKE_URC_LINES = ("RDY",)

HEALTH_KINDS = ("modem-down", "registration")


@dataclass(frozen=True, slots=True)
class ModemHealthConfig:
    """The [modem] table: where the modem is and how patiently it is looked after (times in seconds)."""

    port: str = "/dev/pledgewatch-modem-at"  # the stable symlink of drivers/udev/99-pledgewatch-modem.rules
    model: str = "auto"
    status_interval_s: float = 300.0
    command_timeout_s: float = 5.0
    cfun_timeout_s: float = 15.0  # Quectel RM5xxQ manual: AT+CFUN answers within 15 s
    backoff_s: float = 30.0
    max_resets_per_hour: int = 3
    slow_probe_s: float = 900.0
    refused_alarm_after_s: float = 600.0
    refused_reattach_s: float = 1800.0  # 0: never re-attach while the network refuses
    port_return_s: float = 60.0
    boot_s: float = 30.0
    hotplug: bool = True
    power_pin: int | None = None
    power_active_high: bool = True
    power_off_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, str) or not self.port:
            raise ModemHealthConfigError(f"port {self.port!r} must be a device path or a pyserial URL")
        if self.model != "auto" and self.model not in DRIVERS:
            raise ModemHealthConfigError(f"model {self.model!r} is unknown; allowed: auto, {', '.join(sorted(DRIVERS))}")
        for key in ("status_interval_s", "command_timeout_s", "cfun_timeout_s", "backoff_s", "slow_probe_s",
                    "port_return_s", "boot_s", "power_off_s"):
            if not getattr(self, key) > 0:
                raise ModemHealthConfigError(f"{key} = {getattr(self, key)!r} must be > 0")
        for key in ("refused_alarm_after_s", "refused_reattach_s"):
            if not getattr(self, key) >= 0:
                raise ModemHealthConfigError(f"{key} = {getattr(self, key)!r} must be >= 0")
        if isinstance(self.max_resets_per_hour, bool) or not isinstance(self.max_resets_per_hour, int) \
                or self.max_resets_per_hour < 1:
            raise ModemHealthConfigError(f"max_resets_per_hour = {self.max_resets_per_hour!r} must be an integer >= 1 "
                                         "(recovery needs at least one reset; the cap is what prevents reset loops)")
        if self.power_pin is not None:
            self.power_line()  # validated by the driver's own config

    def power_line(self) -> PowerLineConfig | None:
        """The power line's driver config, or None when no `power_pin` is given."""
        if self.power_pin is None:
            return None
        try:
            return PowerLineConfig(self.power_pin, active_high=self.power_active_high, off_s=self.power_off_s)
        except ValueError as exc:
            raise ModemHealthConfigError(f"power_pin / power_off_s: {exc}") from exc


# --- the policy: pure ------------------------------------------------------------------------


class Outcome(str, Enum):
    """What one probe found."""

    HEALTHY = "healthy"  # answers and is registered
    REFUSED = "refused"  # answers, but the network does not register it
    SICK = "sick"  # no answer, garbage, or its port is gone


@dataclass(frozen=True, slots=True)
class Observation:
    outcome: Outcome
    port_present: bool = True
    detail: str = ""


class Recovery(str, Enum):
    """The rungs of the ladder, in order."""

    REQUERY = "requery"
    RADIO_CYCLE = "cfun-cycle"  # AT+CFUN=0 then AT+CFUN=1
    REBOOT = "reboot"  # AT+CFUN=1,1
    POWER_CYCLE = "power-cycle"  # the ModemPowerLine

    @property
    def is_reset(self) -> bool:
        """Whether it disturbs the modem (and counts against the hourly cap)."""
        return self is not Recovery.REQUERY


LADDER = (Recovery.REQUERY, Recovery.RADIO_CYCLE, Recovery.REBOOT, Recovery.POWER_CYCLE)
_NEEDS_PORT = frozenset({Recovery.RADIO_CYCLE, Recovery.REBOOT})


@dataclass(frozen=True, slots=True)
class AlarmChange:
    """``alarm.<kind>.gateway`` raised or cleared, in the layout of agent.rules' alarms (docs/wire-format.md)."""

    kind: str  # "modem-down" | "registration"
    state: str  # "raised" | "cleared"
    detail: str

    @property
    def name(self) -> str:
        return alarm_name(self.kind, GATEWAY)

    def records(self, time: float | None) -> list[Record]:
        return [Record(self.name, string=self.state, time=time),
                Record(f"{self.name}.severity", string=SEVERITY[self.kind], time=time),
                Record(f"{self.name}.detail", string=self.detail[:160], time=time)]


@dataclass(frozen=True, slots=True)
class Plan:
    """The policy's answer to one observation: do `recovery` now (if any), then probe again after `next_probe_s`."""

    health: str  # "ok" | "refused" | "recovering" | "capped" | "down"
    next_probe_s: float
    recovery: Recovery | None = None
    alarms: tuple[AlarmChange, ...] = ()


class RecoveryPolicy:
    """Decides, from each probe's outcome and the time, what to do next (see the module docstring).

    Pure: no I/O, no clock of its own; `now` is any monotonic seconds.
    """

    def __init__(self, config: ModemHealthConfig, *, has_power_line: bool) -> None:
        self.config = config
        self.ladder = tuple(r for r in LADDER if r is not Recovery.POWER_CYCLE or has_power_line)
        self.rung = 0  # index of the next rung to try while the modem is sick
        self.tried: list[Recovery] = []
        self.gave_up = False
        self.resets: deque[float] = deque()  # times of resets within the last hour
        self.raised: set[str] = set()
        self.refused_since: float | None = None
        self.reattach_at: float | None = None
        self.reattaches = 0

    def snapshot(self, now: float) -> dict:
        """What must outlive an agent restart (JSON-able): the raised alarms and the resets of the last hour."""
        self.resets_in_last_hour(now)
        return {"raised": sorted(self.raised), "resets": list(self.resets)}

    def restore(self, saved: Mapping, now: float) -> None:
        """Take back a snapshot, so a restarted agent clears what it raised and keeps counting against the cap."""
        raised = saved.get("raised", [])
        resets = saved.get("resets", [])
        self.raised = {k for k in raised if k in HEALTH_KINDS} if isinstance(raised, list) else set()
        times = [t for t in resets if isinstance(t, (int, float)) and not isinstance(t, bool)] \
            if isinstance(resets, list) else []
        self.resets = deque(sorted(t for t in times if now - HOUR_S < t <= now))

    def resets_in_last_hour(self, now: float) -> int:
        while self.resets and self.resets[0] <= now - HOUR_S:
            self.resets.popleft()
        return len(self.resets)

    def _cap_allows(self, now: float) -> bool:
        return self.resets_in_last_hour(now) < self.config.max_resets_per_hour

    def _cap_frees_at(self) -> float:
        return self.resets[0] + HOUR_S

    def _raise(self, kind: str, detail: str) -> tuple[AlarmChange, ...]:
        if kind in self.raised:
            return ()
        self.raised.add(kind)
        return (AlarmChange(kind, "raised", detail),)

    def _clear(self, kind: str, detail: str) -> tuple[AlarmChange, ...]:
        if kind not in self.raised:
            return ()
        self.raised.discard(kind)
        return (AlarmChange(kind, "cleared", detail),)

    def _answers_again(self) -> tuple[AlarmChange, ...]:
        self.rung, self.tried, self.gave_up = 0, [], False
        return self._clear("modem-down", "the modem answers again")

    def observe(self, observation: Observation, now: float) -> Plan:
        if observation.outcome is Outcome.HEALTHY:
            alarms = self._answers_again() + self._clear("registration", "registered again")
            self.refused_since, self.reattach_at, self.reattaches = None, None, 0
            return Plan("ok", self.config.status_interval_s, None, alarms)
        if observation.outcome is Outcome.REFUSED:
            return self._refused(observation, now)
        return self._sick(observation, now)

    def _refused(self, observation: Observation, now: float) -> Plan:
        cfg = self.config
        alarms = self._answers_again()
        if self.refused_since is None:
            self.refused_since = now
            self.reattach_at = now + cfg.refused_reattach_s if cfg.refused_reattach_s > 0 else None
            self.reattaches = 0
        refused_for = now - self.refused_since
        if refused_for >= cfg.refused_alarm_after_s:
            alarms += self._raise("registration", f"not registered for {refused_for:.0f} s: "
                                                  f"{observation.detail or 'the network refuses the modem'}")
        recovery = None
        if self.reattach_at is not None and now >= self.reattach_at:
            if self._cap_allows(now):
                recovery = Recovery.RADIO_CYCLE
                self.resets.append(now)
                self.reattaches += 1
                self.reattach_at = now + min(cfg.refused_reattach_s * 2 ** self.reattaches, MAX_REATTACH_S)
            else:
                self.reattach_at = self._cap_frees_at()
        return Plan("refused", cfg.status_interval_s, recovery, alarms)

    def _sick(self, observation: Observation, now: float) -> Plan:
        cfg = self.config
        if self.gave_up:
            return Plan("down", cfg.slow_probe_s)
        usable = [i for i in range(self.rung, len(self.ladder))
                  if observation.port_present or self.ladder[i] not in _NEEDS_PORT]
        what = observation.detail or "no answer"
        if not usable:
            self.gave_up = True
            tried = ", ".join(r.value for r in self.tried if r.is_reset) or "nothing it could try"
            alarms = self._raise("modem-down", f"{what}; tried {tried}; now probing every {cfg.slow_probe_s:.0f} s")
            return Plan("down", cfg.slow_probe_s, None, alarms)
        index = usable[0]
        step = self.ladder[index]
        if step.is_reset and not self._cap_allows(now):
            wait = max(cfg.backoff_s, self._cap_frees_at() - now)
            alarms = self._raise("modem-down", f"{what}; the cap of {cfg.max_resets_per_hour} resets per hour is "
                                               f"reached, {step.value} in {wait:.0f} s")
            return Plan("capped", wait, None, alarms)
        self.rung = index + 1
        self.tried.append(step)
        if step.is_reset:
            self.resets.append(now)
        return Plan("recovering", cfg.backoff_s * 2 ** index, step)


class HealthStateFile:
    """The policy's snapshot on disk (agent.state's atomic, checksummed JSON), tied to this boot of the host.

    Reset times are monotonic seconds, which mean nothing after the host
    reboots: a snapshot from another boot (``/proc/sys/kernel/random/boot_id``)
    keeps its raised alarms but not its resets. A damaged file is logged and
    ignored: the worst case is an alarm raised again, or one more reset.
    """

    TABLE = "modem_health"  # agent.state's format holds tables of JSON objects

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._storage = AtomicJSONStorage(self.path)
        self._last: dict | None = None

    @staticmethod
    def boot_id() -> str:
        try:
            return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""

    def load(self) -> dict:
        try:
            saved = (self._storage.read() or {}).get(self.TABLE, {})
        except StateError as exc:
            log.error("modem health: %s; starting without the saved state", exc)
            return {}
        if saved.get("boot_id") != self.boot_id():
            saved = {**saved, "resets": []}
        return saved

    def save(self, snapshot: dict) -> None:
        snapshot = {**snapshot, "boot_id": self.boot_id()}
        if snapshot == self._last:
            return
        try:
            self._storage.write({self.TABLE: snapshot})
            self._last = snapshot
        except StateError as exc:
            log.error("modem health: cannot save its state: %s", exc)


# --- the monitor: async, around the link ----------------------------------------------------

RecordSink = Callable[[list[Record]], object]
IdentitySink = Callable[..., object]  # Agent.modem_identity(*, imei=..., iccid=...)
Sleep = Callable[[float], Awaitable[None]]


class ModemHealthMonitor:
    """Probes the modem, records status and alarms, and performs the policy's recoveries.

    `clock` (monotonic seconds) and `sleep` pace the probes, so a test can
    run a simulated day on a virtual clock; `wall` stamps the records.
    `watcher` follows the AT port's udev adds and removes.
    """

    def __init__(
        self,
        config: ModemHealthConfig,
        link: ModemLink,
        *,
        watcher: ModemPortWatcher | None = None,
        state_file: HealthStateFile | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.link = link
        self.watcher = watcher
        self.policy = RecoveryPolicy(config, has_power_line=link.power_line is not None)
        self.state_file = state_file
        if state_file is not None:
            self.policy.restore(state_file.load(), clock())
        self.clock = clock
        self.wall = wall
        self._sleep = sleep
        self.actions: list[tuple[float, Recovery]] = []  # every recovery performed, at `clock` time
        self.hotplug_events: list[str] = []
        self.last_status: ModemStatus | None = None
        self.last_plan: Plan | None = None
        self.probes = 0
        self._last_probe = float("-inf")
        self._wake = asyncio.Event()
        self._urgent = False  # the port was just added: probe now, whatever the gap
        self._urc_pending = False  # a SIM or boot URC came: probe soon (URC_PROBE_GAP_S after the last probe)
        self._restarted = False  # the modem announced a reboot we did not ask for: reopen and prepare it again
        self._identity_told: tuple[str | None, str | None] = (None, None)  # last (IMEI, ICCID) given to on_identity

    @classmethod
    def build(cls, config: ModemHealthConfig, *, pin_factory: object | None = None,
              watcher: ModemPortWatcher | None = None, state_dir: Path | None = None, **pacing) -> ModemHealthMonitor:
        """The monitor, its link and power line as `config` describes them (the power line is switched on).

        With `state_dir`, raised alarms and recent resets are kept in `modem-health.json` there across restarts.
        """
        line_config = config.power_line()
        power_line = ModemPowerLine(line_config, pin_factory=pin_factory) if line_config is not None else None
        link = ModemLink(config.port, model=config.model, command_timeout_s=config.command_timeout_s,
                         cfun_timeout_s=config.cfun_timeout_s, port_return_s=config.port_return_s,
                         boot_s=config.boot_s, power_line=power_line)
        if watcher is None and config.hotplug:
            watcher = ModemPortWatcher()
        state_file = HealthStateFile(state_dir / "modem-health.json") if state_dir is not None else None
        return cls(config, link, watcher=watcher, state_file=state_file, **pacing)

    def close(self) -> None:
        """Release the power line's GPIO (the port is closed when `run` ends)."""
        if self.link.power_line is not None:
            self.link.power_line.close()

    # --- one probe ---

    async def _observe(self) -> tuple[Observation, ModemStatus | None]:
        link = self.link
        try:
            if not link.is_open:
                if not link.port_present():
                    return Observation(Outcome.SICK, False, f"port {link.port} is gone"), None
                await link.open()
                self._restarted = False
            status = await link.status()
        except DriverError as exc:
            return Observation(Outcome.SICK, link.port_present(), f"{type(exc).__name__}: {exc}"[:160]), None
        if status.registered:
            return Observation(Outcome.HEALTHY), status
        detail = f"registration {status.registration_name}"
        if status.refusals:
            detail += f"; {status.refusals[0]}"
        return Observation(Outcome.REFUSED, True, detail), status

    async def step(self, record: RecordSink, on_identity: IdentitySink | None = None) -> Plan:
        """Probe once, record what was found and decided, and perform the recovery the policy chose."""
        if self._restarted:
            log.warning("modem on %s restarted on its own (RDY); opening it again", self.link.port)
            await self.link.close()
        observation, status = await self._observe()
        now = self.clock()
        self._last_probe = now
        self.probes += 1
        plan = self.policy.observe(observation, now)
        self.last_plan = plan
        t = self.wall()
        records = status.records(t) if status is not None else []
        records.append(Record("modem.health", string=plan.health, time=t))
        if observation.outcome is Outcome.SICK:
            records.append(Record("modem.problem", string=observation.detail[:160] or "no answer", time=t))
        if plan.recovery is not None:
            records.append(Record("modem.recovery", string=plan.recovery.value, time=t))
        record(records)
        if status is not None:
            self.last_status = status
            identity = (status.imei, status.iccid)
            if on_identity is not None and any(identity) and identity != self._identity_told:
                try:
                    on_identity(imei=status.imei, iccid=status.iccid)  # the rules enroll it, or raise the tamper alarm
                    self._identity_told = identity
                except Exception:  # a rules bug must not cost this probe's alarms or recovery; told again next probe
                    log.exception("modem health: handing over IMEI/ICCID failed")
        for alarm in plan.alarms:
            log.warning("modem health: %s %s: %s", alarm.name, alarm.state, alarm.detail)
            record(alarm.records(t))
        if self.state_file is not None and (plan.alarms or (plan.recovery and plan.recovery.is_reset)):
            self.state_file.save(self.policy.snapshot(now))  # before the reset: a crash mid-reset still counts it
        if plan.recovery is not None:
            self.actions.append((now, plan.recovery))
            await self._recover(plan.recovery)
        return plan

    async def _recover(self, recovery: Recovery) -> None:
        log.warning("modem on %s: recovery %s (%d reset(s) in the last hour)", self.link.port, recovery.value,
                    self.policy.resets_in_last_hour(self.clock()))
        try:
            if recovery is Recovery.RADIO_CYCLE:
                await self.link.radio_cycle()
            elif recovery is Recovery.REBOOT:
                await self.link.reboot()
            elif recovery is Recovery.POWER_CYCLE:
                await self.link.power_cycle()
        except DriverError as exc:  # the next probe judges whether it helped
            log.warning("modem on %s: %s failed: %s", self.link.port, recovery.value, exc)
        self._urc_pending = False  # the boot and SIM URCs of a reset we asked for are no news
        if self.link.is_open:
            self._restarted = False

    # --- the loop ---

    def _on_urc(self, urc: Urc) -> None:
        if urc.line in WAKE_URC_LINES:
            self._restarted = True
        self._urc_pending = True
        self._wake.set()

    def _port_came_back(self) -> bool:
        """An add event arrived for a port this monitor has closed (an add after its own reset is no news)."""
        if self._urgent and self.link.is_open:
            self._urgent = False
        return self._urgent

    async def _pause(self, delay: float) -> None:
        """Wait `delay` on the monitor's clock, or less: an added port ends it at once, a SIM/boot URC after the gap."""
        deadline = self.clock() + delay
        while not self._port_came_back():
            if self._urc_pending:
                self._urc_pending = False
                deadline = min(deadline, self._last_probe + URC_PROBE_GAP_S)
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self._wake.clear()  # every flag it stands for was read above, with no await since
            sleeper = asyncio.ensure_future(self._sleep(remaining))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            if not self._wake.is_set():
                break  # slept the whole remaining time
        self._urgent = self._urc_pending = False
        self._wake.clear()

    async def _follow_hotplug(self) -> None:
        assert self.watcher is not None
        try:
            async for event in self.watcher.events():
                self.hotplug_events.append(event.action)
                if event.action == "remove":
                    log.warning("modem AT port %s removed (%s): closing %s", event.port.device_node, event.port.model,
                                self.link.port)
                    await self.link.close()
                else:
                    log.info("modem AT port %s added (%s): reopening %s", event.port.device_node, event.port.model,
                             self.link.port)
                    self._urgent = True
                    self._wake.set()
        except HotplugError as exc:
            log.warning("modem hot-plug events unavailable (%s); the status probes reopen the port instead", exc)

    async def run(self, record: RecordSink, on_identity: IdentitySink | None = None) -> None:
        """Probe and recover until cancelled; the port is closed at the end."""
        subscription = self.link.channel.subscribe(self._on_urc, WAKE_URC_PREFIXES + WAKE_URC_LINES)
        follower = asyncio.create_task(self._follow_hotplug(), name="modem hot-plug") if self.watcher else None
        try:
            while True:
                try:
                    plan = await self.step(record, on_identity)
                    delay = plan.next_probe_s
                except Exception:  # a bug here must not stop the agent's sampling; try again later
                    log.exception("modem health probe failed")
                    delay = self.config.status_interval_s
                await self._pause(delay)
        finally:
            subscription.cancel()
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
            await self.link.close()
