"""The AT channel: commands, final result codes and URCs over a serial transport.

Layer 2 of the modem stack (transport → **AT channel** → modem driver →
health monitor). It turns a byte stream into commands and their results and
into unsolicited result codes (URCs), and nothing more: it does not know what
``AT+QENG`` means.

Guarantees
----------
* One command in flight at a time (an `asyncio.Lock`), each with its own
  timeout. A command ends on a final result code: ``OK``; ``ERROR``,
  ``+CME ERROR: <err>``, ``+CMS ERROR: <err>`` and the connection results
  ``NO CARRIER``, ``BUSY``, ``NO ANSWER``, ``NO DIALTONE`` raise typed errors
  (`drivers.exc`) carrying the 3GPP TS 27.007 §9.2 / TS 27.005 §3.2.5
  meaning of the code.
* Echo on or off: a line equal to the command just sent is its echo and is
  dropped.
* The ``>`` data prompt: `command(..., data=b"...")` waits for the prompt,
  sends the data, then Ctrl-Z (`data_end="ctrl-z"`, e.g. ``AT+CMGS``) or
  nothing (`data_end="none"`, for commands that were given a length, e.g.
  ``AT+QISEND=0,5``).
* Garbage never crashes the reader: NUL bytes are removed, lines that are not
  valid UTF-8 or hold control characters are dropped, lines longer than
  `max_line_bytes` are dropped, a partial line cut by a closing port is
  dropped. Each is logged (rate-limited) and counted in `counters()`, which the
  health monitor reads.
* A port that closes (modem reboot, USB unplug) fails the command in flight
  with `PortClosedError`; `open()` again once the device is back.

How a line is classified (the URC rule)
---------------------------------------
A line's *prefix* is the text up to and including the first ``:`` of a line
that starts with ``+`` (``+CEREG:``); other lines have no prefix. `UrcRules`
names the prefixes that a modem may send unsolicited (``+CEREG:``, ``+QIND:``)
and whole lines that are URCs (``RDY``, ``RING``). Each received line is then,
in this order:

1. with no command in flight: a known URC is delivered; the rest of a
   timed-out command's late answer is absorbed (below); a final result code
   or the read-response form of a URC prefix (``+CEREG: 2,1,...``) is a
   stray (counted, dropped); anything else is delivered as an unknown URC;
2. the echo of the command in flight: dropped;
3. a final result code: ends the command;
4. a line whose prefix is one the command *expects* (``expect=("+CEREG:",)``
   for ``AT+CEREG?``) is part of the response — unless that prefix is also a
   URC prefix and the line has the URC's *shape* (`UrcRules.shapes`). This is
   how ``+CEREG: 1,"1A2B","01A2B3C4",7`` (a URC: ``<stat>`` then a quoted
   ``<tac>``) is told apart from ``+CEREG: 2,1,"1A2B","01A2B3C4",7`` (the
   read response: ``<n>,<stat>,...``) even when the URC arrives between the
   response lines. Prefixes whose URC and response look alike (``+CFUN: 1``)
   count as response while their command is in flight;
5. a line with a known URC prefix (in the URC's shape, where one is given)
   or a known URC line: a URC; the read-response form of a URC prefix that
   this command does not expect is a stray;
6. a line with some other ``+X:`` prefix while the command declared what it
   expects: a URC (an unknown one);
7. anything else (bare lines such as an IMEI, ``ATI``'s text): response.

So a driver that passes `expect` gets clean responses; a command without
`expect` (``ATI``, ``AT+CGSN``) gets every non-URC line, and its parser picks
the line it needs.

After a timeout the modem may still answer. The timed-out command stays
*orphaned*: its late lines are absorbed (counted as `late_lines`) until its
final result code arrives, and the next command waits up to
`stale_grace_s` for that before it is sent, so a late ``OK`` is not taken as
the next command's answer. (A modem that answers later than the grace period
can still confuse the next command; AT has no sequence numbers.)
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from drivers.exc import (
    AtResultError,
    AtTimeoutError,
    AtUsageError,
    CallResultError,
    CmeError,
    CmsError,
    PortClosedError,
)
from drivers.transport import ReaderKind, SerialTransport, TransportConfig

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"

# --- 3GPP result-code tables ---------------------------------------------------

#: +CME ERROR codes, 3GPP TS 27.007 §9.2.1 (general), §9.2.2 (GPRS/EPS, PDP,
#: VBS/VGCS/eMLPP). Codes above 255 are vendor-specific (e.g. Quectel's 5xx
#: GNSS codes) and are interpreted by the modem driver that sent the command.
CME_MEANINGS: Mapping[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone-adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    6: "PH-FSIM PIN required",
    7: "PH-FSIM PUK required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalization PIN required",
    41: "network personalization PUK required",
    42: "network subset personalization PIN required",
    43: "network subset personalization PUK required",
    44: "service provider personalization PIN required",
    45: "service provider personalization PUK required",
    46: "corporate personalization PIN required",
    47: "corporate personalization PUK required",
    48: "hidden key required",
    49: "EAP method not supported",
    50: "incorrect parameters",
    51: "command implemented but currently disabled",
    52: "command aborted by user",
    53: "not attached to network due to MT functionality restrictions",
    54: "modem not allowed - MT restricted to emergency calls only",
    55: "operation not allowed because of MT functionality restrictions",
    56: "fixed dial number only allowed - called number is not a fixed dial number",
    57: "temporarily out of service due to other MT usage",
    58: "language/alphabet not supported",
    59: "unexpected data value",
    60: "system failure",
    61: "data missing",
    62: "call barred",
    63: "message waiting indication subscription failure",
    100: "unknown",
    103: "illegal MS",
    106: "illegal ME",
    107: "GPRS services not allowed",
    108: "GPRS services and non-GPRS services not allowed",
    111: "PLMN not allowed",
    112: "location area not allowed",
    113: "roaming not allowed in this location area",
    114: "GPRS services not allowed in this PLMN",
    115: "no suitable cells in location area",
    122: "congestion",
    125: "not authorized for this CSG",
    126: "insufficient resources",
    127: "missing or unknown APN",
    128: "unknown PDP address or PDP type",
    129: "user authentication failed",
    130: "activation rejected by GGSN, Serving GW or PDN GW",
    131: "activation rejected, unspecified",
    132: "service option not supported",
    133: "requested service option not subscribed",
    134: "service option temporarily out of order",
    140: "feature not supported",
    141: "semantic error in the TFT operation",
    142: "syntactical error in the TFT operation",
    143: "unknown PDP context",
    144: "semantic errors in packet filter(s)",
    145: "syntactical errors in packet filter(s)",
    146: "PDP context without TFT already activated",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
    150: "invalid mobile class",
    151: "VBS/VGCS not supported by the network",
    152: "no service subscription on SIM",
    153: "no subscription for group ID",
    154: "group ID not activated on SIM",
    155: "no matching notification",
    156: "VBS/VGCS call already present",
    157: "congestion",
    158: "network failure",
    # 159 is also what Quectel BC66 answers when its NB-IoT uplink buffer is
    # full (BC66 AT Commands Manual, "Summary of CME ERROR Codes"): retry later.
    159: "uplink busy",
    160: "no access rights for SIM file",
    161: "no subscription for priority",
    162: "operation not applicable or not possible",
    171: "last PDN disconnection not allowed",
    177: "operator determined barring",
    178: "maximum number of PDP contexts reached",
    179: "requested APN not supported in current RAT and PLMN combination",
    180: "request rejected, bearer control mode violation",
    181: "unsupported QCI value",
}

#: +CMS ERROR codes, 3GPP TS 27.005 §3.2.5 (0...255 are network causes from
#: TS 24.011 / TS 23.040 and are reported by number only).
CMS_MEANINGS: Mapping[int, str] = {
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "(U)SIM not inserted",
    311: "(U)SIM PIN required",
    312: "PH-(U)SIM PIN required",
    313: "(U)SIM failure",
    314: "(U)SIM busy",
    315: "(U)SIM wrong",
    316: "(U)SIM PUK required",
    317: "(U)SIM PIN2 required",
    318: "(U)SIM PUK2 required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

_CME_BY_TEXT = {v.casefold(): k for k, v in CME_MEANINGS.items()}
_CMS_BY_TEXT = {v.casefold(): k for k, v in CMS_MEANINGS.items()}

CALL_RESULTS = frozenset({"NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"})


def cme_meaning(code: int) -> str:
    """The TS 27.007 §9.2 wording for a +CME ERROR code."""
    meaning = CME_MEANINGS.get(code)
    if meaning is not None:
        return meaning
    if code >= 256:
        return f"vendor-specific error {code} (see the modem's AT manual)"
    return f"error {code} (not in the TS 27.007 §9.2 table)"


def cms_meaning(code: int) -> str:
    """The TS 27.005 §3.2.5 wording for a +CMS ERROR code."""
    meaning = CMS_MEANINGS.get(code)
    if meaning is not None:
        return meaning
    if code < 256:
        return f"network cause {code} (TS 24.011 / TS 23.040)"
    return f"vendor-specific error {code} (see the modem's AT manual)"


# --- URC rules -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UrcRules:
    """Which lines a modem may send unsolicited (see the module docstring).

    `prefixes` are response prefixes including the colon (``"+CEREG:"``);
    `lines` are whole URC lines (``"RDY"``); `shapes` maps a prefix that is
    both a URC and a response prefix to a regular expression that only the
    URC form matches in full.
    """

    prefixes: frozenset[str]
    lines: frozenset[str] = frozenset()
    shapes: Mapping[str, re.Pattern[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.prefixes:
            if not (isinstance(p, str) and p.startswith("+") and p.endswith(":") and len(p) > 2):
                raise ValueError(f"URC prefix must look like '+CEREG:', got {p!r}")
        for p in self.shapes:
            if p not in self.prefixes:
                raise ValueError(f"URC shape given for {p!r}, which is not among the URC prefixes")

    def merged(self, other: UrcRules) -> UrcRules:
        """These rules plus `other`'s (a model adds its own URCs to the defaults)."""
        shapes = dict(self.shapes)
        shapes.update(other.shapes)
        return UrcRules(self.prefixes | other.prefixes, self.lines | other.lines, shapes)


