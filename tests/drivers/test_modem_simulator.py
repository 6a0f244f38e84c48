"""The modem simulator itself (hil.sim.modem): pty and symlink lifecycle, recording, tables, command line.

Talks to it with bare pyserial, byte for byte, as a technician's terminal
would; the driver-level tests are in test_modem_simulated.py.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil.sim.model import ModemModel, Reply, SimState, with_state
from hil.sim.models import MODELS, common
from hil.sim.modem import ModemSimulator, resolve_model

ROOT = Path(__file__).resolve().parents[2]
FINAL_ERROR = re.compile(rb"\r\n(ERROR|\+CM[ES] ERROR: [^\r]*)\r\n$")


def talk(port: serial.Serial, command: bytes, until: bytes = b"OK\r\n") -> bytes:
    port.write(command + b"\r")
    got = b""
    deadline = time.monotonic() + 3
    while not got.endswith(until) and not FINAL_ERROR.search(got):
        assert time.monotonic() < deadline, f"no answer to {command!r}, got {got!r}"
        got += port.read(max(1, port.in_waiting))
    return got


def test_simulator_answers_like_a_modem_with_echo_and_v250_framing():
    with ModemSimulator("rm520n") as sim, serial.Serial(sim.path, timeout=0.5) as port:
        assert talk(port, b"AT+CSQ") == b"AT+CSQ\r\r\n+CSQ: 24,99\r\n\r\nOK\r\n"
        assert talk(port, b"ATE0") == b"ATE0\r\r\nOK\r\n"
        assert talk(port, b"AT+CGMM") == b"\r\nRM520N-GL\r\n\r\nOK\r\n"
        assert talk(port, b"AT+NOSUCH") == b"\r\nERROR\r\n"
        assert talk(port, b"at+csq;+cops?") == b'\r\n+CSQ: 24,99\r\n+COPS: 0,0,"T-Mobile",11\r\n\r\nOK\r\n'


def test_every_command_is_recorded_in_order_with_a_timestamp():
    with ModemSimulator("ec25") as sim, serial.Serial(sim.path, timeout=0.5) as port:
        t0 = time.monotonic()
        for c in (b"AT", b"AT+CIMI", b"AT+QCCID"):
            talk(port, c)
        got = sim.received
        assert [r.text for r in got] == ["AT", "AT+CIMI", "AT+QCCID"]
        assert t0 <= got[0].at <= got[1].at <= got[2].at <= time.monotonic()
        assert sim.wait_for_command(r"QCCID").text == "AT+QCCID"
        with pytest.raises(TimeoutError):
            sim.wait_for_command(r"AT\+COPS", timeout=0.05)


def test_reboot_removes_the_link_and_brings_it_back_with_boot_urcs(tmp_path):
    link = tmp_path / "ttyModem"
    with ModemSimulator("sim7600", link=link) as sim:
        assert link.is_symlink() and os.readlink(link) == sim.pty_path
        port = serial.Serial(str(link), timeout=0.5)
        sim.wait_attached()
        sim.reboot(down_s=0.1)
        assert not link.exists() and sim.pty_path is None
        with pytest.raises(serial.SerialException):
            port.read(10)
        port.close()
        deadline = time.monotonic() + 5
        while not link.exists():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert os.readlink(link) == sim.pty_path
        with serial.Serial(str(link), timeout=0.5) as port:
            boot = b""
            deadline = time.monotonic() + 5
            while not boot.endswith(b"PB DONE\r\n"):
                assert time.monotonic() < deadline, f"boot URCs missing, got {boot!r}"
                boot += port.read(64)
            assert boot == b"\r\nRDY\r\n\r\n+CPIN: READY\r\n\r\nSMS DONE\r\n\r\nPB DONE\r\n"
            assert talk(port, b"AT") == b"AT\r\r\nOK\r\n"  # echo is back on after the reboot
    assert not link.exists()  # stop() removes the link


def test_a_modem_is_mostly_a_data_table():
    """A new model: identity, ATI text and a table; a handler adds behaviour."""
    def counter(ctx):
        n = ctx.state.extra.get("n", 0) + 1
        ctx.state.extra["n"] = n
        return Reply((f"+XCOUNT: {n}",), after=("+XEVENT: counted",))

    model = ModemModel(
        key="toy", manufacturer="Toy", model="TOY-1", revision="1.0", ati=("Toy", "TOY-1", "IMEI: {imei}"),
        answers={**common.ANSWERS, "AT+XHELLO": ("+XHELLO: {operator_short}",)},
        handlers=common.HANDLERS + ((r"AT\+XCOUNT", counter),),
        initial_state={"operator_short": "TOYNET", "echo": False},
    )
    with ModemSimulator(model) as sim, serial.Serial(sim.path, timeout=0.5) as port:
        assert talk(port, b"AT+XHELLO") == b"\r\n+XHELLO: TOYNET\r\n\r\nOK\r\n"
        assert talk(port, b"AT+XCOUNT", until=b"counted\r\n") == \
            b"\r\n+XCOUNT: 1\r\n\r\nOK\r\n\r\n+XEVENT: counted\r\n"
        assert talk(port, b"ATI") == b"\r\nToy\r\nTOY-1\r\nIMEI: 867698040123450\r\n\r\nOK\r\n"


def test_knobs_can_target_single_commands():
    with ModemSimulator(with_state(MODELS["rm500q"], echo=False)) as sim, serial.Serial(sim.path, timeout=0.5) as port:
        sim.knobs.cme_error = 30
        sim.knobs.applies_to = r"^AT\+COPS"
        assert talk(port, b"AT+COPS?") == b"\r\n+CME ERROR: 30\r\n"
        assert talk(port, b"AT+CSQ") == b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n"
        sim.knobs.reset()
        assert talk(port, b"AT+COPS?").endswith(b"OK\r\n")


def test_knob_delay_holds_later_commands_like_a_busy_modem():
    with ModemSimulator("rm520n", echo=False) as sim, serial.Serial(sim.path, timeout=1) as port:
        sim.knobs.delay_s = 0.2
        sim.knobs.applies_to = "CSQ"
        port.write(b"AT+CSQ\rAT+CGMM\r")
        answer = b""
        while not answer.endswith(b"RM520N-GL\r\n\r\nOK\r\n"):
            chunk = port.read(64)
            assert chunk
            answer += chunk
        # In order: the delayed answer first, then the next command's.
        assert answer == b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n\r\nRM520N-GL\r\n\r\nOK\r\n"


def test_model_registry_and_unknown_model():
    assert set(MODELS) == {"rm500q", "rm520n", "ec25", "sim7600", "sim8200", "bc66", "bc95", "sim7080g"}
    assert resolve_model("RM520N") is MODELS["rm520n"]
    with pytest.raises(KeyError, match="known: bc66"):
        resolve_model("sara-r4")
    with pytest.raises(ValueError, match="unknown SimState fields"):
        ModemModel(key="bad", manufacturer="x", model="y", revision="z", ati=(), answers={},
                   initial_state={"no_such_field": 1})
    assert SimState().view()["csq"] == 24


def test_command_line_serves_until_sigint(tmp_path):
    link = tmp_path / "modem"
    proc = subprocess.Popen([sys.executable, "-m", "hil.sim.modem", "--model", "rm520n", "--link", str(link)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not link.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the simulator's link never appeared"
            time.sleep(0.02)
        with serial.Serial(str(link), timeout=1) as port:
            assert talk(port, b"AT+CGMM") == b"AT+CGMM\r\r\nRM520N-GL\r\n\r\nOK\r\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "RM520N-GL simulator" in out and str(link) in out
    assert not link.exists()
