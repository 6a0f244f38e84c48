"""Drives the modem drivers against whatever a pty peer answers, for the CPython fuzz test: one line per operation.

    PLEDGEWATCH_UART1=/dev/pts/N micropython firmware/tests/modem_fuzz.py COUNT

Each operation prints "OK", "E <NodeError subclass>" or "CRASH <type> <message>";
the fuzz test fails on any CRASH: garbage from the modem must always end in a
NodeError, never in anything else.
"""

import sys

import machine

from atport import AtPort
from errors import NodeError
from quectel import Bc66
from simcom import Sim7080

count = int(sys.argv[1])
uart = machine.UART(1, 9600, timeout=0, timeout_char=0)
port = AtPort(uart)
options = {"timeout_ms": 40, "network_timeout_ms": 40, "reset_pulse_ms": 10, "boot_ms": 100}
drivers = (Bc66(port, socket_api="qi", busy_pause_ms=5, **options),
           Bc66(port, socket_api="nso", busy_pause_ms=5, **options),
           Sim7080(port, **options))
operations = (
    lambda modem: modem.sync(attempts=1),
    lambda modem: modem.registration(),
    lambda modem: modem.open_udp("127.0.0.1", 5683),
    lambda modem: modem.send(0, b"\x44\x02\x00\x01\r\n\x1a"),
    lambda modem: modem.receive(0, 40),
    lambda modem: modem.close(0),
    lambda modem: modem.network_time(),
    lambda modem: modem.setup({"psm": {"tau": "00111000", "active": "00000001"}}),
    lambda modem: modem.attach(40),
)
for index in range(count):
    modem = drivers[index % len(drivers)]
    operation = operations[(index // len(drivers)) % len(operations)]
    try:
        operation(modem)
        print("OK")
    except NodeError as error:
        print("E " + type(error).__name__)
    except Exception as error:  # what the test exists to catch
        print("CRASH %s %s" % (type(error).__name__, error))
        sys.print_exception(error)
uart.deinit()
