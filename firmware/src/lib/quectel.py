"""Driver for the Quectel BC66 / BC95 NB-IoT family: PSM and sleep settings, and UDP over whichever socket API the firmware has.

Two socket APIs exist in this family, and the module's firmware decides which
(`setup` probes once with the test commands, the node remembers the answer):

* "qi" (BC66 firmware; Quectel BC66 TCP/IP Application Note, "AT+QIOPEN",
  "AT+QISEND", "AT+QIRD", "+QIURC"): AT+QICFG="dataformat",1,1 makes sent and
  received data hex strings; AT+QIOPEN=1,<id>,"UDP",<host>,<port>,0,1 answers
  OK and then the URC +QIOPEN: <id>,<err> (0 = opened); access mode 1 (direct
  push) delivers datagrams as +QIURC: "recv",<id>,<length>,<hex data> (some
  firmware quotes the data); buffer mode (+QIURC: "recv",<id> alone) is read
  with AT+QIRD=<id>,<max> -> +QIRD: <length>, then the data line.
  AT+QISEND=<id>,<length>,<hex> answers OK and then SEND OK or SEND FAIL.
* "nso" (BC95 firmware; Quectel BC95 AT Commands Manual, "AT+NSOCR",
  "AT+NSOST", "AT+NSORF", "+NSONMI"): AT+NSOCR=DGRAM,17,<local port>,1 answers
  the socket number; AT+NSOST=<s>,<ip>,<port>,<length>,<hex> answers
  <s>,<length>; +NSONMI:<s>,<length> announces a datagram, read with
  AT+NSORF=<s>,<max> -> <s>,<ip>,<port>,<length>,<hex>,<remaining>. NSOST takes
  an IP address, not a host name.

A socket left open by a cycle cut short is closed and opened again (QIOPEN
<err> 563; NSOCR ERROR when all are taken).

+CME ERROR: 159 ("uplink busy", flow control) on a send is retried after a
short pause, `busy_retries` times. AT+CSCON=1 (TS 27.007 §10.1.30) makes the
module report its radio connection (+CSCON: <mode>), kept for the node's log
(`radio_modes`). Sleep (Quectel BC66 AT Commands Manual,
"AT+QSCLK"; TS 27.007 §7.38 AT+CPSMS, §7.40 AT+CEDRXS): setup enables deep
sleep (QSCLK=1; BC95 firmware sleeps without it and answers ERROR, which is
fine), PSM with the configured T3412/T3324 and eDRX off, so the module sleeps
between reports on its own once the socket is closed.

Release Assistance Indication (3GPP Rel-14; TS 24.301 §9.9.4.25): without it
the radio stays connected after the last exchange until the network's
inactivity timer (typically 10-20 s) runs out. The cycle's last datagram
(`send(..., last=True)`) carries it:

* "qi": AT+QNBIOTRAI=<rai> (Quectel BC66 AT Commands Manual, "AT+QNBIOTRAI
  NB-IoT Release Assistance Indication") sets it for what is sent next: 2
  (one uplink packet, one downlink packet expected: the network releases the
  connection once the ack is delivered) before the last datagram, 0 before
  any other, sent only when it changes;
* "nso": AT+NSOSTF (Quectel BC95 AT Commands Manual, "AT+NSOSTF SendTo
  Command with Flags") sends the last datagram with flag 0x400, release after
  the next message has been replied to, in place of AT+NSOST: no extra round
  trip.

A module that answers ERROR to either goes on without it for the cycle.
"""

import binascii

from cellular import Cellular, fields, integer, quoted
from errors import CommandError, ModemError, ModemGarbage, ModemTimeout, NetworkError
from runtime import release

UPLINK_BUSY = 159
SOCKET_IN_USE = 563  # +QIOPEN <err>: "socket identity has been used"
QI_CONNECT_ID = 0
NSO_SOCKETS = 7
API_QI = "qi"
API_NSO = "nso"
RAI_NONE = 0
RAI_ONE_REPLY = 2  # AT+QNBIOTRAI: one uplink packet, one downlink packet expected
NSO_RELEASE_AFTER_REPLY = "0x400"  # AT+NSOSTF <flag>: release after the next message has been replied to


def _unhex(text, length, what):
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        text = text[1:-1]
    if len(text) != 2 * length:
        raise ModemGarbage("%s announces %d bytes but carries %d hex digits" % (what, length, len(text)))
    try:
        return binascii.unhexlify(text)
    except ValueError:
        raise ModemGarbage("%s data is not hex: %r" % (what, text[:40]))


