"""`provision check`: the pre-flight on a provisioned gateway, a pass/fail table, and a signed installation report.

Run on the gateway with the agent stopped (the check uses the agent's own
key, spool and OSCORE context, which one process at a time may hold):

* **modem registered** and **signal** (RSRP, or RSSI when the modem gives no
  RSRP) above a threshold, over the modem's AT port;
* **time synchronized**: the gateway's clock within a few seconds of the
  network's time (``AT+CCLK``, NITZ): signed readings carry this clock;
* **each sensor** of agent.toml answers with a plausible value (a DS18B20
  between -55 and 125 °C, a contact open or closed, ...);
* **tamper switch**: the technician is asked to open the enclosure door and
  close it again, and the input is watched until it has seen both; those
  two changes are recorded like the agent records them (signed, chained);
* **round trip**: a ``check.ping`` reading is signed into the agent's chain and
  sent with the agent's uplink (OSCORE); it passes when the lender acks it as
  verified and stored — together with whatever the spool held before it.

The table goes to the technician; the report — the same rows, signed by the
gateway's key and the technician's key — goes to the lender's
``/installations`` (kept in ``DATA/enroll/reports/<device>/``).
"""
from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioning.console import Console
from provisioning.enrollment import send_report
from provisioning.exc import CheckError, LenderUnreachableError, ProvisioningError
from provisioning.install import write_file
from provisioning.technician import TechnicianProfile, technician_from
from telemetry.enrollment import CheckResult, InstallationReport

PING = "check.ping"


@dataclass
class CheckOptions:
    config: Path
    technician: TechnicianProfile
    lender: str
    modem_port: str | None = None
    min_rsrp: float = -115.0
    min_rssi: float = -100.0
    max_clock_skew: float = 10.0
    tamper: str | None = "tamper"
    tamper_wait: float = 60.0
    timeout: float = 20.0
    pin_factory: object | None = None
    ask: Callable[[str], None] = print
    clock: Callable[[], float] = time.time


@dataclass
class CheckRun:
    results: list[CheckResult] = field(default_factory=list)
    report_receipt: str | None = None
    report_file: str | None = None

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.results.append(CheckResult(name, passed, detail))

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)


async def _modem_checks(options: CheckOptions, run: CheckRun) -> None:
    from drivers.at import AtChannel, ChannelConfig
    from drivers.exc import AtResultError, DriverError
    from drivers.modem import open_modem
    from provisioning.serialport import check_port

    try:
        check_port(options.modem_port)
    except ProvisioningError as exc:
        for name in ("modem registered", "signal", "time synchronized"):
            run.add(name, False, str(exc))
        return
    channel = AtChannel(ChannelConfig(options.modem_port, default_timeout_s=5.0))
    try:
        await channel.open()
        modem = await open_modem(channel)
        try:
            registration = await modem.registration()
            run.add("modem registered", registration.registered,
                    f"{registration.status.name.lower().replace('_', ' ')} ({registration.domain})"
                    + ("" if registration.registered else ": check the SIM, the antenna and the operator"))
        except DriverError as exc:
            run.add("modem registered", False, f"the modem did not say: {exc}")
        rsrp = None
        if hasattr(modem, "serving_cell"):  # vendor drivers: per-cell RSRP, 5G included (CESQ is LTE-only)
            try:
                cells = (await modem.serving_cell()).cells
                values = [c.rsrp_dbm for c in cells if c.rsrp_dbm is not None]
                rsrp = max(values) if values else None
            except DriverError:
                rsrp = None
        if rsrp is None:
            try:
                rsrp = (await modem.extended_signal_quality()).rsrp_dbm
            except (AtResultError, DriverError):
                rsrp = None
        if rsrp is not None:
            run.add("signal", rsrp >= options.min_rsrp, f"RSRP {rsrp:g} dBm (at least {options.min_rsrp:g})"
                    + ("" if rsrp >= options.min_rsrp else ": move the antenna or fit an external one"))
        else:
            try:
                rssi = (await modem.signal_quality()).rssi_dbm
            except DriverError as exc:
                rssi, detail = None, str(exc)
            else:
                detail = "no signal" if rssi is None else f"RSSI {rssi} dBm (at least {options.min_rssi:g})"
            run.add("signal", rssi is not None and rssi >= options.min_rssi, detail)
        try:
            network = await modem.network_time()
            skew = options.clock() - network.timestamp()
            run.add("time synchronized", abs(skew) <= options.max_clock_skew,
                    f"gateway clock {skew:+.1f} s from network time (within ±{options.max_clock_skew:g})"
                    + ("" if abs(skew) <= options.max_clock_skew else
                       ": enable NTP (timedatectl set-ntp true) or set the clock"))
        except DriverError as exc:
            run.add("time synchronized", False, f"the modem gives no network time ({exc})")
    except DriverError as exc:
        for name in ("modem registered", "signal", "time synchronized"):
            if name not in {r.name for r in run.results}:
                run.add(name, False, f"modem on {options.modem_port}: {exc}")
    finally:
        await channel.close()


