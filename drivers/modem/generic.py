"""Generic 3GPP TS 27.007 modem driver: identity, SIM, signal, registration, operator, time, power.

Layer 3 of the modem stack (transport → AT channel → **modem driver** →
health monitor). It knows what the standard commands mean and returns typed
values (`drivers.modem.values`); vendor drivers (`quectel`, `simcom`)
subclass it for their own commands. The parsers are pure functions of the
response lines so that they can be tested against manual samples and fuzzed
without a port.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from drivers.at import AtChannel, AtResponse
from drivers.exc import AtResultError, ModemResponseError, PortClosedError
from drivers.modem.fields import Fields, luhn_ok, single
from drivers.modem.values import (
    AccessTechnology,
    ExtendedSignalQuality,
    Functionality,
    ModelIdentity,
    Operator,
    Registration,
    RegistrationStatus,
    SignalQuality,
)

_DIGITS = re.compile(r"\d+")


# --- pure parsers --------------------------------------------------------------------


def parse_imei(lines: Sequence[str], command: str = "AT+CGSN") -> str:
    """AT+CGSN (bare 15 digits) or AT+CGSN=1 (``+CGSN: "<imei>"``) → the IMEI, check digit verified."""
    for line in lines:
        text = line[6:].strip().strip('"') if line.startswith("+CGSN:") else line.strip()
        if _DIGITS.fullmatch(text):
            if len(text) != 15:
                raise ModemResponseError(f"{command} answered {line!r}: an IMEI has 15 digits, this has "
                                         f"{len(text)}", command=command, lines=tuple(lines))
            if not luhn_ok(text):
                raise ModemResponseError(f"{command} answered {line!r}: the IMEI check digit is wrong "
                                         "(3GPP TS 23.003 Annex B); the read is corrupt or the IMEI was altered",
                                         command=command, lines=tuple(lines))
            return text
    raise ModemResponseError(f"{command} answered no IMEI line (got {list(lines)[:4]!r}); expected 15 digits",
                             command=command, lines=tuple(lines))


def parse_imsi(lines: Sequence[str], command: str = "AT+CIMI") -> str:
    """AT+CIMI → the IMSI (up to 15 digits, 3GPP TS 23.003 §2.2)."""
    for line in lines:
        text = line.strip()
        if _DIGITS.fullmatch(text):
            if not 6 <= len(text) <= 15:
                raise ModemResponseError(f"{command} answered {line!r}: an IMSI has 6 to 15 digits",
                                         command=command, lines=tuple(lines))
            return text
    raise ModemResponseError(f"{command} answered no IMSI line (got {list(lines)[:4]!r}); expected digits",
                             command=command, lines=tuple(lines))


_ICCID = re.compile(r"89[0-9A-F]{16,18}")


def parse_iccid(lines: Sequence[str], command: str = "AT+CCID",
                prefixes: Sequence[str] = ("+CCID:", "+QCCID:", "+ICCID:")) -> str:
    """ICCID from ``+CCID:`` / ``+QCCID:`` / ``+ICCID:`` or a bare line: ``89`` then 16-18 more digits.

    A trailing ``F`` is the padding nibble of a 19-digit ICCID and is removed.
    Hex digits A-F are accepted inside: some issuers' cards report them
    (ITU-T E.118 allows only decimal, but what the card says is what must be
    compared for SIM-swap detection).
    """
    for line in lines:
        text = line.strip()
        prefixed = False
        for p in prefixes:
            if text.startswith(p):
                text, prefixed = text[len(p):].strip().strip('"'), True
                break
        upper = text.upper()
        candidate = upper[:-1] if len(upper) == 20 and upper.endswith("F") else upper
        if _ICCID.fullmatch(candidate):
            return candidate
        if prefixed or (candidate and candidate.isdigit()):
            raise ModemResponseError(f"{command} answered {line!r}: an ICCID is 89 followed by 16 to 18 "
                                     "digits", command=command, lines=tuple(lines))
    raise ModemResponseError(f"{command} answered no ICCID (got {list(lines)[:4]!r}); expected 89 + digits",
                             command=command, lines=tuple(lines))


def parse_csq(lines: Sequence[str], command: str = "AT+CSQ") -> SignalQuality:
    """``+CSQ: <rssi>,<ber>``: rssi 0..31 → -113..-51 dBm, 99 unknown."""
    f = single(command, lines, "+CSQ:", "+CSQ: <rssi>,<ber> (3GPP TS 27.007 §8.5)")
    f.need(2)
    rssi, ber = f.int(0, "<rssi>"), f.int(1, "<ber>")
    if not (0 <= rssi <= 31 or rssi == 99):
        raise f.fail(f"<rssi> {rssi} is outside 0..31 and is not 99")
    if not (0 <= ber <= 7 or ber == 99):
        raise f.fail(f"<ber> {ber} is outside 0..7 and is not 99")
    return SignalQuality(None if rssi == 99 else -113 + 2 * rssi, None if ber == 99 else ber)


def parse_cesq(lines: Sequence[str], command: str = "AT+CESQ") -> ExtendedSignalQuality:
    """``+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>``; each index → lower bound of its range."""
    f = single(command, lines, "+CESQ:", "+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp> (TS 27.007 §8.69)")
    f.need(6)
    rxlev, ber, rscp, ecno, rsrq, rsrp = (f.int(i, n) for i, n in enumerate(
        ("<rxlev>", "<ber>", "<rscp>", "<ecno>", "<rsrq>", "<rsrp>")))

    def pick(value: int, top: int, unknown: int, name: str) -> int | None:
        if value == unknown:
            return None
        if not 0 <= value <= top:
            raise f.fail(f"{name} {value} is outside 0..{top} and is not {unknown}")
        return value

    rx, be, rs, ec = pick(rxlev, 63, 99, "<rxlev>"), pick(ber, 7, 99, "<ber>"), pick(rscp, 96, 255, "<rscp>"), \
        pick(ecno, 49, 255, "<ecno>")
    rq, rp = pick(rsrq, 34, 255, "<rsrq>"), pick(rsrp, 97, 255, "<rsrp>")
    return ExtendedSignalQuality(
        rxlev_dbm=None if rx is None else -111 + rx,
        ber_class=be,
        rscp_dbm=None if rs is None else -121 + rs,
        ecno_db=None if ec is None else -24.5 + ec / 2,
        rsrq_db=None if rq is None else -20.0 + rq / 2,
        rsrp_dbm=None if rp is None else -141 + rp,
    )


_REG_SYNTAX = {
    "+CEREG:": "+CEREG: <n>,<stat>[,[<tac>],[<ci>],[<AcT>]] (TS 27.007 §10.1.22)",
    "+C5GREG:": "+C5GREG: <n>,<stat>[,[<tac>],[<ci>],[<AcT>]] (TS 27.007, 5GS registration)",
    "+CREG:": "+CREG: <n>,<stat>[,[<lac>],[<ci>],[<AcT>]] (TS 27.007 §7.2)",
    "+CGREG:": "+CGREG: <n>,<stat>[,[<lac>],[<ci>],[<AcT>]] (TS 27.007 §10.1.19)",
}
_DOMAIN = {"+CEREG:": "EPS", "+C5GREG:": "5GS", "+CREG:": "CS", "+CGREG:": "GPRS"}


def _registration(f: Fields, first: int, prefix: str) -> Registration:
    f.need(first + 1)
    stat_n = f.int(first, "<stat>")
    try:
        stat = RegistrationStatus(stat_n)
    except ValueError:
        raise f.fail(f"<stat> {stat_n} is not a TS 27.007 registration status") from None
    tac = f.opt_int(first + 1, "<tac>", base=16)
    ci = f.opt_int(first + 2, "<ci>", base=16)
    act_n = f.opt_int(first + 3, "<AcT>")
    act = None
    if act_n is not None:
        try:
            act = AccessTechnology(act_n)
        except ValueError:
            raise f.fail(f"<AcT> {act_n} is not a TS 27.007 access technology") from None
    for value, name, bits in ((tac, "<tac>", 24), (ci, "<ci>", 36)):
        if value is not None and not 0 <= value < (1 << bits):
            raise f.fail(f"{name} {value:#x} is wider than {bits} bits")
    return Registration(_DOMAIN[prefix], stat, tac, ci, act)


def parse_registration(lines: Sequence[str], prefix: str = "+CEREG:", command: str = "AT+CEREG?") -> Registration:
    """The read response ``<n>,<stat>[,...]`` of AT+CEREG? / AT+C5GREG? / AT+CREG? / AT+CGREG?."""
    f = single(command, lines, prefix, _REG_SYNTAX[prefix])
    f.need(2)
    n = f.int(0, "<n>")
    if not 0 <= n <= 5:
        raise f.fail(f"<n> {n} is outside 0..5")
    return _registration(f, 1, prefix)


def parse_registration_urc(line: str) -> Registration:
    """A registration URC, ``+CEREG: <stat>[,...]`` (no leading <n>), as subscribers receive it."""
    for prefix in _REG_SYNTAX:
        if line.startswith(prefix):
            return _registration(Fields("URC", line, line[len(prefix):].strip(), _REG_SYNTAX[prefix]), 0, prefix)
    raise ModemResponseError(f"{line!r} is not a +CREG/+CGREG/+CEREG/+C5GREG URC", command="URC", lines=(line,))


def parse_cops(lines: Sequence[str], command: str = "AT+COPS?") -> Operator:
    """``+COPS: <mode>[,<format>,<oper>[,<AcT>]]``."""
    f = single(command, lines, "+COPS:", "+COPS: <mode>[,<format>,<oper>[,<AcT>]] (TS 27.007 §7.3)")
    mode = f.int(0, "<mode>")
    if not 0 <= mode <= 4:
        raise f.fail(f"<mode> {mode} is outside 0..4")
    if len(f) < 3:
        return Operator(mode, None, None, None)
    fmt = f.int(1, "<format>")
    if not 0 <= fmt <= 2:
        raise f.fail(f"<format> {fmt} is outside 0..2")
    name = f.text(2, "<oper>")
    if fmt == 2 and not (_DIGITS.fullmatch(name) and len(name) in (5, 6)):
        raise f.fail(f"numeric <oper> {name!r} is not MCC+MNC (5 or 6 digits)")
    act_n = f.opt_int(3, "<AcT>")
    try:
        act = None if act_n is None else AccessTechnology(act_n)
    except ValueError:
        raise f.fail(f"<AcT> {act_n} is not a TS 27.007 access technology") from None
    return Operator(mode, name, fmt, act)


_CCLK = re.compile(r'"?(\d{2})/(\d{2})/(\d{2}),(\d{2}):(\d{2}):(\d{2})(?:([+-])(\d{1,2}))?"?')


def parse_cclk(lines: Sequence[str], command: str = "AT+CCLK?") -> dt.datetime:
    """``+CCLK: "yy/MM/dd,hh:mm:ss±zz"`` → an aware datetime (zz in quarters of an hour, TS 27.007 §8.15).

    TS 27.007 §8.15 lets an MT without time-zone support leave out ``±zz``;
    such a time is taken as UTC.
    """
    f = single(command, lines, "+CCLK:", '+CCLK: "yy/MM/dd,hh:mm:ss±zz" (TS 27.007 §8.15)')
    raw = f.line[len("+CCLK:"):].strip()
    m = _CCLK.fullmatch(raw)
    if m is None:
        raise f.fail("the time is not yy/MM/dd,hh:mm:ss±zz")
    yy, mo, dd, hh, mi, ss = (int(m.group(i)) for i in range(1, 7))
    quarters = int(m.group(8)) * (-1 if m.group(7) == "-" else 1) if m.group(7) else 0
    if not -56 <= quarters <= 56:
        raise f.fail(f"time zone {quarters} quarter-hours is beyond ±14 h")
    try:
        return dt.datetime(2000 + yy, mo, dd, hh, mi, ss, tzinfo=dt.timezone(dt.timedelta(minutes=15 * quarters)))
    except ValueError as exc:
        raise f.fail(f"not a real date/time ({exc})") from None


def parse_cfun(lines: Sequence[str], command: str = "AT+CFUN?") -> Functionality:
    f = single(command, lines, "+CFUN:", "+CFUN: <fun> (TS 27.007 §8.2)")
    n = f.int(0, "<fun>")
    try:
        return Functionality(n)
    except ValueError:
        raise f.fail(f"<fun> {n} is not a known functionality level") from None


# --- the driver ----------------------------------------------------------------------


class Modem:
    """A 3GPP TS 27.007 modem on an open `AtChannel`.

    Every method sends one command and returns a typed value or raises a
    `drivers.exc` error: `AtTimeoutError`, `CmeError` (with the standard
    meaning), `PortClosedError`, or `ModemResponseError` when the answer is
    not in the documented form.
    """

    family = "generic"

    #: +CFUN can take several seconds while the radio powers up or down
    #: (Quectel RM5xxQ manual: max response time 15 s).
    CFUN_TIMEOUT_S = 15.0

    def __init__(self, channel: AtChannel, identity: ModelIdentity | None = None, *,
                 timeout_s: float | None = None) -> None:
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"driver timeout must be positive, got {timeout_s}")
        self.channel = channel
        self.identity = identity
        self.timeout_s = timeout_s  # per-command limit; None: the channel's default

    async def _lines(self, command: str, expect: str | tuple[str, ...] = (), timeout: float | None = None
                     ) -> tuple[str, ...]:
        rsp: AtResponse = await self.channel.command(command, expect=expect,
                                                     timeout=timeout if timeout is not None else self.timeout_s)
        return rsp.lines

    async def prepare(self) -> None:
        """Numeric +CME errors, echo off, and registration reports with location (n=2) where supported."""
        await self.channel.command("ATE0")
        await self.channel.command("AT+CMEE=1")
        await self.channel.command("AT+CEREG=2")
        try:
            await self.channel.command("AT+C5GREG=2")
        except AtResultError:
            pass  # LTE-only modems (EC25, SIM7600) do not have +C5GREG

    async def imei(self) -> str:
        return parse_imei(await self._lines("AT+CGSN"))

    async def imsi(self) -> str:
        return parse_imsi(await self._lines("AT+CIMI"))

    async def iccid(self) -> str:
        return parse_iccid(await self._lines("AT+CCID", ("+CCID:",)), "AT+CCID")

    async def signal_quality(self) -> SignalQuality:
        return parse_csq(await self._lines("AT+CSQ", "+CSQ:"))

    async def extended_signal_quality(self) -> ExtendedSignalQuality:
        return parse_cesq(await self._lines("AT+CESQ", "+CESQ:"))

    async def eps_registration(self) -> Registration:
        return parse_registration(await self._lines("AT+CEREG?", "+CEREG:"), "+CEREG:", "AT+CEREG?")

    async def nr_registration(self) -> Registration:
        return parse_registration(await self._lines("AT+C5GREG?", "+C5GREG:"), "+C5GREG:", "AT+C5GREG?")

    async def registration(self) -> Registration:
        """The registration that counts: 5GS when registered there, else EPS when registered there.

        When neither is, the domain that reports something (searching,
        denied) wins over one that merely says "not registered", so a 5G
        standalone modem that was rejected reports DENIED, not 0.
        """
        try:
            nr: Registration | None = await self.nr_registration()
        except AtResultError:
            nr = None  # LTE-only modems have no +C5GREG
        if nr is not None and nr.registered:
            return nr
        eps = await self.eps_registration()
        if eps.registered or nr is None:
            return eps
        if eps.status is RegistrationStatus.NOT_REGISTERED and nr.status is not RegistrationStatus.NOT_REGISTERED:
            return nr
        return eps

    async def operator(self) -> Operator:
        return parse_cops(await self._lines("AT+COPS?", "+COPS:"))

    async def network_time(self) -> dt.datetime:
        return parse_cclk(await self._lines("AT+CCLK?", "+CCLK:"))

    async def functionality(self) -> Functionality:
        return parse_cfun(await self._lines("AT+CFUN?", "+CFUN:", self.CFUN_TIMEOUT_S))

    async def set_functionality(self, fun: Functionality, *, reset: bool = False) -> None:
        """AT+CFUN=<fun>[,1]. With `reset` the modem reboots and its port goes away.

        For a reset, the port closing before the ``OK`` arrives counts as
        success: that is what a reset looks like from the host.
        """
        command = f"AT+CFUN={int(fun)}{',1' if reset else ''}"
        try:
            await self.channel.command(command, timeout=self.CFUN_TIMEOUT_S)
        except PortClosedError:
            if not reset:
                raise