class Bc66(Cellular):
    """A Quectel BC66 (or BC95) on the node's UART."""

    URCS = ("+CEREG:", "RDY", "+QIURC:", "+QIOPEN:", "+NSONMI:", "SEND OK", "SEND FAIL", "+CSCON:")

    def __init__(self, port, socket_api=None, busy_retries=3, busy_pause_ms=500, local_port=0, rai=True, **options):
        super().__init__(port, **options)
        self.socket_api = socket_api
        self.busy_retries = busy_retries
        self.busy_pause_ms = busy_pause_ms
        self.local_port = local_port
        self.rai = rai
        self._rai_set = None  # what AT+QNBIOTRAI holds as far as this run knows
        self._peer = None

    def setup(self, settings):
        """After power-on or a reset: +CSCON, deep sleep, PSM, eDRX off, the socket API probed (modemsetup, loaded
        for the call only: most wakes find the module set up)."""
        import modemsetup

        try:
            return modemsetup.bc66_setup(self, settings)
        finally:
            release("modemsetup")

    def radio_modes(self):
        """The RRC connection modes (1 connected, 0 idle) the module reported since the last call (+CSCON URCs)."""
        modes = []
        while True:
            line = self.port.take_urc("+CSCON:")
            if line is None:
                return modes
            parts = fields(line, "+CSCON:")
            modes.append(integer(parts[-1], "+CSCON <mode>"))

    def _api(self):
        if self.socket_api not in (API_QI, API_NSO):
            raise ModemError("the socket API is unknown: run setup() first")
        return self.socket_api

    def _retrying_busy(self, text, **options):
        for attempt in range(self.busy_retries + 1):
            try:
                return self.command(text, self.network_timeout_ms, **options)
            except CommandError as error:
                if error.code != UPLINK_BUSY or attempt == self.busy_retries:
                    raise
                self.sleep(self.busy_pause_ms * (attempt + 1))
        return []

    # --- sockets ---

    def open_udp(self, host, port):
        self._peer = (host, port)
        if self._api() == API_QI:
            error = self._qiopen(host, port)
            if error == SOCKET_IN_USE:
                # A cycle cut short (power, watchdog) left it open; the module keeps it across PSM.
                self.command("AT+QICLOSE=%d" % QI_CONNECT_ID, self.network_timeout_ms)
                error = self._qiopen(host, port)
            if error != 0:
                raise NetworkError("AT+QIOPEN failed with <err> %d" % error)
            return QI_CONNECT_ID
        return self._nso().open_udp(self)

    def _qiopen(self, host, port):
        """<err> of +QIOPEN after AT+QIOPEN (0 = opened)."""
        self.command("AT+QIOPEN=1,%d,\"UDP\",%s,%d,0,1" % (QI_CONNECT_ID, quoted(host), port), self.network_timeout_ms)
        line = self.port.wait_urc("+QIOPEN:", self.network_timeout_ms)
        parts = fields(line, "+QIOPEN:")
        if len(parts) < 2 or integer(parts[0], "+QIOPEN <connectID>") != QI_CONNECT_ID:
            raise ModemGarbage("unexpected %r after AT+QIOPEN" % line)
        return integer(parts[1], "+QIOPEN <err>")

    def _qi_rai(self, last):
        wanted = RAI_ONE_REPLY if last else RAI_NONE
        if not self.rai or wanted == self._rai_set:
            return
        try:
            self.command("AT+QNBIOTRAI=%d" % wanted)
            self._rai_set = wanted
        except CommandError:
            self.rai = False  # this firmware has no RAI: the inactivity timer releases the radio

    def send(self, socket, data, last=False):
        if self._api() == API_QI:
            self._qi_rai(last)
            self._retrying_busy("AT+QISEND=%d,%d," % (socket, len(data)), hex_tail=data)
            line = self.port.wait_urc("SEND ", self.network_timeout_ms)
            if line != "SEND OK":
                raise NetworkError("AT+QISEND: the module said %r" % line)
            return
        self._nso().send(self, socket, data, last)

    def receive(self, socket, timeout_ms):
        """One datagram from the socket, or None if none came within timeout_ms."""
        if self._api() == API_QI:
            return self._receive_qi(socket, timeout_ms)
        return self._nso().receive(self, socket, timeout_ms)

    def _receive_qi(self, socket, timeout_ms):
        try:
            line = self.port.wait_urc("+QIURC:", timeout_ms)
        except ModemTimeout:
            return None
        # Split off the head only: the hex data (twice the datagram) is not copied into a list of fields.
        cut = -1
        for _ in range(3):
            cut = line.find(",", cut + 1)
            if cut < 0:
                break
        parts = fields(line if cut < 0 else line[:cut], "+QIURC:")
        kind = parts[0].strip('"')
        if kind in ("closed", "pdpdeact"):
            raise NetworkError("the module reports %r while waiting for data" % line)
        if kind != "recv" or len(parts) < 2 or integer(parts[1], "+QIURC <connectID>") != socket:
            raise ModemGarbage("unexpected URC %r while waiting for data" % line)
        if cut >= 0:
            return _unhex(line[cut + 1 :].strip(), integer(parts[2], "+QIURC <length>"), "+QIURC recv")
        lines = self.command("AT+QIRD=%d,512" % socket, response="+QIRD:")
        for index, item in enumerate(lines):
            if item.startswith("+QIRD:"):
                length = integer(fields(item, "+QIRD:")[0], "+QIRD <length>")
                if length == 0:
                    return None
                if index + 1 >= len(lines):
                    raise ModemGarbage("AT+QIRD announced %d bytes and sent no data line" % length)
                return _unhex(lines[index + 1], length, "AT+QIRD")
        raise ModemGarbage("AT+QIRD answered no +QIRD line: %r" % (lines,))

    def _nso(self):
        """The "nso" socket API's code (BC95 firmware): a BC66 node never loads it (node.send releases it)."""
        import quectelnso

        return quectelnso

    def close(self, socket):
        if self._api() == API_QI:
            self.command("AT+QICLOSE=%d" % socket, self.network_timeout_ms)
        else:
            self.command("AT+NSOCL=%d" % socket)
