"""Driver for the SIMCom SIM7080G in NB-IoT mode: network bearer, PSM, and UDP through the CA* application commands.

Formats from the SIM7070_SIM7080_SIM7090 Series AT Command Manual and its
TCP/IP Application Note (§5.1.1 "Build an ordinary TCP/UDP connection"):

* AT+CMNB=2 selects NB-IoT only; AT+CNACT=0,1 activates PDP context 0 and the
  URC +APP PDP: 0,ACTIVE (or DEACTIVE) follows; AT+CNACT? lists
  +CNACT: <pdpidx>,<status>,"<address>" per context.
* AT+CAOPEN=<cid>,<pdpidx>,"UDP",<host>,<port> answers +CAOPEN: <cid>,<result>
  before OK (result 0 = opened).
* AT+CASEND=<cid>,<length> (§12.2.5) answers the prompt ``>`` with no line
  end; the raw bytes follow, then OK.
* An arriving datagram is announced by +CADATAIND: <cid>; AT+CARECV=<cid>,<max>
  (§12.2.6) answers +CARECV: <length>,<raw bytes> (raw, not hex: the bytes may
  hold CR LF, so the channel reads exactly <length> of them) or +CARECV: 0.
* AT+CACLOSE=<cid>. A connection left open by a cycle cut short (+CAOPEN
  <result> 1) is closed and opened again.
* AT+CPSMS=1,,,<T3412>,<T3324> (TS 27.007 §7.38) enables PSM and
  AT+CPSMSTATUS=1 the +CPSMSTATUS: "ENTER PSM" / "EXIT PSM" URCs, which the
  driver keeps (`psm_status`) for the node's log.
* Release Assistance: AT+CASEND has no RAI flag, so once the cycle's last ack
  has arrived `release()` sends AT+CNMPSD ("no more PS data", 3GPP TS 27.007
  §10.1.41): the module asks the network to release the radio connection at
  once instead of after its inactivity timer. ERROR (firmware without it)
  leaves the release to the timer.
"""

from cellular import Cellular, fields, integer, quoted
from errors import CommandError, ModemGarbage, ModemTimeout, NetworkError

PDP = 0
CID = 0
MAX_RECEIVE = 1024
IN_USE = 1  # +CAOPEN <result>: the connection id is in use


class Sim7080(Cellular):
    """A SIMCom SIM7080G on the node's UART."""

    URCS = ("+CEREG:", "RDY", "+CADATAIND:", "+CASTATE:", "+APP PDP:", "+CPSMSTATUS:", "NORMAL POWER DOWN")

    def __init__(self, port, apn=None, rai=True, **options):
        super().__init__(port, **options)
        self.apn = apn
        self.rai = rai
        self.psm_status = None

    def setup(self, settings):
        super().setup(settings)
        self.command("AT+CMNB=2")
        if self.apn:
            self.command("AT+CNCFG=%d,1,%s" % (PDP, quoted(self.apn)))
        psm = settings.get("psm")
        if psm:
            self.command("AT+CPSMS=1,,,%s,%s" % (quoted(psm["tau"]), quoted(psm["active"])))
            self.command("AT+CEDRXS=0")
            self.command("AT+CPSMSTATUS=1")
        return {}

    def _note_psm(self):
        while True:
            line = self.port.take_urc("+CPSMSTATUS:")
            if line is None:
                return
            self.psm_status = line[len("+CPSMSTATUS:") :].strip().strip('"')

    def pdp_active(self):
        """Whether PDP context 0 has an address (AT+CNACT?)."""
        lines = self.command("AT+CNACT?", response="+CNACT:")
        for line in lines:
            if line.startswith("+CNACT:"):
                parts = fields(line, "+CNACT:")
                if len(parts) < 2:
                    raise ModemGarbage("unreadable %r" % line)
                if integer(parts[0], "+CNACT <pdpidx>") == PDP:
                    return integer(parts[1], "+CNACT <status>") == 1
        raise ModemGarbage("AT+CNACT? listed no context %d: %r" % (PDP, lines))

    def attach(self, timeout_ms=None):
        # Steady state: one AT+CNACT? — PSM keeps the PDP context, so a context
        # with an address means registered and ready.
        self._note_psm()
        if self.pdp_active():
            return
        self.wait_registered(timeout_ms)
        self.command("AT+CNACT=%d,1" % PDP, self.network_timeout_ms)
        line = self.port.wait_urc("+APP PDP:", self.network_timeout_ms)
        parts = fields(line, "+APP PDP:")
        if len(parts) < 2 or parts[1] != "ACTIVE":
            raise NetworkError("PDP context %d did not activate: %r" % (PDP, line))

    def open_udp(self, host, port):
        result = self._caopen(host, port)
        if result == IN_USE:
            # A cycle cut short (power, watchdog) left it open: close it and open again.
            self.command("AT+CACLOSE=%d" % CID)
            result = self._caopen(host, port)
        if result != 0:
            raise NetworkError("AT+CAOPEN failed with <result> %d" % result)
        return CID

    def _caopen(self, host, port):
        lines = self.command("AT+CAOPEN=%d,%d,\"UDP\",%s,%d" % (CID, PDP, quoted(host), port),
                             self.network_timeout_ms, response="+CAOPEN:")
        for line in lines:
            if line.startswith("+CAOPEN:"):
                parts = fields(line, "+CAOPEN:")
                if len(parts) != 2 or integer(parts[0], "+CAOPEN <cid>") != CID:
                    raise ModemGarbage("unexpected %r" % line)
                return integer(parts[1], "+CAOPEN <result>")
        raise ModemGarbage("AT+CAOPEN answered no +CAOPEN line: %r" % (lines,))

    def send(self, socket, data, last=False):
        self.command("AT+CASEND=%d,%d" % (socket, len(data)), self.network_timeout_ms, data=data)

    def release(self):
        """Release Assistance after the cycle's last ack: AT+CNMPSD (see the module docstring)."""
        if not self.rai:
            return
        try:
            self.command("AT+CNMPSD")
        except CommandError:
            self.rai = False

    def receive(self, socket, timeout_ms):
        """One datagram, or None if none was announced within timeout_ms."""
        try:
            line = self.port.wait_urc("+CADATAIND:", timeout_ms)
        except ModemTimeout:
            return None
        parts = fields(line, "+CADATAIND:")
        if integer(parts[0], "+CADATAIND <cid>") != socket:
            raise ModemGarbage("unexpected %r while waiting for data" % line)
        lines = self.command("AT+CARECV=%d,%d" % (socket, MAX_RECEIVE), binary="+CARECV: ")
        for item in lines:
            if item.startswith("+CARECV:"):
                length = integer(fields(item, "+CARECV:")[0], "+CARECV <recvlen>")
                if length != len(self.port.data):
                    raise ModemGarbage("+CARECV announced %d bytes, carried %d" % (length, len(self.port.data)))
                return self.port.data or None
        raise ModemGarbage("AT+CARECV answered no +CARECV line: %r" % (lines,))

    def close(self, socket):
        self.command("AT+CACLOSE=%d" % socket)
        self._note_psm()