def _plausible(kind: str, samples: list) -> tuple[bool, str]:
    if not samples:
        return False, "no value"
    value = samples[0].value
    unit = samples[0].unit or ""
    text = f"{value} {unit}".strip()
    if kind == "ds18b20":
        ok = isinstance(value, (int, float)) and -55.0 <= value <= 125.0
        return ok, text if ok else f"{text}: outside the DS18B20's -55..125 °C"
    if kind in ("contact", "motion"):
        return isinstance(value, bool), ("open" if value else "closed") if kind == "contact" else text
    if kind == "run-hours":
        ok = all(isinstance(s.value, (int, float, bool)) for s in samples)
        return ok, ", ".join(f"{s.name}={s.value}" for s in samples)
    return True, ", ".join(f"{s.name}={s.value}" for s in samples)[:120]


def _kind_of(config: object) -> str:
    from agent.config import SENSOR_KINDS
    return next((kind for kind, cls in SENSOR_KINDS.items() if isinstance(config, cls)), "sensor")


async def _sensor_checks(options: CheckOptions, agent_config, sensors: list, run: CheckRun, recorder) -> None:
    from agent.daemon import sample_record
    from drivers.exc import SensorFault
    from drivers.sensor import read_isolated

    for config, sensor in zip(agent_config.sensors, sensors):
        result = await read_isolated(sensor, 10.0)
        if isinstance(result, SensorFault):
            run.add(f"sensor {sensor.name}", False, f"{result}: check its wiring")
            continue
        ok, detail = _plausible(_kind_of(config), result)
        run.add(f"sensor {sensor.name}", ok, detail)
        if ok and result:
            recorder.record([sample_record(s) for s in result])


async def _tamper_check(options: CheckOptions, sensors: list, run: CheckRun, recorder) -> None:
    from agent.daemon import sample_record
    from drivers.gpio import ContactSensor

    sensor = next((s for s in sensors if s.name == options.tamper), None)
    if not isinstance(sensor, ContactSensor):
        run.add("tamper switch", False, f"no contact sensor named {options.tamper!r} in the config "
                                        "(or pass --no-tamper if none is fitted)")
        return
    if sensor.is_open:
        run.add("tamper switch", False, "reads OPEN with the door shut: check the switch and its wiring")
        return
    seen: list = []
    changed = asyncio.Event()

    def listener(sample) -> None:
        seen.append(sample)
        changed.set()

    unsubscribe = sensor.subscribe(listener)
    watcher = asyncio.create_task(sensor.watch())
    options.ask(f"open the enclosure door now, then close it again (waiting {options.tamper_wait:.0f} s)")
    deadline = time.monotonic() + options.tamper_wait
    try:
        while not (any(s.value is True for s in seen) and seen and seen[-1].value is False):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        unsubscribe()
    for sample in seen:
        recorder.record([sample_record(sample)])
    opened = any(s.value is True for s in seen)
    closed_again = bool(seen) and seen[-1].value is False
    if opened and closed_again:
        run.add("tamper switch", True, "saw the door open and close")
    elif opened:
        run.add("tamper switch", False, "saw the door open but not close again: check the switch returns")
    else:
        run.add("tamper switch", False, f"no change within {options.tamper_wait:.0f} s: check the switch and wiring")