def _registration_urc_shape(prefix: str) -> re.Pattern[str]:
    # URC: "<stat>" alone, or "<stat>," followed by a quoted or empty <tac>.
    # Read response: "<n>,<stat>..." — its second field is a bare number.
    return re.compile(re.escape(prefix) + r' ?\d+(,(""|"[^"]*"|)(,.*)?)?')


DEFAULT_URC_RULES = UrcRules(
    prefixes=frozenset({
        # 3GPP TS 27.007 / 27.005
        "+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:", "+CGEV:", "+CTZV:", "+CTZE:", "+CTZEU:",
        "+CIEV:", "+CMTI:", "+CMT:", "+CDS:", "+CDSI:", "+CBM:", "+CUSD:", "+CRING:", "+CLIP:",
        "+CCWA:", "+CSCON:", "+CPIN:", "+CFUN:", "+CMEE:", "+CPINR:",
        # Quectel (RM500Q/RM520N/EC25 AT manuals; BC66 for NB-IoT nodes)
        "+QIND:", "+QIURC:", "+QUSIM:", "+QGPSURC:", "+QNETDEVSTATUS:", "+QSTK:",
        "+QNBIOTEVENT:", "+NSONMI:", "+NPSMR:", "+QATSLEEP:",
        # SIMCom (SIM7600/SIM8200/SIM7080G AT manuals)
        "+CPSI:", "+CNSMOD:", "+CGNSSINFO:", "+CAURC:", "+CADATAIND:", "+CASTATE:", "+APP PDP:",
        "+CGPSINFO:", "+SIMCARD:", "+CPSMSTATUS:", "+PDP:",
    }),
    lines=frozenset({
        "RDY", "RING", "NO CARRIER", "POWERED DOWN", "NORMAL POWER DOWN", "SMS DONE", "PB DONE",
        "SMS READY", "Call Ready", "START",
    }),
    shapes={p: _registration_urc_shape(p) for p in ("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")},
)


