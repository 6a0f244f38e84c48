"""hil.sim.model — what a simulated modem model is made of: its data types, no simulator.

A model is a `ModemModel`: identity strings, ``ATI`` text, boot and SIM-swap
URCs, initial `SimState` values, and two tables:

* ``answers`` — exact command (case-insensitive) → response lines, either a
  tuple of `str.format` templates over `SimState.view()` (``"+CSQ: {csq},99"``)
  or a function of the state returning lines;
* ``handlers`` — ``(regex, function)`` pairs for commands with behaviour: the
  function gets a `CommandContext` (the text, the regex match, the state, the
  running modem) and returns a `Reply`. A `Reply` can carry a `DataPrompt` (send
  ``> ``, collect a fixed length or up to Ctrl-Z, then call a continuation),
  URCs to send after the final result, and an action to run afterwards
  (``AT+CFUN=1,1`` reboots). That is how socket commands (``AT+QISEND``,
  ``AT+NSOST``, ``AT+CASEND``) are simulated. An answer or handler calls
  `require` to refuse a command with ``+CME ERROR``.

Handlers and actions see the running modem only as a `SimulatedModem`: what
they may do to it (send URCs or raw bytes, reboot, change registration). The
simulator that serves a model on a pseudo-terminal, `hil.sim.modem.ModemSimulator`,
is one; this module does not import it, so the model tables in
``hil/sim/models/`` depend on these types alone and the simulator on them.

Write a model's table in ``hil/sim/models/<key>.py``, compose it from the
shared pieces in ``hil/sim/models/common.py`` (3GPP TS 27.007) and the vendor
modules (``quectel.py``, ``simcom.py``), and add it to
``hil.sim.models.MODELS``. Answers are looked up first, then the model's
handlers in order; anything else gets ``ERROR``, like a real modem.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DataPrompt:
    """After the ``> `` prompt, collect `length` bytes (or up to Ctrl-Z when None), then reply `then(data)`.

    `then` is usually a closure over the handler's `CommandContext`.
    """

    then: Callable[[bytes], Reply]
    length: int | None = None

    def __post_init__(self) -> None:
        if self.length is not None and self.length < 1:
            raise ValueError(f"a data prompt collects at least 1 byte, not {self.length}")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the simulated modem sends back for one command.

    `final` None means no final result code at all. `after` are URCs sent
    after the final result; `action` runs once the reply is on the wire.
    """

    lines: tuple[str, ...] = ()
    final: str | None = "OK"
    prompt: DataPrompt | None = None
    after: tuple[str, ...] = ()
    action: Callable[[SimulatedModem], None] | None = None


def error(code: int | None = None, *, cms: bool = False) -> Reply:
    """``ERROR``, ``+CME ERROR: n`` or ``+CMS ERROR: n``."""
    if code is None:
        return Reply(final="ERROR")
    return Reply(final=f"+{'CMS' if cms else 'CME'} ERROR: {code}")


@dataclass(slots=True)
class GnssFix:
    """A simulated GNSS position."""

    latitude: float
    longitude: float
    altitude_m: float = 50.0
    hdop: float = 0.9
    satellites: int = 9
    course_deg: float = 0.0
    speed_kmh: float = 0.0
    fix_dimension: int = 3


