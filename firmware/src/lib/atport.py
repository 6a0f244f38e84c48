"""The AT channel to the node's modem over machine.UART: commands and final result codes, URCs, the data prompt.

One command at a time (V.250 §5.7.1: a modem answers a command line with
information lines and one final result code). The channel never blocks
forever and never trusts the line: every wait has a deadline (ModemTimeout),
a line that is not UTF-8 or overflows `max_line` is counted in `garbage` and
skipped, and error finals become CommandError with the +CME code. Lines that
start with one of the driver's URC prefixes are queued (at most
`urc_backlog`, oldest dropped and counted) whether they arrive during a
command or between commands; the drivers wait for them with `wait_urc`.

Two vendor shapes need more than lines:

* a data prompt: AT+CASEND (SIM7080G) answers ``>`` with no line end, and the
  payload follows (`command(..., data=...)`);
* a length-prefixed binary answer: ``+CARECV: <len>,<len raw bytes>`` may hold
  CR and LF inside the data (`command(..., binary="+CARECV: ")`, the bytes land
  in `self.data`).

A command that timed out may still be answered later; that late final
result must not be taken for the next command's. So after a timeout the next
command first gives the late answer `late_ms` to arrive and discards it.

`commands` counts round trips, the figure bench/firmware.py reports.
"""

import binascii
import time

from errors import CommandError, ModemTimeout

PROMPT = object()  # not ">": a garbage line reading ">" must never pass for the data prompt
_CR, _LF = 13, 10


def _error_code(line):
    """The <err> of '+CME ERROR: <err>' as an int, or None (bare ERROR, or verbose text)."""
    colon = line.find(":")
    if colon < 0:
        return None
    try:
        return int(line[colon + 1 :].strip())
    except ValueError:
        return None