# --- values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AtResponse:
    """The successful end of one command: its intermediate lines and final result line."""

    command: str
    lines: tuple[str, ...]
    final: str = "OK"


@dataclass(frozen=True, slots=True)
class Urc:
    """One unsolicited result code; `prefix` is None for whole-line URCs and unknown lines."""

    line: str
    prefix: str | None
    received_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class ChannelCounters:
    """Health counters of one channel since it was constructed."""

    bytes_in: int = 0
    lines_in: int = 0
    commands: int = 0
    urcs: int = 0
    unknown_urcs: int = 0
    garbage_lines: int = 0
    nul_bytes: int = 0
    oversize_lines: int = 0
    truncated_lines: int = 0
    stray_lines: int = 0
    late_lines: int = 0
    timeouts: int = 0
    port_closures: int = 0
    subscriber_errors: int = 0
    urcs_dropped: int = 0


class _Counters:
    __slots__ = tuple(ChannelCounters.__dataclass_fields__)

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> ChannelCounters:
        return ChannelCounters(**{name: getattr(self, name) for name in self.__slots__})


# --- pure core: bytes → lines → exchanges/URCs ---------------------------------------

_TERMINATORS = re.compile(rb"[\r\n]")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SENSITIVE = re.compile(r"^(AT\+(?:CPIN|CPWD|CLCK|QICSGP|CGAUTH|QSSLCFG|CAAUTH|CNCFG)=).*$", re.IGNORECASE)


def redact(command: str) -> str:
    """The command as it may appear in logs and error messages: PINs and passwords removed."""
    return _SENSITIVE.sub(r"\1<redacted>", command)


