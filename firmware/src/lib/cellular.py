"""What every NB-IoT modem driver of the node shares: waking and resetting the module, 3GPP TS 27.007 registration.

A driver (quectel.Bc66, simcom.Sim7080) is a `Cellular` plus its vendor's UDP
socket commands, behind one interface the node's cycle uses:

    setup(settings) -> dict   once after power-on or a modem reset: echo off,
                              numeric errors, PSM/eDRX, vendor settings; returns
                              what the node should remember (the socket API)
    wake()                    the modem answers AT (a reset pulse if it is hung)
    attach(timeout_ms)        registered and able to send
    open_udp(host, port) -> socket
    send(socket, data, last=False)   last: the cycle's last exchange (Release Assistance)
    receive(socket, timeout_ms) -> bytes or None
    release()                 after the last ack: Release Assistance, where the
                              module gives it as a command rather than with a send
    close(socket)

Registration is +CEREG (TS 27.007 §10.1.22): <stat> 1 (home) or 5 (roaming)
is registered, 3 is denied (no point waiting), 0/2/4 keep waiting.
"""

import time

from errors import CommandError, ModemGarbage, ModemTimeout, NetworkError
from runtime import release

REGISTERED = (1, 5)
DENIED = 3


def quoted(text):
    """A string parameter for an AT command line; refuses what would break the line (V.250 §5.4.2.2)."""
    if '"' in text or "\r" in text or "\n" in text:
        raise ValueError("%r cannot be sent as an AT string parameter" % (text,))
    return '"' + text + '"'


def fields(line, prefix):
    """The comma-separated fields after 'prefix' (quotes kept); ModemGarbage if the line does not start with it."""
    if not line.startswith(prefix):
        raise ModemGarbage("expected %s..., got %r" % (prefix, line))
    return [part.strip() for part in line[len(prefix) :].split(",")]


def integer(text, what):
    try:
        return int(text)
    except ValueError:
        raise ModemGarbage("%s should be an integer, got %r" % (what, text))


def parse_cereg(line):
    """<stat> from '+CEREG: <n>,<stat>[,...]' (read form) or '+CEREG: <stat>[,...]' (URC)."""
    parts = fields(line, "+CEREG:")
    if len(parts) >= 2 and not parts[1].startswith('"'):
        integer(parts[0], "+CEREG <n>")
        return integer(parts[1], "+CEREG <stat>")
    return integer(parts[0], "+CEREG <stat>")


class Cellular:
    """Shared behaviour of the node's modem drivers (see the module docstring)."""

    URCS = ("+CEREG:", "RDY")
    BOOT_URC = "RDY"

    def __init__(self, port, reset_pin=None, reset_active=0, timeout_ms=5000, network_timeout_ms=60000,
                 reset_pulse_ms=300, boot_ms=10000, sleep_ms=None):
        self.port = port
        port.urc_prefixes = tuple(port.urc_prefixes) + tuple(p for p in self.URCS if p not in port.urc_prefixes)
        self.reset_pin = reset_pin
        self.reset_active = reset_active
        self.timeout_ms = timeout_ms
        self.network_timeout_ms = network_timeout_ms
        self.reset_pulse_ms = reset_pulse_ms
        self.boot_ms = boot_ms
        self._sleep_ms = sleep_ms if sleep_ms is not None else time.sleep_ms
        self.resets = 0
        if reset_pin is not None:
            reset_pin.value(1 - reset_active)

    def command(self, text, timeout_ms=None, **options):
        return self.port.command(text, self.timeout_ms if timeout_ms is None else timeout_ms, **options)

    def _feed(self):
        if self.port.feed is not None:
            self.port.feed()

    def sleep(self, milliseconds):
        """Wait, feeding the watchdog at least every 500 ms."""
        deadline = time.ticks_add(time.ticks_ms(), milliseconds)
        while True:
            self._feed()
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return
            self._sleep_ms(min(left, 500))

    # --- waking, resetting ---

    def sync(self, attempts=3, timeout_ms=None):
        """Send AT until it answers OK. A modem waking from PSM or deep sleep may miss the first one."""
        timeout_ms = min(1000, self.timeout_ms) if timeout_ms is None else timeout_ms
        for _ in range(attempts):
            try:
                self.command("AT", timeout_ms)
                return
            except (ModemTimeout, CommandError):
                self.port.poll()
        raise ModemTimeout("the modem does not answer AT (%d attempts of %d ms)" % (attempts, timeout_ms))

    def reset(self):
        """Pulse the reset line, wait for the boot URC (or the boot time), and sync again (modemsetup.reset)."""
        import modemsetup  # only for a hung modem: not loaded on the wakes that need none of it

        try:
            modemsetup.reset(self)
        finally:
            release("modemsetup")

    def wake(self):
        """Make sure the modem answers; reset it once if it does not. True if it was reset (setup needed again)."""
        try:
            self.sync()
            return False
        except ModemTimeout:
            self.reset()
            return True

    # --- setup, registration ---

    def setup(self, settings):
        self.command("ATE0")
        self.command("AT+CMEE=1")
        return {}

    def registration(self):
        """<stat> of AT+CEREG? (TS 27.007 §10.1.22)."""
        lines = self.command("AT+CEREG?", response="+CEREG:")
        for line in lines:
            if line.startswith("+CEREG:"):
                return parse_cereg(line)
        raise ModemGarbage("AT+CEREG? answered no +CEREG line: %r" % (lines,))

    def wait_registered(self, timeout_ms=None):
        deadline = time.ticks_add(time.ticks_ms(), self.network_timeout_ms if timeout_ms is None else timeout_ms)
        while True:
            stat = self.registration()
            if stat in REGISTERED:
                return stat
            if stat == DENIED:
                raise NetworkError("the network denied registration (+CEREG <stat> 3)")
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise NetworkError("not registered in time (last +CEREG <stat> %d)" % stat)
            self.sleep(1000)

    def attach(self, timeout_ms=None):
        self.wait_registered(timeout_ms)

    def release(self):
        """Release Assistance after the cycle's last ack, for modules that give it as a command (default: none)."""

    def network_time(self):
        """UTC unix seconds from the network clock (AT+CCLK?), for a node whose RTC lost its time (modemsetup)."""
        import modemsetup

        try:
            return modemsetup.network_time(self)
        finally:
            release("modemsetup")
