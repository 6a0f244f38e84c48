"""agent.clock — time you can trust: is the wall clock synchronized, and what each envelope says about it.

A reading is evidence, so its time must be one the lender can rely on. The
agent puts a wall-clock time on a reading only while that time comes from a
synchronized source:

* **ntp** — the kernel says its clock is disciplined (adjtimex(2) returns
  neither TIME_ERROR nor STA_UNSYNC: what `timedatectl show -p
  NTPSynchronized` reports, read without systemd or a subprocess);
* **gnss** — a GNSS receiver's UTC (RMC) from a valid fix;
* **modem** — the network time the modem learnt by NITZ (``AT+CCLK?``).

GNSS and modem times are *references*: a UTC reading taken at a known
monotonic instant. Between references the wall time is the reference plus
the monotonic time elapsed, trusted for `holdover_s` (a gateway's crystal
drifts ~50 ppm, ~4 s a day). Without any of them the clock is
unsynchronized: records carry no time, and the envelope's clock statement
(payload key 7, docs/wire-format.md) says so and gives the time since boot,
so the lender can still order readings and place them relative to a boot.

None of those is authenticated: the borrower runs the LAN and its NTP server,
can set the kernel clock, and can feed the GNSS antenna or the modem a fake
cell. One source is: **lender** — the time inside the lender token of each ack
(telemetry.freshness), MACed by the lender, taken at the ack's arrival on the
monotonic clock, with the exchange's round trip (and the token's whole
second) as its error. It ranks above all the others: while the agent holds one
(within `holdover_s`), a time that disagrees with it by more than
`lender_tolerance_s` plus that error is overruled, and the trusted wall time
is the lender's carried forward on the monotonic clock (source "lender"). So
a gateway clock set to 10:00 while a door opens at 03:00 does not make the
opening look permitted. Nor does it after a restart with the uplink cut: the
lender's time is not kept across restarts (the monotonic instant it was taken
at means nothing to the next run), so a device that holds a lender token but
has had no lender time since it started says so (`Instant.awaiting_lender`),
and the access-hours rule permits nothing until an ack brings the lender's
time again (the borrower runs the NTP server, the GNSS antenna and the cell).

    {1: synced (bool), 2: source ("ntp" | "gnss" | "modem" | "lender" | "none"),
     3: uptime in milliseconds (uint, CLOCK_BOOTTIME), ? 4: the system clock in
     UNIX seconds (int), only when unsynchronized: untrusted, for forensics}

Durations (hold times, silence, quiet periods) are measured on the monotonic
clock, so a wall-clock jump in either direction changes no rule's timing and
never touches seq order or the chain (seq and prev are the recorder's, not
the clock's).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from telemetry.clock import ClockStatement
from telemetry.senml import Record

log = logging.getLogger(__name__)

REFERENCE_SOURCES = ("gnss", "modem")  # in order of preference (below the lender's time and the kernel's)
LENDER = "lender"
# A clock further than this (plus the lender time's own error) from the lender's is overruled. Below the
# 120 s by which the lender calls a record dated before the token it carries a lie (lender.evidence.risks),
# so a clock the agent keeps never makes its honest records look like one, even over a slow link.
LENDER_TOLERANCE_S = 90.0
# A modem that has not had NITZ answers its power-on default ("80/01/06,00:00:29", read as 2080 by
# the two-digit year of 27.007, or "70/01/01", "04/01/01"): no real reference lies outside these bounds.
EARLIEST_PLAUSIBLE = 1_704_067_200  # 2024-01-01T00:00:00Z
LATEST_PLAUSIBLE = 3_155_760_000    # 2070-01-01T00:00:00Z


def boot_clock() -> float:
    """Seconds since boot, counting suspend (CLOCK_BOOTTIME where the OS has it)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