class AtPort:
    def __init__(self, uart, urcs=(), feed=None, max_line=1100, urc_backlog=16, idle_ms=2, late_ms=200):
        self.uart = uart
        self.urc_prefixes = tuple(urcs)
        self.feed = feed
        self.max_line = max_line
        self.urc_backlog = urc_backlog
        self.idle_ms = idle_ms
        self.late_ms = late_ms
        self._stale = False  # the last command timed out: its answer may still come
        self.commands = 0
        self.garbage = 0
        self.dropped_urcs = 0
        self.data = b""
        self.last_lines = []
        self._buffer = b""  # bytes, not bytearray: find() on bytearray is missing from some ports
        self._urcs = []

    # --- reading ---

    def _read_some(self, deadline):
        """Append whatever the UART holds; wait (feeding the watchdog) until deadline for at least one byte."""
        while True:
            chunk = self.uart.read(256)
            if chunk:
                self._buffer += chunk
                return True
            if self.feed is not None:
                self.feed()
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                return False
            time.sleep_ms(self.idle_ms)

    def _next(self, deadline, prompt=False, binary=None):
        """The next line (str), PROMPT, or (header, data) for a binary answer; ModemTimeout at the deadline."""
        while True:
            buffer = self._buffer
            start = 0
            while start < len(buffer) and buffer[start] in (_CR, _LF):
                start += 1
            if start:
                buffer = self._buffer = buffer[start:]
            if prompt and buffer[:1] == b">":
                self._buffer = buffer[2 if buffer[1:2] == b" " else 1 :]
                return PROMPT
            if binary is not None and buffer[: len(binary)] == binary:
                item = self._binary(binary)
                if item is not None:
                    return item
                if len(self._buffer) > self.max_line:
                    self.garbage += 1
                    self._buffer = b""
                    continue
            else:
                newline = buffer.find(b"\n")
                if newline >= 0:
                    end = newline - 1 if newline and buffer[newline - 1] == _CR else newline
                    self._buffer = buffer[newline + 1 :]
                    try:
                        # decoded straight from the buffer, without the CR: a long line (a datagram's hex) is copied
                        # once, not three times (a fragmented heap fails the large blocks first)
                        line = str(memoryview(buffer)[:end], "utf-8").strip()
                    except UnicodeError:
                        self.garbage += 1
                        continue
                    if line:
                        return line
                    continue
                if len(buffer) > self.max_line:
                    self.garbage += 1
                    self._buffer = b""
            if not self._read_some(deadline):
                raise ModemTimeout("no answer from the modem in time (waiting after %r)" % (self.last_lines[-3:],))

    def _binary(self, prefix):
        """Take '<prefix><len>,<len bytes>' from the buffer as (header, data) once it is all there; None if not yet.

        '<prefix>0' followed by a line end is an ordinary line ("nothing to read"),
        left for the line reader; so is anything without digits after the prefix.
        """
        buffer = self._buffer
        end = len(prefix)
        while end < len(buffer) and 48 <= buffer[end] <= 57:
            end += 1
        if end == len(buffer):
            return None  # the length is not complete yet
        if end == len(prefix) or buffer[end] != 44:  # no digits, or no comma: a plain line
            newline = buffer.find(b"\n")
            if newline < 0:
                return None
            raw = buffer[:newline]
            self._buffer = buffer[newline + 1 :]
            try:
                return raw.decode().strip(), b""
            except UnicodeError:
                self.garbage += 1
                return None
        length = int(buffer[len(prefix) : end].decode())
        if length > self.max_line:
            self.garbage += 1
            self._buffer = b""
            return None
        if len(buffer) < end + 1 + length:
            return None
        header = buffer[:end].decode()  # prefix and digits: ASCII by construction
        data = buffer[end + 1 : end + 1 + length]
        self._buffer = buffer[end + 1 + length :]
        return header, data

    def _is_urc(self, line):
        for prefix in self.urc_prefixes:
            if line.startswith(prefix):
                return True
        return False

    def _queue_urc(self, line):
        if len(self._urcs) >= self.urc_backlog:
            self._urcs.pop(0)
            self.dropped_urcs += 1
        self._urcs.append(line)

    def _line(self, deadline):
        """The next text line (no prompt or binary answer is expected outside a command)."""
        item = self._next(deadline)
        return item if isinstance(item, str) else ""

    def poll(self):
        """Sort whatever complete lines are waiting into URCs (queued) and strays (counted as garbage); never waits."""
        deadline = time.ticks_ms()
        while True:
            try:
                line = self._line(deadline)
            except ModemTimeout:
                return
            if self._is_urc(line):
                self._queue_urc(line)
            else:
                self.garbage += 1

    def clear(self):
        """Forget buffered input and queued URCs (after a modem reset)."""
        self._buffer = b""
        self._urcs = []

    # --- commands ---

    def command(self, text, timeout_ms=5000, response=None, data=None, binary=None, hex_tail=None):
        """Send one command line and return its information lines; raise CommandError on an error final.

        `response` is the prefix of this command's own answer lines (so an
        answer that looks like a URC, such as +CEREG:, stays an answer);
        `data` is sent after the ``>`` prompt; `binary` names a length-prefixed
        answer whose bytes go to `self.data`; `hex_tail` (bytes) goes on the line
        after `text` as upper-case hex, written 32 bytes at a time, so a datagram's
        hex never has to fit the heap in one piece.
        """
        if self._stale:
            self._discard_late_answer()
        self.poll()
        self.commands += 1
        self.data = b""
        lines = []
        self.last_lines = lines
        self.uart.write(text.encode())
        if hex_tail is not None:
            for start in range(0, len(hex_tail), 32):
                self.uart.write(binascii.hexlify(hex_tail[start : start + 32]).upper())
        self.uart.write(b"\r")
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        waiting_for_prompt = data is not None
        binary_prefix = binary.encode() if binary is not None else None
        while True:
            try:
                item = self._next(deadline, prompt=waiting_for_prompt, binary=binary_prefix)
            except ModemTimeout:
                self._stale = True
                raise ModemTimeout("%s: no final result code within %d ms (lines so far: %r)" % (text, timeout_ms, lines[-3:]))
            if item is PROMPT:
                self.uart.write(data)
                waiting_for_prompt = False
                continue
            if isinstance(item, tuple):
                lines.append(item[0])
                self.data = item[1]
                continue
            if not isinstance(item, str):
                continue
            line = item
            if line == text:
                continue  # the echo (ATE1, the power-on default)
            if line == "OK":
                return lines
            if line == "ERROR" or line.startswith("+CME ERROR:") or line.startswith("+CMS ERROR:"):
                raise CommandError(text, line, _error_code(line))
            if response is not None and line.startswith(response):
                lines.append(line)
            elif self._is_urc(line):
                self._queue_urc(line)
            else:
                lines.append(line)

    def _discard_late_answer(self):
        deadline = time.ticks_add(time.ticks_ms(), self.late_ms)
        while True:
            try:
                line = self._line(deadline)
            except ModemTimeout:
                break
            if self._is_urc(line):
                self._queue_urc(line)
            else:
                self.garbage += 1
        self._stale = False

    def take_urc(self, prefix):
        """A queued URC starting with prefix (removed from the queue), or None; never waits."""
        self.poll()
        for index, line in enumerate(self._urcs):
            if line.startswith(prefix):
                return self._urcs.pop(index)
        return None

    def wait_urc(self, prefix, timeout_ms):
        """Wait for a URC starting with prefix; other URCs stay queued. ModemTimeout when none came in time."""
        found = self.take_urc(prefix)
        if found is not None:
            return found
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            try:
                line = self._line(deadline)
            except ModemTimeout:
                raise ModemTimeout("no %s from the modem within %d ms" % (prefix, timeout_ms))
            if line.startswith(prefix):
                return line
            if self._is_urc(line):
                self._queue_urc(line)
            else:
                self.garbage += 1