@dataclass(slots=True)
class SimState:
    """The live state of a simulated modem: identity, SIM, network, radio, GNSS.

    Mutable on purpose (it is the device's state, changed by commands and
    knobs); every answer template reads it through `view()`.
    """

    imei: str = "867698040123450"
    imsi: str = "310260123456789"
    iccid: str = "89012601234567890126"
    sim_present: bool = True
    echo: bool = True
    cmee: int = 1
    cfun: int = 1
    creg_n: int = 0
    cereg_n: int = 0
    c5greg_n: int = 0
    cops_format: int = 0
    registered: bool = True
    reg_stat: int = 1  # 27.007 <stat> while registered: 1 home, 5 roaming
    lost_stat: int = 2  # <stat> after lose_registration(): 2 searching, 3 denied, 0 idle
    rat: str = "LTE"  # "LTE", "NR5G-SA", "NR5G-NSA"
    mcc: str = "310"
    mnc: str = "260"
    operator_long: str = "T-Mobile"
    operator_short: str = "TMO"
    tac: int = 0x1A2B
    cell_id: int = 0x01A2B3C4
    pci: int = 257
    band: int = 2
    earfcn: int = 1000
    nr_tac: int = 0x00B7E1
    nr_cell_id: int = 0x1A2B3C4D5
    nr_pci: int = 505
    nr_band: int = 41
    nr_arfcn: int = 504990
    rsrp: float = -92.0
    rsrq: float = -10.0
    sinr: float = 14.0
    rssi: float = -65.0
    nr_rsrp: float = -88.0
    nr_rsrq: float = -11.0
    nr_sinr: float = 18.0
    connected: bool = False
    network_time: dt.datetime = dt.datetime(2025, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
    tz_quarters: int = 4  # local offset in quarters of an hour, as AT+CCLK reports it
    gnss_on: bool = False
    fix: GnssFix | None = field(default_factory=lambda: GnssFix(52.520008, 13.404954, 34.0))
    started_at: float = field(default_factory=time.monotonic)
    extra: dict[str, object] = field(default_factory=dict)  # per-model scratch (sockets, ...)

    def now(self) -> dt.datetime:
        """Network time, advancing with the wall clock from `network_time`."""
        return self.network_time + dt.timedelta(seconds=time.monotonic() - self.started_at)

    @property
    def eps_stat(self) -> int:
        """<stat> for +CEREG: registered on LTE (also the NSA anchor), else 0 or the lost status."""
        if self.rat not in ("LTE", "NR5G-NSA"):
            return 0
        if not self.registered or self.cfun != 1:
            return self.lost_stat if self.cfun == 1 else 0
        return self.reg_stat

    @property
    def nr_stat(self) -> int:
        """<stat> for +C5GREG: registered only in NR standalone."""
        if not self.registered or self.cfun != 1:
            return self.lost_stat if self.cfun == 1 and self.rat == "NR5G-SA" else 0
        return self.reg_stat if self.rat == "NR5G-SA" else 0

    @property
    def in_service(self) -> bool:
        return self.registered and self.cfun == 1 and self.sim_present

    def view(self) -> dict[str, object]:
        """Every field plus the derived values answer templates use."""
        v: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        service = self.in_service
        v["csq"] = max(0, min(31, int((self.rssi + 113) // 2))) if service else 99
        lte = self.rat in ("LTE", "NR5G-NSA")
        v["cesq_rsrq"] = max(0, min(34, int((self.rsrq + 20) * 2))) if service and lte else 255
        v["cesq_rsrp"] = max(0, min(97, int(self.rsrp + 141))) if service and lte else 255
        v["eps_stat"] = self.eps_stat
        v["nr_stat"] = self.nr_stat
        v["tac4"] = f"{self.tac & 0xFFFF:04X}"
        v["ci8"] = f"{self.cell_id & 0xFFFFFFF:08X}"
        v["nr_tac6"] = f"{self.nr_tac & 0xFFFFFF:06X}"
        v["nr_ci9"] = f"{self.nr_cell_id & 0xFFFFFFFFF:09X}"
        v["eps_act"] = 13 if self.rat == "NR5G-NSA" else 7
        v["nr_act"] = 11
        v["cops_act"] = {"LTE": 7, "NR5G-NSA": 13, "NR5G-SA": 11}.get(self.rat, 7)
        v["plmn"] = f"{self.mcc}{self.mnc}"
        v["conn"] = "CONNECT" if self.connected else "NOCONN"
        now = self.now() + dt.timedelta(minutes=15 * self.tz_quarters)
        v["cclk"] = f"{now:%y/%m/%d,%H:%M:%S}{self.tz_quarters:+03d}"
        return v


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler gets: the command text, the regex match, the state and the running modem."""

    text: str
    match: re.Match[str]
    state: SimState
    sim: SimulatedModem


Handler = Callable[[CommandContext], Reply]
Answer = tuple[str, ...] | Callable[[SimState], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ModemModel:
    """One simulated modem model: identity, URCs, initial state, answers and handlers (data)."""

    key: str
    manufacturer: str
    model: str
    revision: str
    ati: tuple[str, ...]
    answers: Mapping[str, Answer]
    handlers: tuple[tuple[str, Handler], ...] = ()
    boot_urcs: tuple[str, ...] = ("RDY",)
    sim_swap_urcs: tuple[str, ...] = ("+CPIN: NOT READY", "+CPIN: READY")
    initial_state: Mapping[str, object] = field(default_factory=dict)
    signal_commands: frozenset[str] = frozenset({"AT+CSQ", "AT+CESQ"})
    usb_id: tuple[int, int] | None = None  # (vendor, product), for hot-plug simulations

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.key):
            raise ValueError(f"model key must be lower-case letters, digits, '_': {self.key!r}")
        normalized = {k.strip().upper(): v for k, v in self.answers.items()}
        object.__setattr__(self, "answers", normalized)
        object.__setattr__(self, "signal_commands", frozenset(c.upper() for c in self.signal_commands))
        compiled = tuple((re.compile(p, re.IGNORECASE) if isinstance(p, str) else p, h)
                         for p, h in self.handlers)
        object.__setattr__(self, "handlers", compiled)
        known = {f.name for f in fields(SimState)}
        unknown = set(self.initial_state) - known
        if unknown:
            raise ValueError(f"model {self.key}: initial_state names unknown SimState fields {sorted(unknown)}")

    def new_state(self, **overrides: object) -> SimState:
        values = dict(self.initial_state)
        values.update(overrides)
        return SimState(**values)  # type: ignore[arg-type]


class SimulatedModem(Protocol):
    """What a handler, an action or a socket callback may use of the running modem.

    `hil.sim.modem.ModemSimulator` is the implementation; handlers run in its
    thread, inside its asyncio loop.
    """

    @property
    def model(self) -> ModemModel: ...

    @property
    def state(self) -> SimState: ...

    def emit_urc(self, *lines: str) -> None:
        """Send URC lines now."""

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (an answer that is not text lines)."""

    def reboot(self, down_s: float = ..., ready_s: float = ..., after_s: float = ...) -> None:
        """The port disappears and comes back; the modem boots again."""

    def changing_registration(self, change: Callable[[], object]) -> None:
        """Apply `change` to the state, then send the registration URCs it caused."""


class CommandRefused(Exception):
    """Raised inside an answer/handler to reply with an error instead (see `require`); the simulator catches it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.final)
        self.reply = reply


def require(condition: bool, code: int | None = None) -> None:
    """In an answer function or handler: unless `condition`, reply ``+CME ERROR: code`` (or ``ERROR``)."""
    if not condition:
        raise CommandRefused(error(code))


def with_state(model: ModemModel, **initial: object) -> ModemModel:
    """A copy of `model` whose initial state has these values (for scenario variants)."""
    merged = dict(model.initial_state)
    merged.update(initial)
    return replace(model, initial_state=merged)