@dataclass(frozen=True, slots=True)
class Instant:
    """One reading of the clocks: monotonic seconds since boot, the wall time, and whether that wall time is trusted."""

    monotonic: float
    wall: float
    synced: bool
    source: str = "none"
    offset: float = 0.0   # trusted wall time minus the system clock (non-zero when a reference overrules it)
    # The device holds a lender token (it has heard the lender) but has had no lender time since it started, or
    # not within the holdover: the wall time is an unauthenticated source's alone, which may permit nothing.
    awaiting_lender: bool = False

    @property
    def trusted_wall(self) -> float | None:
        """The wall time if it may go on a record, else None."""
        return self.wall if self.synced else None

    def statement(self) -> ClockStatement:
        """The clock statement for an envelope sealed at this instant."""
        return ClockStatement(self.synced, self.source, max(0, int(self.monotonic * 1000)),
                              None if self.synced else max(0, int(self.wall)))


def stamp(records: Iterable[Record], instant: Instant) -> tuple[Record, ...]:
    """`records` as they may be signed at `instant`: without their times while the clock is unsynchronized."""
    records = tuple(records)
    if instant.synced:
        return records
    return tuple(dataclasses.replace(r, time=None) if r.time is not None else r for r in records)


def redate(records: Iterable[Record], instant: Instant) -> tuple[Record, ...]:
    """Records timed by the system clock (a driver's samples), moved onto the trusted time of `instant`.

    While a reference overrules the system clock (a lender time, a GNSS fix),
    the trusted wall time is the system clock plus `instant.offset`; records a
    driver dated with the system clock move by the same offset.
    """
    records = tuple(records)
    if not instant.synced or not instant.offset:
        return records
    return tuple(dataclasses.replace(r, time=r.time + instant.offset) if r.time is not None else r for r in records)


# --- is the kernel's clock disciplined? ------------------------------------------------------

class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (Linux), 208 bytes on 64-bit."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long), ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long), ("status", ctypes.c_int), ("constant", ctypes.c_long),
        ("precision", ctypes.c_long), ("tolerance", ctypes.c_long), ("time", _Timeval), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11),
    ]


TIME_ERROR = 5      # adjtimex return: the clock is not synchronized
STA_UNSYNC = 0x0040


def adjtimex_synced() -> bool:
    """Whether the kernel clock is synchronized (chrony, systemd-timesyncd or ntpd clear STA_UNSYNC once locked).

    Read-only: `modes` 0 changes nothing, so no privilege is needed. False when
    the call is unavailable (not Linux).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return False
    return state not in (-1, TIME_ERROR) and not timex.status & STA_UNSYNC


def timedatectl_synced(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """systemd's view (`timedatectl show -p NTPSynchronized --value`); False if timedatectl cannot answer."""
    try:
        done = run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "yes"


# --- the clock the agent uses ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reference:
    """A trusted UTC reading (`utc`, UNIX seconds) from `source`, taken at monotonic `at`."""

    source: str
    utc: float
    at: float
    error: float = 0.0   # how far `utc` may be off at `at` (the lender's: half the exchange and the token's second)


