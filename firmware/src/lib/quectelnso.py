"""The "nso" socket API of the Quectel BC95 firmware (AT+NSOCR, AT+NSOST, AT+NSOSTF, +NSONMI, AT+NSORF) for quectel.Bc66.

Its own module so that a BC66 node ("qi" API, the module's own) never holds
this code through the send phase; the formats, Release Assistance with
AT+NSOSTF and the recovery of sockets left open are described in quectel.
"""

from cellular import fields, integer
from errors import CommandError, ModemError, ModemGarbage, ModemTimeout, NetworkError
from quectel import NSO_RELEASE_AFTER_REPLY, NSO_SOCKETS, UPLINK_BUSY, _unhex


def open_udp(modem):
    """A socket number (AT+NSOCR); the peer is the one open_udp kept (AT+NSOST takes it with each datagram)."""
    try:
        lines = modem.command("AT+NSOCR=DGRAM,17,%d,1" % modem.local_port, modem.network_timeout_ms)
    except CommandError:
        # Every socket taken, by cycles cut short: free them and try once more.
        for stale in range(NSO_SOCKETS):
            try:
                modem.command("AT+NSOCL=%d" % stale)
            except CommandError:
                pass
        lines = modem.command("AT+NSOCR=DGRAM,17,%d,1" % modem.local_port, modem.network_timeout_ms)
    for line in lines:
        if line.isdigit():
            return int(line)
    raise ModemGarbage("AT+NSOCR answered no socket number: %r" % (lines,))


def send(modem, socket, data, last):
    if modem._peer is None:
        raise ModemError("AT+NSOST needs the peer: open_udp() first")
    host, port = modem._peer
    lines = None
    if last and modem.rai:
        try:
            lines = modem._retrying_busy("AT+NSOSTF=%d,%s,%d,%s,%d," % (socket, host, port, NSO_RELEASE_AFTER_REPLY,
                                                                        len(data)), hex_tail=data)
        except CommandError as error:
            if error.code == UPLINK_BUSY:
                raise
            modem.rai = False  # no AT+NSOSTF on this firmware: send it plainly
    if lines is None:
        lines = modem._retrying_busy("AT+NSOST=%d,%s,%d,%d," % (socket, host, port, len(data)), hex_tail=data)
    for line in lines:
        parts = line.split(",")
        if len(parts) == 2 and parts[0] == str(socket):
            if integer(parts[1], "AT+NSOST <length>") != len(data):
                raise NetworkError("AT+NSOST sent %s of %d bytes" % (parts[1], len(data)))
            return
    raise ModemGarbage("AT+NSOST answered no <socket>,<length>: %r" % (lines,))


def receive(modem, socket, timeout_ms):
    """One datagram announced by +NSONMI and read with AT+NSORF, or None if none came within timeout_ms."""
    try:
        line = modem.port.wait_urc("+NSONMI:", timeout_ms)
    except ModemTimeout:
        return None
    parts = fields(line, "+NSONMI:")
    if len(parts) != 2 or integer(parts[0], "+NSONMI <socket>") != socket:
        raise ModemGarbage("unexpected URC %r while waiting for data" % line)
    length = integer(parts[1], "+NSONMI <length>")
    lines = modem.command("AT+NSORF=%d,%d" % (socket, length))
    for item in lines:
        parts = item.split(",")
        if len(parts) == 6 and parts[0] == str(socket):
            return _unhex(parts[4], integer(parts[3], "AT+NSORF <length>"), "AT+NSORF")
    raise ModemGarbage("AT+NSORF answered no datagram line: %r" % (lines,))
