"""drivers.gnss — position from NMEA 0183 GGA and RMC sentences, read off any pyserial URL.

Three layers, pure to I/O:

* `parse_sentence` / `parse_nmea`: one line of text to a typed `GgaReport` or
  `RmcReport` (other sentence types come back as a bare `Sentence`). Framing,
  the `*hh` checksum and every field used are checked; anything wrong raises
  `NmeaChecksumError` or `NmeaFormatError`, never another exception.
* `FixTracker`: folds reports into the current `Fix`, given the monotonic
  time each arrived. A receiver that says it has no fix (GGA quality 0, RMC
  status V or mode N) gives `GnssNoFix`; a fix older than `max_age_s` — the
  receiver went quiet, or its port did — gives `SensorSilent`. HDOP is kept.
* `GnssReceiver`: the `Sensor` the agent polls. `watch()` reads the port (the
  modem's NMEA port, a USB receiver, `socket://…`), skipping and counting bad
  lines; `read()` turns the current fix into samples.

Field layouts follow NMEA 0183 v4.11 as documented by receiver vendors (u-blox
M8 Receiver Description §31.2 "NMEA messages": GGA 14 fields, RMC 12 or, with
the v4.1 navigational status, 13; older receivers send 11-field RMC).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import serial

from drivers.exc import GnssNoFix, NmeaChecksumError, NmeaFormatError, SensorMissing, SensorSilent
from drivers.sensor import Sample

log = logging.getLogger(__name__)

# NMEA 0183 caps a sentence at 82 characters including "$" and CR LF; some
# receivers exceed it with extra decimals, so allow headroom but stay bounded.
MAX_SENTENCE = 164

KNOTS_TO_M_PER_S = 1852 / 3600

# A talker ("GP", "GN", "GL", "GA", "GB", "BD") and a type ("GGA"), or a
# proprietary "P" + maker code + type ("PUBX", "PQTMVERNO").
_ADDRESS = re.compile(r"(?:P[A-Z0-9]{1,12}|[A-Z]{2}[A-Z]{3})\Z")
_FIELD_CHARS = re.compile(r"[\x20-\x7e]*\Z")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_UNSIGNED = re.compile(r"[0-9]+\Z")
_TIME = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})(\.[0-9]{1,6})?\Z")
_DATE = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})\Z")
_LATITUDE = re.compile(r"([0-9]{2})([0-9]{2}(?:\.[0-9]{1,10})?)\Z")
_LONGITUDE = re.compile(r"([0-9]{3})([0-9]{2}(?:\.[0-9]{1,10})?)\Z")


def checksum(body: str) -> int:
    """XOR of the characters between "$" and "*" (NMEA 0183 §5.2.1)."""
    value = 0
    for char in body.encode("ascii"):
        value ^= char
    return value


@dataclass(frozen=True, slots=True)
class Sentence:
    """A framed, checksum-verified sentence: `talker` ("GP", "GN", "P"), `kind` ("GGA"), its fields."""

    talker: str
    kind: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """WGS84 degrees; south and west are negative."""

    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class GgaReport:
    """GGA, "global positioning system fix data": position, fix quality, satellites, HDOP, altitude."""

    talker: str
    utc_time: dt.time | None
    position: Position | None
    quality: int
    satellites: int | None
    hdop: float | None
    altitude_m: float | None
    geoid_separation_m: float | None

    @property
    def has_fix(self) -> bool:
        return self.quality != 0 and self.position is not None


@dataclass(frozen=True, slots=True)
class RmcReport:
    """RMC, "recommended minimum data": validity, position, speed and course over ground, date."""

    talker: str
    utc: dt.datetime | None
    valid: bool
    position: Position | None
    speed_knots: float | None
    course_deg: float | None
    mode: str | None

    @property
    def has_fix(self) -> bool:
        return self.valid and self.position is not None and self.mode != "N"


Report = GgaReport | RmcReport


def parse_sentence(line: str | bytes) -> Sentence:
    """Check framing and checksum of one NMEA line (CR LF optional) and split it into fields."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("ascii")
        except UnicodeDecodeError as exc:
            raise NmeaFormatError(f"NMEA line {bytes(line[:40])!r} is not ASCII; check the port's baud rate") from exc
    if not isinstance(line, str):
        raise NmeaFormatError(f"NMEA line must be str or bytes, got {type(line).__name__}")
    text = line.removesuffix("\n").removesuffix("\r")
    if len(text) > MAX_SENTENCE:
        raise NmeaFormatError(f"NMEA line of {len(text)} characters exceeds {MAX_SENTENCE}: {text[:40]!r}…")
    if not text.startswith("$"):
        raise NmeaFormatError(f"NMEA sentence must start with '$': {text[:40]!r}")
    star = text.rfind("*")
    if star < 0 or len(text) - star != 3:
        raise NmeaFormatError(f"NMEA sentence lacks a '*hh' checksum at its end: {text[:82]!r}")
    body, given = text[1:star], text[star + 1 :]
    if not _FIELD_CHARS.match(body) or any(reserved in body for reserved in "$*!"):
        raise NmeaFormatError(f"NMEA sentence holds characters NMEA 0183 does not allow: {text[:82]!r}")
    try:
        expected = int(given, 16)
    except ValueError as exc:
        raise NmeaFormatError(f"NMEA checksum {given!r} is not two hex digits: {text[:82]!r}") from exc
    if not all(c in "0123456789abcdefABCDEF" for c in given):
        raise NmeaFormatError(f"NMEA checksum {given!r} is not two hex digits: {text[:82]!r}")
    actual = checksum(body)
    if actual != expected:
        raise NmeaChecksumError(
            f"NMEA checksum mismatch: sentence says {expected:02X}, content gives {actual:02X}: {text[:82]!r}; "
            "the line was corrupted on the wire"
        )
    address, *fields = body.split(",")
    if not _ADDRESS.match(address):
        raise NmeaFormatError(f"NMEA address field {address!r} is not a talker and sentence type: {text[:82]!r}")
    if address.startswith("P"):
        return Sentence("P", address[1:], tuple(fields))
    return Sentence(address[:2], address[2:], tuple(fields))