def line_prefix(line: str) -> str | None:
    """``"+CEREG:"`` for ``"+CEREG: 1"``; None for lines that do not start with ``+`` and name a prefix."""
    if not line.startswith("+"):
        return None
    colon = line.find(":")
    if colon < 2:
        return None
    return line[: colon + 1]


class LineDecoder:
    """Splits a byte stream into text lines, dropping and counting garbage.

    Pure: `feed` calls `on_line(str)` for every clean line; `partial` is what
    is left of an unterminated line (the ``> `` prompt arrives as one).
    """

    __slots__ = ("max_line_bytes", "_on_line", "_counters", "partial", "_discarding", "_logged")

    def __init__(self, max_line_bytes: int, on_line: Callable[[str], None], counters: _Counters) -> None:
        self.max_line_bytes = max_line_bytes
        self._on_line = on_line
        self._counters = counters
        self.partial = b""
        self._discarding = False  # inside an over-long line: drop up to the next terminator
        self._logged = 0

    def feed(self, data: bytes) -> None:
        c = self._counters
        c.bytes_in += len(data)
        if b"\x00" in data:
            # NUL padding is common right after a modem powers up; drop it, keep the rest.
            n = data.count(b"\x00")
            c.nul_bytes += n
            data = data.replace(b"\x00", b"")
            self._complain("removed %d NUL byte(s)", n)
        if self.partial:
            data = self.partial + data
        parts = _TERMINATORS.split(data)
        self.partial = parts.pop()
        limit = self.max_line_bytes
        for raw in parts:
            if self._discarding:
                self._discarding = False
                continue
            if not raw:
                continue
            if len(raw) > limit:
                c.oversize_lines += 1
                self._complain("dropped a %d-byte line (limit %d)", len(raw), limit)
                continue
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                c.garbage_lines += 1
                self._complain("dropped a line that is not UTF-8: %r", raw[:40])
                continue
            if _BAD_CHARS.search(text):
                c.garbage_lines += 1
                self._complain("dropped a line with control characters: %r", raw[:40])
                continue
            c.lines_in += 1
            self._on_line(text.strip())
        if len(self.partial) > limit:
            c.oversize_lines += 1
            self._complain("dropped an unterminated line over %d bytes", limit)
            self.partial = b""
            self._discarding = True

    def take_partial(self) -> bytes:
        partial, self.partial = self.partial, b""
        return partial

    def connection_lost(self) -> None:
        if self.partial and not self._discarding:
            self._counters.truncated_lines += 1
            self._complain("port closed in the middle of a line: %r", self.partial[:40])
        self.partial = b""
        self._discarding = False

    def _complain(self, msg: str, *args: object) -> None:
        # Rate-limited: a babbling modem must not flood the journal.
        self._logged += 1
        if self._logged <= 20 or self._logged % 1000 == 0:
            log.warning("AT channel: " + msg, *args)


class AtExchange:
    """One AT command in flight (its lines, its final result code), as the pure core sees it."""

    __slots__ = ("command", "expect", "wants_prompt", "finals", "fail_finals", "lines", "final",
                 "prompt_seen", "echo_done", "waiter")

    def __init__(self, command: str, expect: tuple[str, ...] = (), *, wants_prompt: bool = False,
                 finals: frozenset[str] = frozenset(), fail_finals: frozenset[str] = frozenset()) -> None:
        self.command = command
        self.expect = expect
        self.wants_prompt = wants_prompt
        self.finals = finals
        self.fail_finals = fail_finals
        self.lines: list[str] = []
        self.final: str | None = None
        self.prompt_seen = False
        self.echo_done = False
        self.waiter: object = None  # the async layer's future; opaque here

    def outcome(self) -> AtResponse:
        """The response, or the typed error its final result code stands for."""
        final = self.final
        if final is None:
            raise AssertionError("outcome() of an exchange that has not ended")
        lines = tuple(self.lines)
        if final == "OK" or final in self.finals:
            return AtResponse(self.command, lines, final)
        raise result_error(self.command, final, lines)


def is_final(line: str) -> bool:
    return (line == "OK" or line == "ERROR" or line.startswith("+CME ERROR:")
            or line.startswith("+CMS ERROR:") or line in CALL_RESULTS)


