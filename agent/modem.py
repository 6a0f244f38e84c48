"""agent.modem — the agent's hold on its modem: one AT channel and driver on the configured port, opened and reopened.

The I/O half of the modem health monitor (`agent.health` holds the policy).
`ModemLink` owns the `AtChannel` for the modem's AT port (by its stable
udev symlink, /dev/pledgewatch-modem-at, so a modem that re-enumerates as
another /dev/ttyUSBn is found again) and the driver picked by model
detection. It performs what the monitor decides and nothing more:

* `open()` — open the port, wait until the modem answers ``AT`` (a modem
  that has just enumerated ignores commands until it has booted), identify
  it, `prepare()` it (echo off, numeric +CME errors, registration reports
  with location) and read its IMEI;
* `status()` — one `ModemStatus`: SIM (ICCID), registration, operator,
  serving cell and signal. A command the modem *answers* with ERROR / +CME
  ERROR leaves its field empty (the modem is alive, it just refuses that);
  no answer, garbage or a port that vanished raise the driver's error, which
  the monitor counts as "modem sick";
* the rungs of the recovery ladder: `radio_cycle()` (AT+CFUN=0 then 1),
  `reboot()` (AT+CFUN=1,1, then wait for the port to go and come back under
  the same path) and `power_cycle()` (through the `ModemPowerLine`).

Every wait here is for the device and uses the event loop's real time; the
monitor's own schedule runs on the clock it is given.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from drivers.at import AtChannel, ChannelConfig
from drivers.exc import AtPortError, AtResultError, AtTimeoutError, CmeError, DriverError, ModemResponseError, PortClosedError
from drivers.gpio import ModemPowerLine
from drivers.modem import ExtendedSignalQuality, Modem, Operator, Registration, ServingCell, open_modem
from drivers.modem.detect import DRIVERS
from telemetry.senml import Record

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often to look for a port that is coming back after a reset.
PORT_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """What one status query found. None: the modem answered that query with an error (see `refusals`)."""

    imei: str | None
    iccid: str | None
    registration: Registration | None
    operator: Operator | None
    serving: ServingCell | None
    signal: ExtendedSignalQuality | None
    model: str | None = None
    refusals: tuple[str, ...] = ()  # "AT+QCCID: SIM not inserted (+CME ERROR: 10)", ...

    @property
    def registered(self) -> bool:
        return self.registration is not None and self.registration.registered

    @property
    def registration_name(self) -> str:
        """``home``, ``roaming``, ``searching``, ``denied``, ``not-registered`` … (``unknown`` if not answered)."""
        if self.registration is None:
            return "unknown"
        return self.registration.status.name.lower().replace("_", "-")

    @property
    def rat(self) -> str | None:
        """The radio access technology in use: the serving cell's mode, else the registration's AcT."""
        if self.serving is not None and self.serving.cells:
            return self.serving.mode.value
        for act in (self.registration.act if self.registration else None, self.operator.act if self.operator else None):
            if act is not None:
                return act.name
        return None

    def records(self, time: float | None) -> list[Record]:
        """The status as SenML records (`modem.*`), units from the SenML registry (dBm: RFC 8798)."""
        out = [Record("modem.registration", string=self.registration_name, time=time)]
        if self.rat is not None:
            out.append(Record("modem.rat", string=self.rat, time=time))
        if self.operator is not None and self.operator.name:
            out.append(Record("modem.operator", string=self.operator.name, time=time))
        cell = self.serving.primary if self.serving is not None else None
        registration = self.registration
        if cell is not None:
            if cell.mcc and cell.mnc:
                out.append(Record("modem.plmn", string=f"{cell.mcc}{cell.mnc}", time=time))
            for name, value in (("modem.cell", cell.cell_id), ("modem.tac", cell.tac)):
                if value is not None:
                    out.append(Record(name, string=f"{value:X}", time=time))
            for name, value in (("modem.pci", cell.pci), ("modem.band", cell.band)):
                if value is not None:
                    out.append(Record(name, value=value, time=time))
            out += _signal(cell.rsrp_dbm, cell.rsrq_db, cell.sinr_db, cell.rssi_dbm, "modem", time)
            nr = self.serving.nr if self.serving is not None else None
            if nr is not None and nr is not cell:  # EN-DC: the NR leg next to the LTE anchor
                out += _signal(nr.rsrp_dbm, nr.rsrq_db, nr.sinr_db, None, "modem.nr", time)
        elif registration is not None and registration.registered:
            for name, value in (("modem.cell", registration.cell_id), ("modem.tac", registration.tac)):
                if value is not None:
                    out.append(Record(name, string=f"{value:X}", time=time))
        if cell is None and self.signal is not None:
            out += _signal(self.signal.rsrp_dbm, self.signal.rsrq_db, None, None, "modem", time)
        if self.iccid is not None:
            out.append(Record("modem.iccid", string=self.iccid, time=time))
        if self.imei is not None:
            out.append(Record("modem.imei", string=self.imei, time=time))
        for refusal in self.refusals[:3]:
            out.append(Record("modem.refused", string=refusal[:120], time=time))
        return out


def _signal(rsrp: float | None, rsrq: float | None, sinr: float | None, rssi: float | None, base: str,
            time: float | None) -> list[Record]:
    out: list[Record] = []
    for name, value, unit in (("rsrp", rsrp, "dBm"), ("rsrq", rsrq, "dB"), ("sinr", sinr, "dB"), ("rssi", rssi, "dBm")):
        if value is not None:
            out.append(Record(f"{base}.{name}", value=value, unit=unit, time=time))
    return out


def _refusal(exc: AtResultError) -> str:
    if isinstance(exc, CmeError):
        return f"{exc.command}: {exc.meaning} ({exc.result})"
    return f"{exc.command}: {exc.result}"


class ModemLink:
    """The modem on `port`: open/close, status queries and the resets of the recovery ladder.

    `model` is ``"auto"`` (ATI / AT+CGMM decide) or a family key of
    `drivers.modem.detect.DRIVERS`. `power_line` is the relay or enable line
    for the last rung, or None when the gateway has none.
    """

    def __init__(
        self,
        port: str,
        *,
        model: str = "auto",
        command_timeout_s: float = 5.0,
        cfun_timeout_s: float = 15.0,
        port_return_s: float = 60.0,
        boot_s: float = 30.0,
        power_line: ModemPowerLine | None = None,
    ) -> None:
        if model != "auto" and model not in DRIVERS:
            raise ValueError(f"modem model {model!r} is unknown; allowed: auto, {', '.join(sorted(DRIVERS))}")
        self.port = port
        self.model = model
        self.command_timeout_s = command_timeout_s
        self.cfun_timeout_s = cfun_timeout_s
        self.port_return_s = port_return_s
        self.boot_s = boot_s
        self.power_line = power_line
        # A timed-out command's late answer is waited for at most this long before the next is sent.
        self.channel = AtChannel(ChannelConfig(port, default_timeout_s=command_timeout_s,
                                               stale_grace_s=min(1.0, command_timeout_s)))
        self.driver: Modem | None = None
        self.imei: str | None = None
        self.opens = 0  # successful opens, for diagnostics and tests

    @property
    def is_open(self) -> bool:
        return self.channel.is_open and self.driver is not None

    def port_present(self) -> bool:
        """Whether the port's device node exists (a dangling udev symlink means the modem is gone)."""
        if "://" in self.port:
            return True  # socket://, rfc2217://: nothing on the file system to look at
        return os.path.exists(self.port)

    async def open(self) -> None:
        """Open the port and get the modem ready; on any failure the port is left closed and the error raised."""
        self.driver = None
        await self.channel.open()
        try:
            await self._until_answering()
            if self.model == "auto":
                driver = await open_modem(self.channel)
            else:
                driver = DRIVERS[self.model](self.channel, None)
            await driver.prepare()
            try:
                self.imei = await self._answered(driver.imei, [])
            except ModemResponseError as exc:  # a corrupt IMEI read is reported, not a reason to reset
                log.warning("modem on %s: %s", self.port, exc)
                self.imei = None
        except BaseException:
            await self.channel.close()
            raise
        self.driver = driver
        self.opens += 1
        ident = driver.identity
        log.info("modem on %s ready: %s (IMEI %s)", self.port,
                 f"{ident.manufacturer} {ident.model}" if ident else driver.family, self.imei)

    async def close(self) -> None:
        self.driver = None
        await self.channel.close()

    async def _until_answering(self) -> None:
        """Send ``AT`` until the modem answers, for at most `boot_s` (a freshly enumerated modem is still booting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_s
        attempt = min(1.0, self.command_timeout_s)
        while True:
            try:
                await self.channel.command("AT", timeout=attempt)
                return
            except (AtTimeoutError, AtResultError):
                if loop.time() >= deadline:
                    raise

    async def _answered(self, query: Callable[[], Awaitable[_T]], refusals: list[str]) -> _T | None:
        """`query()`, or None when the modem answered it with an error (noted in `refusals`)."""
        try:
            return await query()
        except AtResultError as exc:
            refusals.append(_refusal(exc))
            return None

    async def status(self) -> ModemStatus:
        """Query SIM, registration, operator and radio. Raises `DriverError` when the modem does not answer sanely."""
        driver = self.driver
        if driver is None or not self.channel.is_open:
            raise PortClosedError(f"modem port {self.port} is not open")
        await self.channel.command("AT")  # liveness first: a hung modem costs one timeout, not six
        refusals: list[str] = []
        iccid = await self._answered(driver.iccid, refusals)
        registration = await self._answered(driver.registration, refusals)
        operator = await self._answered(driver.operator, refusals)
        serving_cell = getattr(driver, "serving_cell", None)
        serving = await self._answered(serving_cell, refusals) if serving_cell is not None else None
        signal = None
        if serving is None or not serving.cells:
            signal = await self._answered(driver.extended_signal_quality, refusals)
        ident = driver.identity
        return ModemStatus(self.imei, iccid, registration, operator, serving, signal,
                           model=ident.model if ident else None, refusals=tuple(refusals))

    # --- the rungs of the recovery ladder ---

    async def radio_cycle(self) -> None:
        """AT+CFUN=0 then AT+CFUN=1: the radio detaches and attaches again. The second is sent even if the first fails."""
        for command in ("AT+CFUN=0", "AT+CFUN=1"):
            try:
                await self.channel.command(command, timeout=self.cfun_timeout_s)
            except (AtTimeoutError, AtResultError, AtPortError) as exc:
                log.warning("modem on %s: %s failed: %s", self.port, command, exc)

    async def reboot(self) -> bool:
        """AT+CFUN=1,1, then wait for the port to go and come back; True if the modem answers again."""
        try:
            await self.channel.command("AT+CFUN=1,1", timeout=self.cfun_timeout_s)
        except PortClosedError:
            pass  # the port dropped before the OK: that is what a reset looks like from the host
        except (AtTimeoutError, AtResultError, AtPortError) as exc:
            log.warning("modem on %s: AT+CFUN=1,1 failed (%s); reopening the port anyway", self.port, exc)
        # A modem that took the reset drops its USB port within a second or two of its OK.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.channel.wait_closed(), self.command_timeout_s)
        return await self.await_return()

    async def power_cycle(self) -> bool:
        """Cut the modem's power for the line's off time, restore it, wait for the port; True if it answers again."""
        if self.power_line is None:
            raise AtPortError(f"no power line is configured for the modem on {self.port}")
        await self.close()
        await self.power_line.power_cycle()
        return await self.await_return()

    async def await_return(self) -> bool:
        """Close, then wait up to `port_return_s` for the port (same path) to be back and the modem to answer."""
        await self.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.port_return_s
        while True:
            if self.port_present():
                try:
                    await self.open()
                    return True
                except AtPortError:
                    pass  # the node is there but not openable yet (udev still setting it up)
                except DriverError as exc:
                    log.warning("modem on %s: port is back but the modem does not answer: %s", self.port, exc)
                    return False
            if loop.time() >= deadline:
                log.warning("modem on %s: port did not come back within %.0f s", self.port, self.port_return_s)
                return False
            await asyncio.sleep(PORT_POLL_S)