def _bad(sentence: Sentence, what: str, value: str) -> NmeaFormatError:
    return NmeaFormatError(f"{sentence.talker}{sentence.kind}: {what} {value!r} is malformed")


def _number(sentence: Sentence, what: str, value: str, *, low: float | None = None, high: float | None = None) -> float | None:
    if value == "":
        return None
    if not _NUMBER.match(value):
        raise _bad(sentence, what, value)
    number = float(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise NmeaFormatError(f"{sentence.talker}{sentence.kind}: {what} {value} is outside {low}..{high}")
    return number


def _time(sentence: Sentence, value: str) -> dt.time | None:
    if value == "":
        return None
    match = _TIME.match(value)
    if match is None:
        raise _bad(sentence, "UTC time", value)
    hours, minutes, seconds = (int(match.group(i)) for i in (1, 2, 3))
    if hours > 23 or minutes > 59 or seconds > 60:
        raise _bad(sentence, "UTC time", value)
    micros = round(float(match.group(4) or 0) * 1_000_000)
    # A leap second (ss = 60) has no datetime.time; it is held as the last instant of second 59.
    if seconds == 60:
        seconds, micros = 59, 999_999
    return dt.time(hours, minutes, seconds, min(micros, 999_999), tzinfo=dt.timezone.utc)


def _coordinate(sentence: Sentence, what: str, value: str, hemisphere: str) -> float | None:
    if value == "" and hemisphere == "":
        return None
    pattern, positive, negative, limit = (
        (_LATITUDE, "N", "S", 90) if what == "latitude" else (_LONGITUDE, "E", "W", 180)
    )
    match = pattern.match(value)
    if match is None or hemisphere not in (positive, negative):
        raise _bad(sentence, what, f"{value},{hemisphere}")
    degrees, minutes = int(match.group(1)), float(match.group(2))
    if minutes >= 60:
        raise _bad(sentence, what, value)
    angle = degrees + minutes / 60
    if angle > limit:
        raise NmeaFormatError(f"{sentence.talker}{sentence.kind}: {what} {value} is beyond {limit} degrees")
    return -angle if hemisphere == negative else angle


def _position(sentence: Sentence, fields: Sequence[str]) -> Position | None:
    latitude = _coordinate(sentence, "latitude", fields[0], fields[1])
    longitude = _coordinate(sentence, "longitude", fields[2], fields[3])
    if latitude is None and longitude is None:
        return None
    if latitude is None or longitude is None:
        raise NmeaFormatError(f"{sentence.talker}{sentence.kind}: latitude and longitude must both be given or both empty")
    return Position(latitude, longitude)


def parse_gga(sentence: Sentence) -> GgaReport:
    fields = list(sentence.fields)
    if sentence.kind != "GGA" or len(fields) != 14:
        raise NmeaFormatError(f"GGA needs 14 fields, {sentence.talker}{sentence.kind} has {len(fields)}")
    quality = fields[5]
    if not (len(quality) == 1 and quality.isdigit()):
        raise _bad(sentence, "fix quality", quality)
    satellites = fields[6]
    if satellites and not _UNSIGNED.match(satellites):
        raise _bad(sentence, "satellites in use", satellites)
    for unit_index in (9, 11):
        if fields[unit_index] not in ("", "M"):
            raise _bad(sentence, "altitude unit", fields[unit_index])
    return GgaReport(
        talker=sentence.talker,
        utc_time=_time(sentence, fields[0]),
        position=_position(sentence, fields[1:5]),
        quality=int(quality),
        satellites=int(satellites) if satellites else None,
        hdop=_number(sentence, "HDOP", fields[7], low=0, high=100),
        altitude_m=_number(sentence, "altitude", fields[8], low=-10_000, high=1_000_000),
        geoid_separation_m=_number(sentence, "geoid separation", fields[10], low=-1_000, high=1_000),
    )


def parse_rmc(sentence: Sentence) -> RmcReport:
    fields = list(sentence.fields)
    if sentence.kind != "RMC" or len(fields) not in (11, 12, 13):
        raise NmeaFormatError(f"RMC needs 11 to 13 fields, {sentence.talker}{sentence.kind} has {len(fields)}")
    status = fields[1]
    if status not in ("A", "V"):
        raise _bad(sentence, "status", status)
    utc_time = _time(sentence, fields[0])
    utc: dt.datetime | None = None
    if fields[8]:
        match = _DATE.match(fields[8])
        if match is None:
            raise _bad(sentence, "date", fields[8])
        day, month, year = (int(match.group(i)) for i in (1, 2, 3))
        # Two-digit years: GPS time began in 1980, so 80-99 are 19xx (old manuals' samples), the rest 20xx.
        year += 1900 if year >= 80 else 2000
        try:
            date = dt.date(year, month, day)
        except ValueError as exc:
            raise _bad(sentence, "date", fields[8]) from exc
        if utc_time is not None:
            utc = dt.datetime.combine(date, utc_time)
    mode = fields[11] if len(fields) >= 12 else None
    if mode is not None and mode not in ("", *"ADEFMNPRS"):
        raise _bad(sentence, "mode indicator", mode)
    return RmcReport(
        talker=sentence.talker,
        utc=utc,
        valid=status == "A",
        position=_position(sentence, fields[2:6]),
        speed_knots=_number(sentence, "speed", fields[6], low=0, high=100_000),
        course_deg=_number(sentence, "course", fields[7], low=0, high=360),
        mode=mode or None,
    )


def parse_nmea(line: str | bytes) -> Report | Sentence:
    """Parse one line: GGA and RMC become reports, other valid sentences come back as `Sentence`."""
    sentence = parse_sentence(line)
    if sentence.kind == "GGA" and sentence.talker != "P":
        return parse_gga(sentence)
    if sentence.kind == "RMC" and sentence.talker != "P":
        return parse_rmc(sentence)
    return sentence


@dataclass(frozen=True, slots=True)
class Fix:
    """The current position and how good it is; `received_at` is the monotonic time of its last report."""

    position: Position
    received_at: float
    quality: int | None
    satellites: int | None
    hdop: float | None
    altitude_m: float | None
    speed_m_per_s: float | None
    course_deg: float | None
    utc: dt.datetime | None


@dataclass(frozen=True, slots=True)
class _Heard:
    report: Report
    at: float
    order: int


class FixTracker:
    """Folds GGA and RMC reports into the current fix; pure (times are given by the caller).

    What is newest is decided by arrival order, not time: lines read in one
    chunk share a timestamp. Staleness is decided by time.
    """

    def __init__(self, max_age_s: float, sensor: str = "gnss") -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s!r}")
        self.max_age_s = max_age_s
        self.sensor = sensor
        self.heard_at: float | None = None
        self._order = 0
        self._gga: _Heard | None = None
        self._rmc: _Heard | None = None
        self._no_fix_order = 0

    def update(self, report: Report | Sentence, at: float) -> None:
        self.heard_at = at
        if not isinstance(report, (GgaReport, RmcReport)):
            return
        self._order += 1
        if not report.has_fix:
            self._no_fix_order = self._order
        elif isinstance(report, GgaReport):
            self._gga = _Heard(report, at, self._order)
        else:
            self._rmc = _Heard(report, at, self._order)

    def current(self, now: float) -> Fix:
        """The fix as of `now`; raises GnssNoFix or SensorSilent when there is none to trust."""
        if self.heard_at is None:
            raise SensorSilent(self.sensor, "no NMEA sentence received yet: check the port, its baud rate and the antenna")
        fixes = [heard for heard in (self._gga, self._rmc) if heard is not None]
        if not fixes or self._no_fix_order > max(heard.order for heard in fixes):
            raise GnssNoFix(
                self.sensor,
                "the receiver reports no position fix: it may lack sky view (check the antenna) or still be acquiring",
            )
        fresh = [heard for heard in fixes if now - heard.at <= self.max_age_s]
        if not fresh:
            age = now - max(heard.at for heard in fixes)
            raise SensorSilent(
                self.sensor,
                f"the last fix is {age:.1f} s old (limit {self.max_age_s:g} s): the receiver or its port went quiet",
            )
        newest = max(fresh, key=lambda heard: heard.order)
        position = newest.report.position
        assert position is not None  # only reports with has_fix are kept, and they have a position
        gga = next((h.report for h in fresh if isinstance(h.report, GgaReport)), None)
        rmc = next((h.report for h in fresh if isinstance(h.report, RmcReport)), None)
        return Fix(
            position=position,
            received_at=newest.at,
            quality=gga.quality if gga else None,
            satellites=gga.satellites if gga else None,
            hdop=gga.hdop if gga else None,
            altitude_m=gga.altitude_m if gga else None,
            speed_m_per_s=rmc.speed_knots * KNOTS_TO_M_PER_S if rmc and rmc.speed_knots is not None else None,
            course_deg=rmc.course_deg if rmc else None,
            utc=rmc.utc if rmc else None,
        )