def result_error(command: str, final: str, lines: tuple[str, ...] = ()) -> AtResultError:
    """The typed error for a failure final result code."""
    shown = redact(command)
    if final.startswith("+CME ERROR:") or final.startswith("+CMS ERROR:"):
        cms = final.startswith("+CMS")
        arg = final[11:].strip()
        if arg.isdigit():
            code: int | None = int(arg)
            meaning = (cms_meaning if cms else cme_meaning)(int(arg))
        else:  # verbose mode (AT+CMEE=2): the modem sent the text itself
            code = (_CMS_BY_TEXT if cms else _CME_BY_TEXT).get(arg.casefold())
            meaning = arg or "no error text given"
        kind = "+CMS ERROR" if cms else "+CME ERROR"
        msg = f"{kind}: {arg} ({meaning}) in answer to {shown}"
        cls = CmsError if cms else CmeError
        return cls(msg, command=command, result=final, code=code, meaning=meaning, lines=lines)
    if final in CALL_RESULTS:
        return CallResultError(f"{final} in answer to {shown}: the connection failed or ended",
                               command=command, result=final, lines=lines)
    return AtResultError(f"{final} in answer to {shown}: the modem rejected the command "
                         "(enable AT+CMEE=1 for a reason code)", command=command, result=final, lines=lines)


class AtProtocol:
    """Pure core of the channel: classifies lines, ends exchanges, emits URCs.

    No I/O, no event loop: `feed(bytes)` drives it and it reports through the
    three callbacks given at construction. The async `AtChannel` wraps it.
    """

    def __init__(self, rules: UrcRules, max_line_bytes: int, *,
                 on_urc: Callable[[Urc], None], on_done: Callable[[AtExchange], None],
                 on_prompt: Callable[[AtExchange], None], counters: _Counters | None = None) -> None:
        self.rules = rules
        self.counters = counters if counters is not None else _Counters()
        self.decoder = LineDecoder(max_line_bytes, self._line, self.counters)
        self.exchange: AtExchange | None = None
        self.orphan: AtExchange | None = None
        self._on_urc = on_urc
        self._on_done = on_done
        self._on_prompt = on_prompt
        self._prefixes = rules.prefixes
        self._lines = rules.lines
        self._shapes = rules.shapes

    def start(self, exchange: AtExchange) -> None:
        if self.exchange is not None:
            raise AssertionError("a command is already in flight")
        self.exchange = exchange

    def abandon(self) -> AtExchange | None:
        """The exchange in flight timed out: keep absorbing its late answer as an orphan."""
        ex, self.exchange = self.exchange, None
        if ex is not None:
            self.orphan = ex
        return ex

    def drop_orphan(self) -> None:
        self.orphan = None

    def feed(self, data: bytes) -> None:
        self.decoder.feed(data)
        ex = self.exchange
        if ex is not None and ex.wants_prompt and not ex.prompt_seen:
            p = self.decoder.partial
            if p == b">" or p == b"> ":
                self.decoder.take_partial()
                ex.prompt_seen = True
                self._on_prompt(ex)

    def connection_lost(self) -> None:
        self.decoder.connection_lost()

    def _urc(self, line: str, prefix: str | None, known: bool) -> None:
        c = self.counters
        c.urcs += 1
        if not known:
            c.unknown_urcs += 1
        self._on_urc(Urc(line, prefix, time.monotonic()))

    def _line(self, line: str) -> None:
        if not line:
            return
        ex = self.exchange
        prefix = line_prefix(line) if line[0] == "+" else None
        if ex is None:
            self._idle_line(line, prefix)
            return
        if not ex.echo_done and line.upper() == ex.command.upper():
            ex.echo_done = True
            return
        if ex.wants_prompt and not ex.prompt_seen and (line == ">" or line == "> "):
            ex.prompt_seen = True
            self._on_prompt(ex)
            return
        if is_final(line) or line in ex.finals or line in ex.fail_finals:
            ex.final = line
            self.exchange = None
            self._on_done(ex)
            return
        if prefix is not None:
            if prefix in ex.expect:
                shape = self._shapes.get(prefix)
                if shape is not None and shape.fullmatch(line):
                    self._urc(line, prefix, True)
                else:
                    ex.echo_done = True
                    ex.lines.append(line)
                return
            if prefix in self._prefixes:
                if self._urc_shaped(prefix, line):
                    self._urc(line, prefix, True)
                else:  # a read response nobody asked for now (another command's late answer)
                    self.counters.stray_lines += 1
                return
            if ex.expect:
                self._urc(line, prefix, False)
                return
        elif line in self._lines:
            self._urc(line, None, True)
            return
        ex.echo_done = True
        ex.lines.append(line)

    def _urc_shaped(self, prefix: str, line: str) -> bool:
        shape = self._shapes.get(prefix)
        return shape is None or shape.fullmatch(line) is not None

    def _idle_line(self, line: str, prefix: str | None) -> None:
        orphan = self.orphan
        if prefix is not None and prefix in self._prefixes:
            if self._urc_shaped(prefix, line):
                self._urc(line, prefix, True)
                return
            # The read-response form of a URC prefix (+CEREG: <n>,<stat>...): never a URC.
            if orphan is None:
                self.counters.stray_lines += 1
                return
        elif prefix is None and line in self._lines:
            self._urc(line, None, True)
            return
        if orphan is not None:
            self.counters.late_lines += 1
            if is_final(line) or line in orphan.finals or line in orphan.fail_finals:
                orphan.final = line
                self.orphan = None
                self._on_done(orphan)
            return
        if is_final(line):
            self.counters.stray_lines += 1
            log.debug("AT channel: stray final result %r with no command in flight", line)
            return
        self._urc(line, prefix, False)


