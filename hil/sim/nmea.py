"""hil.sim.nmea — a simulated GNSS receiver writing NMEA 0183 onto a pseudo-terminal.

A reader opens `feed.port` by path with pyserial, exactly like a receiver on
/dev/ttyUSB1. Each epoch is a GGA and an RMC built from the feed's state, which
a test changes between epochs:

    with NmeaFeed(latitude=47.2853, longitude=8.5652) as feed:
        feed.emit_epoch()                       # one GGA + RMC, now
        feed.move_to(47.3, 8.6); feed.set_hdop(4.2)
        feed.lose_fix(); feed.regain_fix()
        feed.corrupt_checksums(2)               # the next two sentences carry a wrong *hh
        feed.send_raw(b"\\x00\\xffnoise\\r\\n")     # garbage on the line

Tests call `emit_epoch()` themselves, so nothing depends on wall-clock timing;
`start(rate_hz)` emits in a background thread for the demo and the HIL rig,
and `python -m hil.sim.nmea --link PATH` runs one until SIGINT. Every line
written is recorded in `sent` with its monotonic time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import os
import signal
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from drivers.gnss import checksum


def nmea_sentence(body: str, *, corrupt: bool = False) -> str:
    """Frame `body` ("GPGGA,…") as "$body*hh\\r\\n"; `corrupt` gives a checksum off by one bit."""
    value = checksum(body) ^ (0x01 if corrupt else 0x00)
    return f"${body}*{value:02X}\r\n"


def format_latitude(degrees: float) -> tuple[str, str]:
    whole, minutes = divmod(abs(degrees) * 60, 60)
    text = f"{int(whole):02d}{minutes:08.5f}"
    if text.endswith("60.00000"):  # rounding carried into the next degree
        text = f"{int(whole) + 1:02d}00.00000"
    return text, "N" if degrees >= 0 else "S"


def format_longitude(degrees: float) -> tuple[str, str]:
    whole, minutes = divmod(abs(degrees) * 60, 60)
    text = f"{int(whole):03d}{minutes:08.5f}"
    if text.endswith("60.00000"):
        text = f"{int(whole) + 1:03d}00.00000"
    return text, "E" if degrees >= 0 else "W"


class NmeaFeed:
    """A receiver on a pseudo-terminal; `port` is the path to open (or `link`, a symlink to it)."""

    def __init__(
        self,
        *,
        latitude: float = 47.28530,
        longitude: float = 8.56520,
        altitude_m: float = 499.6,
        hdop: float = 0.9,
        satellites: int = 9,
        talker: str = "GP",
        utc: Callable[[], dt.datetime] | None = None,
        link: Path | str | None = None,
    ) -> None:
        if len(talker) != 2 or not talker.isalpha() or not talker.isupper():
            raise ValueError(f"talker must be two capital letters such as 'GP' or 'GN', got {talker!r}")
        self.latitude, self.longitude, self.altitude_m = latitude, longitude, altitude_m
        self.hdop, self.satellites, self.talker = hdop, satellites, talker
        self.speed_knots, self.course_deg = 0.0, 0.0
        self.has_fix = True
        self.sent: list[tuple[float, bytes]] = []
        self.dropped_bytes = 0
        self._corrupt = 0
        self._epoch = 0
        self._utc = utc or self._epoch_clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._master, self._slave = os.openpty()
        # Raw on the terminal side from the start: no echo, no CR/LF translation,
        # even for bytes written before the reader opens and configures it.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.link = Path(link) if link is not None else None
        if self.link is not None:
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self.port)

    @property
    def path(self) -> str:
        """What a reader should open: the stable link if there is one, else the pty itself."""
        return str(self.link) if self.link is not None else self.port

    def _epoch_clock(self) -> dt.datetime:
        # Deterministic time: one second per epoch from a fixed start.
        return dt.datetime(2025, 5, 20, 12, 0, 0, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=self._epoch)

    # --- knobs -------------------------------------------------------------
    def move_to(self, latitude: float, longitude: float, altitude_m: float | None = None) -> None:
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise ValueError(f"position {latitude}, {longitude} is not on Earth")
        with self._lock:
            self.latitude, self.longitude = latitude, longitude
            if altitude_m is not None:
                self.altitude_m = altitude_m

    def set_hdop(self, hdop: float) -> None:
        with self._lock:
            self.hdop = hdop

    def set_satellites(self, satellites: int) -> None:
        with self._lock:
            self.satellites = satellites

    def lose_fix(self) -> None:
        """The antenna loses the sky: GGA quality 0 and RMC status V, empty position fields."""
        with self._lock:
            self.has_fix = False

    def regain_fix(self) -> None:
        with self._lock:
            self.has_fix = True

    def corrupt_checksums(self, count: int = 1) -> None:
        """The next `count` sentences go out with a wrong checksum."""
        with self._lock:
            self._corrupt += count

    # --- output ------------------------------------------------------------
    def sentences(self) -> list[str]:
        """The GGA and RMC of the current state, framed, without advancing the epoch."""
        with self._lock:
            now = self._utc()
            hhmmss = now.strftime("%H%M%S") + f".{now.microsecond // 10_000:02d}"
            ddmmyy = now.strftime("%d%m%y")
            if self.has_fix:
                lat, ns = format_latitude(self.latitude)
                lon, ew = format_longitude(self.longitude)
                gga = (
                    f"{self.talker}GGA,{hhmmss},{lat},{ns},{lon},{ew},1,{self.satellites:02d},"
                    f"{self.hdop:.2f},{self.altitude_m:.1f},M,48.0,M,,"
                )
                rmc = (
                    f"{self.talker}RMC,{hhmmss},A,{lat},{ns},{lon},{ew},{self.speed_knots:.3f},"
                    f"{self.course_deg:.2f},{ddmmyy},,,A"
                )
            else:
                # What a u-blox receiver sends without a fix (time kept once known).
                gga = f"{self.talker}GGA,{hhmmss},,,,,0,00,99.99,,,,,,"
                rmc = f"{self.talker}RMC,{hhmmss},V,,,,,,,{ddmmyy},,,N"
            lines = []
            for body in (gga, rmc):
                corrupt = self._corrupt > 0
                self._corrupt -= corrupt
                lines.append(nmea_sentence(body, corrupt=corrupt))
            return lines

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: garbage, a truncated sentence, anything."""
        with self._lock:
            self.sent.append((time.monotonic(), data))
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self._master, view)
                except BlockingIOError:
                    # Nobody reads and the pty buffer is full: a real UART overruns too.
                    self.dropped_bytes += len(view)
                    return
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        self.dropped_bytes += len(view)
                        return
                    raise
                view = view[written:]

    def emit_epoch(self) -> list[str]:
        """Send one epoch (GGA then RMC) now and advance the simulated clock by a second."""
        lines = self.sentences()
        self.send_raw("".join(lines).encode("ascii"))
        with self._lock:
            self._epoch += 1
        return lines

    def start(self, rate_hz: float = 1.0) -> None:
        """Emit epochs from a background thread until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("the feed is already running")
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(1 / rate_hz):
                self.emit_epoch()

        self._thread = threading.Thread(target=loop, name="nmea-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def __enter__(self) -> NmeaFeed:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim.nmea", description="A simulated NMEA GNSS receiver on a pty.")
    parser.add_argument("--link", type=Path, help="symlink to create to the pty (a stable path for the reader)")
    parser.add_argument("--rate", type=float, default=1.0, help="epochs per second (default 1)")
    parser.add_argument("--lat", type=float, default=47.28530)
    parser.add_argument("--lon", type=float, default=8.56520)
    parser.add_argument("--talker", default="GP")
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with NmeaFeed(latitude=args.lat, longitude=args.lon, talker=args.talker, link=args.link,
                  utc=lambda: dt.datetime.now(dt.timezone.utc)) as feed:
        print(feed.path, flush=True)
        feed.start(args.rate)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