@dataclass(frozen=True, slots=True)
class GnssConfig:
    """Where the receiver is (`url`: a device path or any pyserial URL) and how fresh a fix must be."""

    url: str
    name: str = "gnss"
    baudrate: int = 9600
    max_age_s: float = 10.0
    interval_s: float = 60.0
    read_timeout_s: float = 0.5
    reopen_s: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError("GNSS url must be a device path or a pyserial URL such as /dev/ttyUSB1")
        for label in ("max_age_s", "interval_s", "read_timeout_s", "reopen_s"):
            if not getattr(self, label) > 0:
                raise ValueError(f"GNSS {label} must be > 0, got {getattr(self, label)!r}")


@dataclass(slots=True)
class NmeaCounters:
    """What the reader has seen; bad lines are counted here instead of raised."""

    opens: int = 0
    lines: int = 0
    sentences: int = 0
    checksum_errors: int = 0
    format_errors: int = 0
    overlong: int = 0
    reopens: int = 0


class GnssReceiver:
    """A GNSS receiver on a serial port; `watch()` reads it, `read()` reports the current fix."""

    def __init__(
        self,
        config: GnssConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        open_port: Callable[..., Any] = serial.serial_for_url,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval_s
        self.counters = NmeaCounters()
        self.tracker = FixTracker(config.max_age_s, config.name)
        self._clock = clock
        self._wall_clock = wall_clock
        self._open_port = open_port
        self._sleep = sleep
        self._port: Any = None
        self._buffer = bytearray()
        self._discarding = False
        self._progress = asyncio.Condition()
        self.port_error: SensorMissing | None = None

    def feed_line(self, line: bytes, at: float) -> None:
        """Parse one line received at monotonic time `at`; a bad line is counted and skipped."""
        self.counters.lines += 1
        try:
            report = parse_nmea(line)
        except NmeaChecksumError as exc:
            self.counters.checksum_errors += 1
            log.debug("%s: %s", self.name, exc)
            return
        except NmeaFormatError as exc:
            self.counters.format_errors += 1
            log.debug("%s: %s", self.name, exc)
            return
        self.counters.sentences += 1
        self.tracker.update(report, at)

    def feed_bytes(self, chunk: bytes, at: float) -> None:
        """Split a chunk from the port into lines; a line longer than the cap is dropped whole."""
        for piece in chunk.splitlines(keepends=True):
            complete = piece.endswith(b"\n")
            if self._discarding:  # the rest of an overlong line
                self._discarding = not complete
                continue
            self._buffer += piece
            if len(self._buffer) > MAX_SENTENCE + 2:
                self.counters.overlong += 1
                self._buffer.clear()
                self._discarding = not complete
                continue
            if complete:
                line = bytes(self._buffer)
                self._buffer.clear()
                if line.strip():
                    self.feed_line(line, at)

    def _open(self) -> Any:
        try:
            return self._open_port(self.config.url, baudrate=self.config.baudrate, timeout=self.config.read_timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SensorMissing(self.name, f"cannot open GNSS port {self.config.url}: {exc}") from exc

    def _read_chunk(self, port: Any) -> bytes:
        return port.read(max(1, getattr(port, "in_waiting", 0) or 1))

    async def watch(self) -> None:
        """Read the port until cancelled (the agent runs this as a task); reopen it after `reopen_s` if it fails or disappears."""
        try:
            while True:
                try:
                    self._port = self._open()
                    self.port_error = None
                    self.counters.opens += 1
                    async with self._progress:
                        self._progress.notify_all()
                    while True:
                        chunk = await asyncio.to_thread(self._read_chunk, self._port)
                        if chunk:
                            self.feed_bytes(chunk, self._clock())
                            async with self._progress:
                                self._progress.notify_all()
                except SensorMissing as fault:
                    self.port_error = fault
                    log.warning("%s", fault)
                except (serial.SerialException, OSError) as exc:
                    self.port_error = SensorMissing(self.name, f"GNSS port {self.config.url} failed: {exc}")
                    self.port_error.__cause__ = exc
                    log.warning("%s", self.port_error)
                self._close_port()
                self.counters.reopens += 1
                await self._sleep(self.config.reopen_s)
        finally:
            self._close_port()

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            cancel = getattr(port, "cancel_read", None)
            if cancel is not None:
                try:
                    cancel()
                except Exception:  # pyserial raises assorted errors on a port already gone
                    log.debug("%s: cancel_read failed", self.name, exc_info=True)
            port.close()

    async def wait_until(self, predicate: Callable[[NmeaCounters], bool]) -> None:
        """Return once `predicate(counters)` holds, checked after each open and each chunk read.

        For tests and the HIL rig; wrap it in asyncio.wait_for. Note that opening
        the port discards what the receiver sent before (pyserial flushes input).
        """
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self.counters))

    async def wait_for_lines(self, count: int) -> None:
        """Return once `count` lines in total have been read."""
        await self.wait_until(lambda counters: counters.lines >= count)

    def current_fix(self) -> Fix:
        if self.port_error is not None and self.tracker.heard_at is None:
            raise self.port_error
        return self.tracker.current(self._clock())

    async def read(self) -> list[Sample]:
        fix = self.current_fix()
        at = self._wall_clock() - (self._clock() - fix.received_at)
        samples = [
            Sample(f"{self.name}.lat", fix.position.latitude, "lat", at),
            Sample(f"{self.name}.lon", fix.position.longitude, "lon", at),
        ]
        optional = (
            ("hdop", fix.hdop, None),
            ("alt", fix.altitude_m, "m"),
            ("sats", fix.satellites, "count"),
            ("speed", fix.speed_m_per_s, "m/s"),
        )
        samples += [Sample(f"{self.name}.{label}", value, unit, at) for label, value, unit in optional if value is not None]
        return samples