class TrustedClock:
    """The agent's clock: `now()` gives an `Instant` whose wall time is trusted only when a source vouches for it.

    Every dependency is passed in, so tests run simulated days with a fake
    monotonic and wall clock and a scripted kernel answer.
    """

    def __init__(
        self,
        *,
        kernel_synced: Callable[[], bool] = adjtimex_synced,
        monotonic: Callable[[], float] = boot_clock,
        wall: Callable[[], float] = time.time,
        recheck_s: float = 30.0,
        holdover_s: float = 86_400.0,
        agree_s: float = 2.0,
        lender_tolerance_s: float = LENDER_TOLERANCE_S,
    ) -> None:
        self._kernel_synced = kernel_synced
        self._monotonic = monotonic
        self._wall = wall
        self.recheck_s = recheck_s
        self.holdover_s = holdover_s
        self.agree_s = agree_s
        self.lender_tolerance_s = lender_tolerance_s
        self._kernel: tuple[float, bool] | None = None  # (checked at, answer)
        self._references: dict[str, Reference] = {}
        self._lender: Reference | None = None
        self._token_held = False
        self._last_source: str | None = None

    def hold_token(self) -> None:
        """The device holds a lender token (agent.freshness, from its file at start): only lender time may permit.

        Until an ack brings the lender's time in this run (or after it is past
        its holdover), every `Instant` says `awaiting_lender`.
        """
        self._token_held = True

    def reference(self, source: str, utc: float | datetime, *, age_s: float = 0.0) -> bool:
        """A GNSS or modem time reading, `age_s` seconds old; False (and ignored) if it is not plausible.

        The modem health monitor calls this with ``drivers.modem`` `parse_cclk`'s
        datetime; the daemon calls it with each GNSS fix's RMC time.
        """
        if source not in REFERENCE_SOURCES:
            raise ValueError(f"reference source {source!r} is unknown; allowed: {', '.join(REFERENCE_SOURCES)}")
        seconds = utc.timestamp() if isinstance(utc, datetime) else float(utc)
        if not EARLIEST_PLAUSIBLE <= seconds < LATEST_PLAUSIBLE or not 0 <= age_s < 3600:
            log.debug("clock: %s time %r (age %s s) is not plausible; ignored", source, utc, age_s)
            return False
        self._references[source] = Reference(source, seconds, self._monotonic() - age_s)
        return True

    def lender_time(self, utc: float, *, round_trip: float) -> bool:
        """The lender's time from an ack's token (whole seconds), the ack having just arrived after `round_trip` s.

        The lender stamped the token somewhere inside the exchange, so its time
        now lies in [utc, utc + 1 + round_trip]: the middle is taken, with half
        that width as the error. False (and ignored) if it is not plausible.
        """
        if not EARLIEST_PLAUSIBLE <= utc < LATEST_PLAUSIBLE or not 0 <= round_trip < 3600:
            log.warning("clock: lender time %r (round trip %r s) is not plausible; ignored", utc, round_trip)
            return False
        half = (1.0 + round_trip) / 2
        self._lender = Reference(LENDER, float(utc) + half, self._monotonic(), half)
        self._token_held = True
        return True

    def _kernel_answer(self, mono: float) -> bool:
        if self._kernel is None or mono - self._kernel[0] >= self.recheck_s or mono < self._kernel[0]:
            self._kernel = (mono, bool(self._kernel_synced()))
        return self._kernel[1]

    def now(self) -> Instant:
        mono, wall = self._monotonic(), self._wall()
        instant = self._judge(mono, wall)
        if instant.source != self._last_source:
            log.info("clock: %s", "synchronized by " + instant.source if instant.synced else
                     "NOT synchronized: readings carry the time since boot instead of a wall time")
            self._last_source = instant.source
        return instant

    def _carried(self, ref: Reference | None, mono: float) -> float | None:
        """`ref`'s time carried forward to `mono`, or None when there is none or it is past its holdover."""
        if ref is None or not 0 <= mono - ref.at <= self.holdover_s:
            return None
        return ref.utc + (mono - ref.at)

    def _referenced(self, mono: float, wall: float, source: str, estimate: float) -> Instant:
        # The system clock is used when it agrees with the reference (no step in the times),
        # else the reference carried forward on the monotonic clock.
        if abs(wall - estimate) <= self.agree_s:
            return Instant(mono, wall, True, source)
        return Instant(mono, estimate, True, source, estimate - wall)

    def _unauthenticated(self, mono: float, wall: float) -> Instant:
        if self._kernel_answer(mono):
            return Instant(mono, wall, True, "ntp")
        for source in REFERENCE_SOURCES:
            estimate = self._carried(self._references.get(source), mono)
            if estimate is not None:
                return self._referenced(mono, wall, source, estimate)
        return Instant(mono, wall, False, "none")

    def _judge(self, mono: float, wall: float) -> Instant:
        chosen = self._unauthenticated(mono, wall)
        lender = self._carried(self._lender, mono)
        if lender is None:
            return dataclasses.replace(chosen, awaiting_lender=True) if self._token_held else chosen
        if chosen.synced and abs(chosen.wall - lender) <= self.lender_tolerance_s + 2 * self._lender.error:
            return chosen
        if chosen.synced and self._last_source != LENDER:
            log.warning("clock: %s time is %+.0f s off the lender's time; the lender's is used", chosen.source,
                        chosen.wall - lender)
        return self._referenced(mono, wall, LENDER, lender)
