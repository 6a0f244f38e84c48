"""issue 14 item 6: after `provision node`, the node's USB REPL is locked by its own firmware (lib/lock.py).

The board is hil.sim.rawrepl: real MicroPython runs the node's boot.py at every
start and soft reset, and Ctrl-C interrupts it only while the MicroPython VM
takes Ctrl-C (which `micropython.kbd_intr(-1)` turns off). The simulator has no
lock of its own: the lock below is the firmware running.
"""
from __future__ import annotations

import json
import time

import pytest

from hil.sim.rawrepl import RawReplSimulator
from provisioning.exc import NodeLockedError, NoRawReplError
from provisioning.rawrepl import BANNER, RawRepl
from provisioning.serialport import open_port

from .conftest import FIRMWARE_SOURCE
from .test_node_provisioning import board_files, failure_line, provision_node

LOCK_LINE = b"pledgewatch: node locked"
# Ports are opened without the holder check: on a shared machine another sandbox's pty can have the same device number.


@pytest.fixture
def node_site(site, board, tmp_path):
    (tmp_path / "node-settings.json").write_text(json.dumps({"interval_s": 900, "modem": {"model": "bc66"},
                                                             "sensors": {"tamper_pin": 4}}))
    return site, board


def await_output(port, text: bytes, seconds: float = 5.0) -> None:
    heard = b""
    end = time.monotonic() + seconds
    while text not in heard and time.monotonic() < end:
        heard += port.read(4096)
    assert text in heard, heard


def knock(path, seconds: float = 1.0) -> bytes:
    """Once the board says it is locked: what mpremote does to get a prompt (Ctrl-C twice, Ctrl-A); what it says then.

    Waiting for the line first keeps clear of the microseconds at each start before boot.py's first line turns
    Ctrl-C off, a window docs/firmware.md describes (the simulator has it too).
    """
    port = open_port(path, check_holders=False)
    try:
        await_output(port, LOCK_LINE)
        port.write(b"\r\x03\x03\r\x01")
        heard = b""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            heard += port.read(4096)
        return heard
    finally:
        port.close()


def test_a_provisioned_node_refuses_the_raw_repl_and_provisioning_it_again_says_erase(node_site, tmp_path, capsys):
    site, board = node_site
    site.lender.start()
    assert provision_node(site, board, tmp_path, "--json") == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["locked"] is True and "node.locked" in board_files(board)
    # The final soft reset ran the node's boot.py, which never returned: no prompt of any kind, only its line.
    heard = knock(board.path)
    assert LOCK_LINE in heard and BANNER not in heard and b">>> " not in heard, heard
    blocks = len(board.received)
    port = open_port(board.path, check_holders=False)
    try:
        with pytest.raises(NodeLockedError):
            RawRepl(port, timeout=1.0).enter()
    finally:
        port.close()

    capsys.readouterr()
    assert provision_node(site, board, tmp_path) == 1
    line = failure_line(capsys.readouterr().err)
    assert f"the node on {board.path} is locked" in line and "erase its flash" in line and "new key" in line, line
    assert len(board.received) == blocks, "not one line of code reached the locked node: its key was never read"


def test_the_lock_is_the_firmware_at_every_start_and_an_erased_node_answers_again(tmp_path):
    root = tmp_path / "fs"
    for source in FIRMWARE_SOURCE.rglob("*.py"):
        target = root / source.relative_to(FIRMWARE_SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    # A board whose main.py never returns (no lock): Ctrl-C interrupts it and the raw REPL answers.
    (root / "main.py").write_text("import time\nwhile True:\n    print('running')\n    time.sleep(0.05)\n")
    with RawReplSimulator(root, link=tmp_path / "tty") as board:
        port = open_port(board.path, check_holders=False)
        try:
            await_output(port, b"running")  # a Ctrl-C before main.py runs is typed-ahead input, as on a board
            repl = RawRepl(port, timeout=1.5)
            repl.enter(soft_reset=False)
            assert repl.eval_text("print(1 + 1)") == "2"
            # The lock marker (provisioning's last step), then a power cycle: boot.py holds the node.
            repl.eval_text("open('node.locked', 'w').close()")
        finally:
            port.close()
    with RawReplSimulator(root, link=tmp_path / "tty") as board:
        heard = knock(board.path)
        assert LOCK_LINE in heard and BANNER not in heard, heard
        assert board.received == ()
    # Erased (here: the marker gone, as with the whole flash): the same firmware answers again.
    (root / "node.locked").unlink()
    with RawReplSimulator(root, link=tmp_path / "tty") as board:
        port = open_port(board.path, check_holders=False)
        try:
            await_output(port, b"running")
            repl = RawRepl(port, timeout=1.5)
            repl.enter(soft_reset=False)
            assert repl.eval_text("import sys; print('lock' in sys.modules)") == "False"
        finally:
            port.close()


def test_ctrl_c_off_in_a_program_is_what_keeps_the_prompt_away(tmp_path):
    # Without the project's lock: a main.py that turns Ctrl-C off and loops leaves no way in either.
    root = tmp_path / "fs"
    root.mkdir()
    (root / "main.py").write_text("import micropython, time\nmicropython.kbd_intr(-1)\n"
                                  "for _ in range(10):\n    print('running')\n    time.sleep(0.05)\n"
                                  "while True:\n    time.sleep(0.05)\n")
    with RawReplSimulator(root, link=tmp_path / "tty") as board:
        port = open_port(board.path, check_holders=False)
        try:
            await_output(port, b"running")
            with pytest.raises(NoRawReplError) as refused:
                RawRepl(port, timeout=1.0).enter()
            assert not isinstance(refused.value, NodeLockedError), "no lock line from a program that never said it"
        finally:
            port.close()
