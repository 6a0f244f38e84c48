"""Serial transport: opens any pyserial URL and hands received bytes to an asyncio loop.

This is the lowest layer of the modem stack (transport → AT channel → modem
driver → health monitor). It knows nothing about AT commands: it opens a port,
writes bytes, and calls `on_data(bytes)` from the event loop whenever bytes
arrive, or `on_lost(exc)` once when the port goes away.

Two ways of reading a pyserial port from asyncio are implemented, because
pyserial itself is blocking:

* ``"fd"`` — `loop.add_reader` on the port's file descriptor. Serial devices
  and pseudo-terminals are selectable, so the event loop wakes up exactly when
  bytes are there and reads them in the loop thread. No extra thread, no
  cross-thread hand-off.
* ``"thread"`` — a reader thread blocks in `Serial.read` and passes chunks to
  the loop with `call_soon_threadsafe`. Needed for URLs without a file
  descriptor (``socket://``, ``loop://``, ``rfc2217://``).

``"auto"`` picks ``"fd"`` whenever the port has a usable descriptor. Measured
with `python -m bench at` (round trips through a pseudo-terminal against the
simulator, same run): the fd reader is the faster of the two, because every
thread hand-off costs a GIL switch and a self-pipe wake-up; the figures are in
the benchmark's output (`channel_round_trips_per_s` vs
`channel_thread_round_trips_per_s`).

For plain POSIX ports the fd reader calls `os.read` directly; for wrappers
that add behaviour on read (``spy://`` prints a hex trace) it goes through
`Serial.read` so that behaviour is kept.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import serial
import serial.serialposix

from drivers.exc import AtPortError, PortClosedError

log = logging.getLogger(__name__)

ReaderKind = Literal["auto", "fd", "thread"]

_READ_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Where and how to open a serial port.

    `url` is anything `serial.serial_for_url` accepts: ``/dev/ttyUSB2``, a
    pseudo-terminal path, ``socket://host:port``, ``spy:///dev/ttyUSB2``.
    """

    url: str
    baudrate: int = 115200
    reader: ReaderKind = "auto"
    write_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"serial URL must be a non-empty string, got {self.url!r}")
        if self.baudrate <= 0:
            raise ValueError(f"baud rate must be positive, got {self.baudrate} for {self.url}")
        if self.reader not in ("auto", "fd", "thread"):
            raise ValueError(f"reader must be 'auto', 'fd' or 'thread', got {self.reader!r}")
        if self.write_timeout_s <= 0:
            raise ValueError(f"write timeout must be positive, got {self.write_timeout_s}")


class SerialTransport:
    """One open serial port feeding an asyncio loop.

    Construct it with the callbacks, then `open()`; `close()` is idempotent.
    `on_lost` is called at most once per `open()`, from the loop thread, when
    the port disappears (EIO, hang-up, USB unplug) — never after `close()`.
    """

    def __init__(self, config: TransportConfig, *, on_data: Callable[[bytes], None],
                 on_lost: Callable[[Exception], None]) -> None:
        self.config = config
        self._on_data = on_data
        self._on_lost = on_lost
        self._port: serial.SerialBase | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._direct_fd = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.kind: Literal["fd", "thread"] | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port and start delivering bytes to the running loop."""
        if self._port is not None:
            return
        loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            port = serial.serial_for_url(cfg.url, baudrate=cfg.baudrate, timeout=0,
                                         write_timeout=cfg.write_timeout_s, do_not_open=True)
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise AtPortError(f"cannot open serial port {cfg.url!r}: {exc}; check that the device exists, "
                            "is not held by another program (ModemManager?) and that you may open it") from exc
        fd = _usable_fd(port)
        kind = cfg.reader
        if kind == "auto":
            kind = "fd" if fd is not None else "thread"
        if kind == "fd" and fd is None:
            port.close()
            raise AtPortError(f"serial URL {cfg.url!r} has no file descriptor to watch; use reader='thread'")
        self._port, self._loop, self._fd, self.kind = port, loop, fd, kind
        # Plain POSIX ports are read with os.read (one syscall per wake-up);
        # wrappers such as spy:// must see the read to do their job.
        self._direct_fd = type(port) is serial.serialposix.Serial
        self._stop.clear()
        if kind == "fd":
            assert fd is not None
            loop.add_reader(fd, self._read_ready)
        else:
            port.timeout = 0.05  # how quickly the thread notices close()
            self._thread = threading.Thread(target=self._read_thread, args=(port,),
                                            name=f"serial-reader {cfg.url}", daemon=True)
            self._thread.start()

    def write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise PortClosedError(f"serial port {self.config.url!r} is not open; open the channel first")
        try:
            if self._direct_fd:
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(self._fd, view)  # type: ignore[arg-type]
                    except BlockingIOError:
                        port.write(bytes(view))  # slow path: pyserial waits for room, honours write_timeout
                        return
                    view = view[n:]
            else:
                port.write(data)
        except serial.SerialTimeoutException as exc:
            raise AtPortError(f"write to {self.config.url!r} timed out after {self.config.write_timeout_s}s: "
                            "the device does not take data (flow control stuck?)") from exc
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            raise PortClosedError(f"serial port {self.config.url!r} failed on write: {exc}") from exc

    def close(self) -> None:
        port = self._port
        if port is None:
            return
        self._port = None
        self._stop.set()
        if self.kind == "fd" and self._loop is not None and self._fd is not None:
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):  # loop closed or fd already gone
                pass
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("closing %s: %s", self.config.url, exc)
        self._fd = None

    # -- reading -----------------------------------------------------------

    def _read_ready(self) -> None:
        port, fd = self._port, self._fd
        if port is None or fd is None:
            return
        try:
            if self._direct_fd:
                data = os.read(fd, _READ_CHUNK)
            else:
                data = port.read(max(1, port.in_waiting))
        except BlockingIOError:
            return
        except (serial.SerialException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EINTR:
                return
            self._lost(exc)
            return
        if not data:
            # Readable but empty: the other side hung up (pty master closed, USB gone).
            self._lost(PortClosedError(f"{self.config.url}: device reported hang-up"))
            return
        self._on_data(data)

    def _read_thread(self, port: serial.SerialBase) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial raises these when the port
                # is closed under a blocked read.
                if not self._stop.is_set():
                    _call_soon(loop, self._lost_from_thread, port, exc)
                return
            if data:
                _call_soon(loop, self._deliver_from_thread, port, data)

    def _deliver_from_thread(self, port: serial.SerialBase, data: bytes) -> None:
        if self._port is port:
            self._on_data(data)

    def _lost_from_thread(self, port: serial.SerialBase, exc: Exception) -> None:
        if self._port is port:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        if self._port is None:
            return
        self.close()
        self._on_lost(exc)


def _usable_fd(port: serial.SerialBase) -> int | None:
    if not isinstance(port, serial.serialposix.Serial):
        return None
    try:
        return port.fileno()
    except (serial.SerialException, OSError, AttributeError):
        return None


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # loop already closed: nobody left to tell
        pass
