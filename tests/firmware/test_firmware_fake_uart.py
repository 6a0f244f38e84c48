"""The firmware's UART reaches a Python peer through a real pseudo-terminal, as a node's modem would sit behind machine.UART."""
from __future__ import annotations

import os
import threading
import tty

import pytest

SCRIPT = """
import machine
uart = machine.UART(1, 9600, timeout=3000, timeout_char=100)
uart.write(b"AT+CEREG?\\r\\n")
print(repr(uart.readline()))
print(repr(uart.readline()))
print(repr(uart.read(16)))
uart.init(9600, timeout=0, timeout_char=0)
print(repr(uart.read(4)), uart.any())
uart.deinit()
"""


@pytest.fixture
def pty_line():
    controller, device = os.openpty()
    tty.setraw(device)
    yield controller, os.ttyname(device)
    os.close(controller)
    os.close(device)


def _answer_like_a_modem(controller: int, heard: list[bytes]) -> None:
    request = b""
    while not request.endswith(b"\r\n"):
        request += os.read(controller, 64)
    heard.append(request)
    os.write(controller, b"+CEREG: 0,1\r\nOK\r\n+NSONMI: 1,12")


def test_a_modem_answer_crosses_the_pty_into_the_firmwares_uart(run_micropython, pty_line):
    controller, path = pty_line
    heard: list[bytes] = []
    peer = threading.Thread(target=_answer_like_a_modem, args=(controller, heard), daemon=True)
    peer.start()
    result = run_micropython("-c", SCRIPT, env={"PLEDGEWATCH_UART1": path}, timeout=30)
    peer.join(timeout=5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert heard == [b"AT+CEREG?\r\n"]
    assert result.stdout.splitlines() == [
        "b'+CEREG: 0,1\\r\\n'",
        "b'OK\\r\\n'",
        "b'+NSONMI: 1,12'",  # an unterminated URC: read() returns what came before timeout_char expired
        "None 0",  # nothing waiting: read() gives None, any() 0
    ]