# --- the async channel -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """How to open and drive one AT channel.

    `default_timeout_s` applies to commands that give no timeout of their own
    (a network scan, ``AT+COPS=?``, needs minutes; pass it per command).
    """

    url: str
    baudrate: int = 115200
    reader: ReaderKind = "auto"
    default_timeout_s: float = 5.0
    max_line_bytes: int = 4096
    max_command_bytes: int = 1024
    stale_grace_s: float = 1.0
    urc_rules: UrcRules = DEFAULT_URC_RULES

    def __post_init__(self) -> None:
        TransportConfig(self.url, self.baudrate, self.reader)  # validates those three
        if not self.default_timeout_s > 0:
            raise ValueError(f"default timeout must be positive, got {self.default_timeout_s}")
        if self.max_line_bytes < 64:
            raise ValueError(f"max_line_bytes must be at least 64, got {self.max_line_bytes}")
        if self.max_command_bytes < 16:
            raise ValueError(f"max_command_bytes must be at least 16, got {self.max_command_bytes}")
        if self.stale_grace_s < 0:
            raise ValueError(f"stale_grace_s must not be negative, got {self.stale_grace_s}")


class Subscription:
    """A URC subscriber; `cancel()` stops delivery."""

    __slots__ = ("callback", "prefixes", "_channel")

    def __init__(self, channel: AtChannel, callback: Callable[[Urc], None], prefixes: frozenset[str] | None) -> None:
        self._channel = channel
        self.callback = callback
        self.prefixes = prefixes

    def wants(self, urc: Urc) -> bool:
        p = self.prefixes
        return p is None or urc.prefix in p or urc.line in p

    def cancel(self) -> None:
        self._channel._unsubscribe(self)


class UrcQueue:
    """URCs buffered for an async consumer; the oldest are dropped (and counted) when full."""

    def __init__(self, channel: AtChannel, prefixes: frozenset[str] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"URC queue size must be at least 1, got {maxsize}")
        self._queue: asyncio.Queue[Urc] = asyncio.Queue(maxsize)
        self._channel = channel
        self.dropped = 0
        self._sub = channel.subscribe(self._put, prefixes)

    def _put(self, urc: Urc) -> None:
        q = self._queue
        if q.full():
            q.get_nowait()
            self.dropped += 1
            self._channel._counters.urcs_dropped += 1
        q.put_nowait(urc)

    async def get(self, timeout: float | None = None) -> Urc:
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError as exc:
            raise AtTimeoutError(f"no URC arrived within {timeout}s", command="", timeout_s=timeout) from exc

    def get_nowait(self) -> Urc | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._sub.cancel()

    def __aiter__(self) -> UrcQueue:
        return self

    async def __anext__(self) -> Urc:
        return await self._queue.get()


class AtChannel:
    """An AT command channel on one serial port (see the module docstring).

    >>> async with AtChannel(ChannelConfig("/dev/ttyUSB2")) as ch:   # doctest: +SKIP
    ...     rsp = await ch.command("AT+CSQ", expect=("+CSQ:",))
    """

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self._counters = _Counters()
        self._protocol = AtProtocol(config.urc_rules, config.max_line_bytes, on_urc=self._dispatch_urc,
                                    on_done=self._exchange_done, on_prompt=self._prompt_seen,
                                    counters=self._counters)
        self._transport: SerialTransport | None = None
        self._lock = asyncio.Lock()
        self._subscribers: list[Subscription] = []
        self._closed_waiters: list[asyncio.Future[None]] = []

    # -- lifecycle ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    @property
    def transport_kind(self) -> str | None:
        """``"fd"`` or ``"thread"`` while open (see `drivers.transport`)."""
        t = self._transport
        return t.kind if t is not None else None

    async def open(self) -> None:
        """Open the port (again, after a loss). Raises `AtPortError` if it is not there."""
        if self._transport is not None:
            return
        cfg = self.config
        transport = SerialTransport(TransportConfig(cfg.url, cfg.baudrate, cfg.reader),
                                    on_data=self._protocol.feed, on_lost=self._port_lost)
        transport.open()
        self._protocol.decoder.take_partial()
        self._protocol.drop_orphan()
        self._transport = transport
        log.debug("AT channel open on %s (%s reader)", cfg.url, transport.kind)

    async def close(self) -> None:
        """Close the port; a command in flight fails with `PortClosedError`."""
        transport, self._transport = self._transport, None
        if transport is None:
            return
        transport.close()
        self._fail_pending(PortClosedError(f"AT channel on {self.config.url} was closed"))
        self._wake_closed_waiters()

    async def __aenter__(self) -> AtChannel:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_closed(self) -> None:
        """Return when the port is closed or lost."""
        if self._transport is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed_waiters.append(fut)
        await fut

    def counters(self) -> ChannelCounters:
        return self._counters.snapshot()

    # -- URCs ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Urc], None], prefixes: Iterable[str] | None = None) -> Subscription:
        """Call `callback(urc)` for each URC (whose prefix or whole line is in `prefixes`, if given).

        The callback runs in the event loop's thread and must not block; an
        exception it raises is logged and counted, never propagated.
        """
        sub = Subscription(self, callback, frozenset(prefixes) if prefixes is not None else None)
        self._subscribers.append(sub)
        return sub

    def urc_queue(self, prefixes: Iterable[str] | None = None, maxsize: int = 256) -> UrcQueue:
        """A bounded queue of URCs for `async for` consumers."""
        return UrcQueue(self, frozenset(prefixes) if prefixes is not None else None, maxsize)

    async def wait_urc(self, match: str | Callable[[Urc], bool], timeout: float) -> Urc:
        """The next URC whose prefix or whole line equals `match` (or for which `match(urc)` is true)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Urc] = loop.create_future()
        test = match if callable(match) else (lambda u: u.prefix == match or u.line == match)

        def check(urc: Urc) -> None:
            if not fut.done() and test(urc):
                fut.set_result(urc)

        sub = self.subscribe(check)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise AtTimeoutError(f"no URC matching {match!r} within {timeout}s on {self.config.url}",
                                 command="", timeout_s=timeout) from exc
        finally:
            sub.cancel()

    def _unsubscribe(self, sub: Subscription) -> None:
        try:
            self._subscribers.remove(sub)
        except ValueError:
            pass

    def _dispatch_urc(self, urc: Urc) -> None:
        for sub in tuple(self._subscribers):
            if sub.wants(urc):
                try:
                    sub.callback(urc)
                except Exception:  # a subscriber bug must not stop the reader
                    self._counters.subscriber_errors += 1
                    log.exception("AT channel: URC subscriber %r failed on %r", sub.callback, urc.line)

    # -- commands ----------------------------------------------------------------

    async def command(self, text: str, *, expect: str | Iterable[str] = (), timeout: float | None = None,
                      data: bytes | None = None, data_end: Literal["ctrl-z", "none"] = "ctrl-z",
                      finals: Iterable[str] = (), fail_finals: Iterable[str] = ()) -> AtResponse:
        """Send one command and wait for its final result code.

        `expect` names the response prefix(es) of the command (``"+CSQ:"``),
        which lets the channel tell URCs apart (module docstring). `data`, if
        given, is sent after the ``>`` prompt, followed by Ctrl-Z unless
        `data_end` is ``"none"``. `finals` / `fail_finals` add
        command-specific final lines (``SEND OK`` / ``SEND FAIL``).

        Raises `AtTimeoutError`, `AtResultError` (and its `CmeError`,
        `CmsError`, `CallResultError`), `PortClosedError`, `AtUsageError`.
        """
        expect_t = (expect,) if isinstance(expect, str) else tuple(expect)
        self._check_command(text, expect_t, data, data_end)
        limit = self.config.default_timeout_s if timeout is None else timeout
        if not limit > 0:
            raise AtUsageError(f"timeout for {redact(text)} must be positive, got {timeout}")
        async with self._lock:
            transport = self._transport
            if transport is None:
                raise PortClosedError(f"AT channel on {self.config.url} is not open "
                                      "(closed, or the device went away): open() it again")
            if self._protocol.orphan is not None:
                await self._settle_orphan()
                transport = self._transport
                if transport is None:
                    raise PortClosedError(f"AT channel on {self.config.url} closed while waiting "
                                          "for a late answer")
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[object] = loop.create_future()
            ex = AtExchange(text, expect_t, wants_prompt=data is not None,
                          finals=frozenset(finals), fail_finals=frozenset(fail_finals))
            ex.waiter = fut
            self._counters.commands += 1
            self._protocol.start(ex)
            timer = loop.call_later(limit, self._expire, ex, limit)
            try:
                transport.write(text.encode("ascii") + b"\r")
                if data is not None:
                    await fut  # set to True by the prompt
                    if ex.final is None:
                        fut = loop.create_future()
                        ex.waiter = fut
                        transport.write(data + CTRL_Z if data_end == "ctrl-z" else data)
                        await fut
                else:
                    await fut
            except BaseException:
                if self._protocol.exchange is ex:  # cancelled: absorb its late answer like a timeout's
                    self._protocol.abandon()
                    ex.waiter = loop.create_future()
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved here; the caller gets the exception being raised
                raise
            finally:
                timer.cancel()
            return ex.outcome()

    def _check_command(self, text: str, expect: tuple[str, ...], data: bytes | None, data_end: str) -> None:
        if not isinstance(text, str) or not text[:2].upper() == "AT":
            raise AtUsageError(f"an AT command must start with 'AT', got {text!r}")
        if len(text) > self.config.max_command_bytes:
            raise AtUsageError(f"command {redact(text)[:40]}... is {len(text)} characters; "
                               f"the limit is {self.config.max_command_bytes}")
        if not text.isascii() or _BAD_CHARS.search(text) or "\r" in text or "\n" in text:
            raise AtUsageError(f"command {redact(text)!r} holds non-ASCII or control characters; "
                               "send binary payloads with data=")
        for p in expect:
            if not (isinstance(p, str) and p.startswith("+") and p.endswith(":")):
                raise AtUsageError(f"expected response prefix must look like '+CSQ:', got {p!r}")
        if data is not None:
            if not isinstance(data, (bytes, bytearray)):
                raise AtUsageError(f"data for {redact(text)} must be bytes, got {type(data).__name__}")
            if data_end not in ("ctrl-z", "none"):
                raise AtUsageError(f"data_end must be 'ctrl-z' or 'none', got {data_end!r}")
            if data_end == "ctrl-z" and (b"\x1a" in data or b"\x1b" in data):
                raise AtUsageError(f"data for {redact(text)} contains Ctrl-Z or ESC, which would end or "
                                   "cancel it early; use a length-based command and data_end='none'")

    async def _settle_orphan(self) -> None:
        orphan = self._protocol.orphan
        if orphan is None:
            return
        fut = orphan.waiter
        if isinstance(fut, asyncio.Future) and not fut.done():
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.config.stale_grace_s)
            except Exception:  # timed out, or the port went away: either way, stop waiting
                pass
        self._protocol.drop_orphan()

    def _expire(self, ex: AtExchange, limit: float) -> None:
        if self._protocol.exchange is not ex:
            return
        self._protocol.abandon()
        self._counters.timeouts += 1
        fut = ex.waiter
        # The orphan gets a fresh future so the next command can wait for its late answer.
        loop = asyncio.get_running_loop()
        ex.waiter = loop.create_future()
        if isinstance(fut, asyncio.Future) and not fut.done():
            where = "the > prompt" if ex.wants_prompt and not ex.prompt_seen else "a final result code"
            fut.set_exception(AtTimeoutError(
                f"no {where} for {redact(ex.command)} within {limit}s on {self.config.url} "
                f"({len(ex.lines)} line(s) received); the modem may be busy or hung",
                command=ex.command, timeout_s=limit, lines=tuple(ex.lines)))

    def _exchange_done(self, ex: AtExchange) -> None:
        fut = ex.waiter
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_result(True)

    def _prompt_seen(self, ex: AtExchange) -> None:
        fut = ex.waiter
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_result(True)

    def _fail_pending(self, exc: PortClosedError) -> None:
        for ex in (self._protocol.exchange, self._protocol.orphan):
            if ex is None:
                continue
            fut = ex.waiter
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(exc)
                if ex is self._protocol.orphan:
                    fut.exception()  # nobody awaits an orphan's future: mark it retrieved
        self._protocol.exchange = None
        self._protocol.orphan = None

    def _port_lost(self, cause: Exception) -> None:
        self._transport = None
        self._counters.port_closures += 1
        self._protocol.connection_lost()
        log.warning("AT channel: port %s lost: %s", self.config.url, cause)
        err = PortClosedError(f"serial port {self.config.url} went away ({cause}); "
                              "the modem rebooted or was unplugged: open() again when it is back")
        err.__cause__ = cause
        self._fail_pending(err)
        self._wake_closed_waiters()

    def _wake_closed_waiters(self) -> None:
        waiters, self._closed_waiters = self._closed_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