async def _round_trip(agent_config, spool, recorder, run: CheckRun, timeout: float, clock) -> None:
    from agent.uplink import Result, Uplink
    from telemetry.senml import Record

    ping = recorder.record([Record(PING, string="pre-flight", time=clock())])
    uplink = Uplink(agent_config.uplink, spool, tokens=recorder.tokens)
    try:
        await uplink.start()
    except Exception as exc:
        run.add("round trip", False, f"cannot start the uplink: {exc}")
        return
    deadline = time.monotonic() + timeout
    detail = "no answer"
    acked: set[int] = set()
    try:
        while time.monotonic() < deadline:
            exchange = await uplink.send_once()
            if exchange.result is Result.DELIVERED:
                refused = {r.seq for r in exchange.set_aside + exchange.retry_later}
                acked |= set(exchange.sent) - refused
            if ping.seq in acked:
                run.add("round trip", True, f"envelope seq {ping.seq} verified and stored by the lender")
                return
            if exchange.result is Result.IDLE:
                detail = "the ping left the spool without an ack"
                break
            detail = exchange.detail or exchange.result.value
            if exchange.result in (Result.FAILED, Result.NO_PROGRESS):
                await asyncio.sleep(0.5)
        run.add("round trip", False, f"envelope seq {ping.seq} not acked within {timeout:.0f} s ({detail})"[:300])
    finally:
        await uplink.close()


async def run_checks(options: CheckOptions) -> tuple[CheckRun, object]:
    from agent import config as config_module
    from agent.cli import open_parts
    from agent.exc import AgentError
    from agent.freshness import TOKEN_FILE, LenderTokens
    from agent.recorder import Recorder
    from agent.sensors import build_sensors
    from telemetry.exc import TelemetryError

    try:
        agent_config = config_module.load(options.config)
    except AgentError as exc:
        raise CheckError(f"cannot read the gateway's config: {exc}") from exc
    run = CheckRun()
    if options.modem_port is not None:
        await _modem_checks(options, run)
    try:
        identity, spool, state = open_parts(agent_config)
    except (AgentError, TelemetryError) as exc:
        raise CheckError(f"cannot open the agent's key and spool ({exc}); stop the agent first "
                         "(sudo systemctl stop pledgewatch-agent)") from exc
    sensors = []
    try:
        sensors = build_sensors(agent_config.sensors, pin_factory=options.pin_factory)
        # signed exactly as the agent signs: bound to the enrollment, carrying the newest lender token
        tokens = LenderTokens(agent_config.device.state_dir / TOKEN_FILE)
        recorder = Recorder.start(identity, agent_config.device.id, spool, state, now=options.clock(),
                                  binding=agent_config.device.binding_bytes, tokens=tokens)
        await _sensor_checks(options, agent_config, sensors, run, recorder)
        if options.tamper is not None:
            await _tamper_check(options, sensors, run, recorder)
        await _round_trip(agent_config, spool, recorder, run, options.timeout, options.clock)
        state.mark_clean_shutdown()
    finally:
        for sensor in sensors:
            if hasattr(sensor, "close"):
                sensor.close()
        spool.close()
    return run, (agent_config, identity)


def report_and_send(options: CheckOptions, run: CheckRun, agent_config, identity) -> None:
    report = InstallationReport(agent_config.device.id, options.technician.technician, int(options.clock()),
                                tuple(run.results))
    signed = report.sign(identity, identity.kid, options.technician.identity())
    try:
        run.report_receipt = asyncio.run(send_report(options.lender, signed, timeout=options.timeout))
    except LenderUnreachableError:
        saved = agent_config.device.state_dir / f"installation-report-{report.at}.cbor"
        write_file(saved, signed, 0o640)
        run.report_file = str(saved)


def run_cli(args: argparse.Namespace, console: Console) -> int:

    profile, lender, _ = technician_from(args, required=True)
    options = CheckOptions(args.config, profile, lender, args.modem, args.min_rsrp, args.min_rssi,
                           args.max_clock_skew, None if args.no_tamper else args.tamper, args.tamper_wait,
                           args.timeout, ask=lambda text: console.step(f">>> {text}"))
    run, (agent_config, identity) = asyncio.run(run_checks(options))
    report_and_send(options, run, agent_config, identity)
    rows = [(r.name, r.passed, r.detail) for r in run.results]
    lines = console.table(rows)
    verdict = "PASSED" if run.passed else "FAILED"
    lines.append(f"pre-flight {verdict} for {agent_config.device.id}")
    if run.report_receipt:
        lines.append(f"signed installation report stored at the lender: {run.report_receipt}")
    else:
        lines.append(f"the lender could not be reached: report saved in {run.report_file}")
    console.result({"device": agent_config.device.id, "passed": run.passed,
                    "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in rows],
                    "report": run.report_receipt, "report_file": run.report_file}, lines)
    return 0 if run.passed else 1

