"""MicroPython's raw REPL over a serial port: the protocol ``mpremote`` and ``pyboard.py`` speak, spoken with pyserial.

The board side is MicroPython's ``pyexec_raw_repl`` (``shared/runtime/pyexec.c``):

* ``\\r\\x03\\x03`` (Ctrl-C twice) interrupts whatever the board is running;
* ``\\r\\x01`` (Ctrl-A) enters the raw REPL, which answers
  ``raw REPL; CTRL-B to exit\\r\\n>``;
* ``\\x04`` (Ctrl-D) on an empty line soft-resets the board (``soft reboot\\r\\n``,
  then the raw REPL banner and ``>`` again): a clean heap and no user code;
* code, then ``\\x04``: the board answers ``OK``, runs the code, and sends its
  standard output, ``\\x04``, the traceback of an uncaught exception (empty
  if none), ``\\x04``, and the ``>`` prompt for the next code;
* ``\\r\\x02`` (Ctrl-B) leaves for the friendly REPL.

A node that ``provision node`` locked (firmware/src/lib/lock.py) answers none
of this: its boot.py never returns and Ctrl-C is an ordinary byte there. It
says its ``LOCKED`` line at every start and every second while it waits, and
`enter` raises `NodeLockedError` when it sees that line.

Code goes out in 256-byte pieces 10 ms apart, as ``pyboard.py`` does: a USB
serial bridge feeding a board's UART has a small receive ring and the raw
REPL reads it one character at a time.

This module is synchronous on purpose: flashing is one strict request and
answer after another over one port, with nothing to overlap (the same choice
``mpremote`` makes).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import serial

from provisioning.exc import DeviceCodeError, NodeLockedError, NoRawReplError, RawReplError

BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"soft reboot\r\n"
LOCKED = b"pledgewatch: node locked"  # the start of firmware/src/lib/lock.py's LOCKED line
CHUNK = 256
CHUNK_PAUSE_S = 0.01


class RawRepl:
    """One board's raw REPL on an open pyserial port: `enter()`, then `exec()` as often as needed, then `exit()`."""

    def __init__(self, port: serial.Serial, *, timeout: float = 5.0, chunk_pause: float = CHUNK_PAUSE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port = port
        self.timeout = timeout
        self.chunk_pause = chunk_pause
        self._clock = clock
        self.active = False
        self._prompt_pending = False  # True when the next '>' prompt was already read
        self._pending = bytearray()  # bytes read past what the last read asked for

    @property
    def name(self) -> str:
        return str(self.port.port)

    def _read_until(self, ending: bytes, timeout: float, *, unless: bytes | None = None,
                    limit: float | None = None) -> bytes:
        """Read through the first `ending`, or until nothing came for `timeout` seconds; return what came.

        Bytes after `ending` stay buffered for the next read. If `unless` comes first, return what came
        with it (a locked node's line, which repeats and would otherwise keep the wait going). `limit` caps
        the whole wait (a board that keeps talking without ever answering).
        """
        data = self._pending
        last = self._clock()
        give_up = None if limit is None else last + limit
        while True:
            if unless is not None and unless in data and ending not in data:
                taken = bytes(data)
                data.clear()
                return taken
            index = data.find(ending)
            if index >= 0:
                taken = bytes(data[:index + len(ending)])
                del data[:index + len(ending)]
                return taken
            try:
                chunk = self.port.read(max(1, min(self.port.in_waiting, 4096)))
            except (serial.SerialException, OSError) as exc:
                raise RawReplError(f"{self.name}: the port failed while reading ({exc}); is the board still plugged in?"
                                   ) from exc
            if chunk:
                data += chunk
                last = self._clock()
            quiet_too_long = not chunk and self._clock() - last > timeout
            if quiet_too_long or (give_up is not None and self._clock() > give_up):
                taken = bytes(data)
                data.clear()
                return taken

    def _drain(self) -> bytes:
        """Discard what the board sent until it is quiet for a moment; return it (a locked node says so)."""
        drained = bytes(self._pending)
        self._pending.clear()
        while True:
            waiting = self.port.in_waiting
            if not waiting:
                time.sleep(0.02)
                if not self.port.in_waiting:
                    return drained[-4096:]
                continue
            drained = (drained + self.port.read(waiting))[-4096:]

    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise RawReplError(f"{self.name}: the port failed while writing ({exc}); is the board still plugged in?"
                               ) from exc

    def enter(self, *, soft_reset: bool = True) -> None:
        """Interrupt the board's program and enter the raw REPL (optionally soft-resetting it first)."""
        self._write(b"\r\x03\x03")
        drained = self._drain()
        self._write(b"\r\x01")
        data = self._read_until(BANNER + b">", self.timeout, unless=LOCKED, limit=3 * self.timeout)
        if not data.endswith(BANNER + b">"):
            raise self._no_repl(drained + data)
        if soft_reset:
            self._write(b"\x04")
            data = self._read_until(SOFT_REBOOT, self.timeout)
            if not data.endswith(SOFT_REBOOT):
                raise self._no_repl(data, "after a soft reset")
            data = self._read_until(BANNER, self.timeout, unless=LOCKED)  # boot.py runs: a locked one never ends
            if not data.endswith(BANNER):
                raise self._no_repl(data, "after a soft reset")
        self.active = True
        self._prompt_pending = not soft_reset  # without a reset, the '>' after the banner was already read

    def _no_repl(self, data: bytes, when: str = "") -> NoRawReplError:
        if LOCKED in data:
            return NodeLockedError(
                f"the node on {self.name} is locked (provisioned before: no REPL over USB, its key unreadable): "
                "to provision it again, erase its flash (ESP32: esptool.py erase_flash; RP2040: flash_nuke.uf2), "
                "install MicroPython and provision it as a new node: it gets a new key and is enrolled again")
        seen = f"it sent {data[-60:]!r}" if data else "it sent nothing"
        return NoRawReplError(
            f"the device on {self.name} does not answer MicroPython's raw REPL{' ' + when if when else ''} ({seen}): "
            "check it is a MicroPython board on this port, press its reset button, and try again"
        )

    def _expect_prompt(self) -> None:
        if self._prompt_pending:
            self._prompt_pending = False
            return
        prompt = self._read_until(b">", self.timeout)
        if not prompt.endswith(b">"):
            self.active = False
            raise self._no_repl(prompt, "(no prompt)")

    def exec(self, code: str | bytes, *, timeout: float | None = None) -> bytes:
        """Run `code` on the board and return its standard output; `DeviceCodeError` if it raised there."""
        if not self.active:
            raise RawReplError("enter() the raw REPL before exec()")
        timeout = self.timeout if timeout is None else timeout
        source = code.encode("utf-8") if isinstance(code, str) else bytes(code)
        self._expect_prompt()
        for start in range(0, len(source), CHUNK):
            self._write(source[start:start + CHUNK])
            if self.chunk_pause:
                time.sleep(self.chunk_pause)
        self._write(b"\x04")
        answer = self._read_until(b"OK", self.timeout)
        if not answer.endswith(b"OK"):
            self.active = False
            raise RawReplError(f"{self.name}: the board did not accept the code (answered {answer[-40:]!r}); "
                               "re-run to start again")
        output = self._read_until(b"\x04", timeout)
        if not output.endswith(b"\x04"):
            self.active = False
            raise RawReplError(f"{self.name}: the board did not finish the code within {timeout:.0f} s "
                               f"(last output {output[-60:]!r}); press its reset button and re-run")
        error = self._read_until(b"\x04", timeout)
        if not error.endswith(b"\x04"):
            self.active = False
            raise RawReplError(f"{self.name}: the board's answer was cut short; re-run")
        error_text = error[:-1].decode("utf-8", "replace").strip()
        if error_text:
            last = error_text.splitlines()[-1]
            raise DeviceCodeError(f"{self.name}: code on the board failed: {last}", error_text)
        return output[:-1]

    def eval_text(self, code: str, *, timeout: float | None = None) -> str:
        """`exec` and return the output as stripped text."""
        return self.exec(code, timeout=timeout).decode("utf-8", "replace").strip()

    def soft_reset(self) -> None:
        """Soft-reset the board and stay in the raw REPL (a clean heap; modules imported again)."""
        self._expect_prompt()
        self._write(b"\x04")
        data = self._read_until(BANNER, self.timeout, unless=LOCKED)
        if SOFT_REBOOT not in data or not data.endswith(BANNER):
            raise self._no_repl(data, "after a soft reset")

    def exit(self) -> None:
        """Leave the raw REPL for the friendly one (the board's boot files are not run again)."""
        if self.active:
            self.active = False
            try:
                self.port.write(b"\r\x02")
            except (serial.SerialException, OSError):
                pass
