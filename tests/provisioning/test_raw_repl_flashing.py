"""Flashing a node over MicroPython's raw REPL: real pyserial on a pty, real MicroPython behind it."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from provisioning.exc import (DeviceCodeError, FlashVerifyError, NoRawReplError, PortBusyError, PortNotFoundError,
                              ProvisioningError)
from provisioning.flash import STAGING, BoardFiles, Firmware, FirmwareFile, Flasher
from provisioning.rawrepl import RawRepl
from provisioning.serialport import open_port

from .conftest import FIRMWARE_SOURCE


def repl_on(board, **options) -> RawRepl:
    repl = RawRepl(open_port(board.path), **options)
    repl.enter()
    return repl


def small_firmware(**extra: bytes) -> Firmware:
    files = [FirmwareFile("lib/greeting.py", b"def hello():\n    return 'hello from the node'\n"),
             FirmwareFile("main.py", b"import greeting\n")]
    files += [FirmwareFile(name, data) for name, data in extra.items()]
    return Firmware(tuple(files))


def test_code_runs_on_real_micropython_and_globals_live_until_a_soft_reset(board):
    repl = repl_on(board)
    assert repl.eval_text("import sys\nx = 41\nprint(sys.implementation.name)") == "micropython"
    assert repl.eval_text("print(x + 1)") == "42"
    repl.soft_reset()
    with pytest.raises(DeviceCodeError) as raised:
        repl.exec("print(x)")
    assert "NameError" in str(raised.value)
    assert 'File "<stdin>"' in raised.value.device_traceback
    assert board.soft_resets == 2  # enter() resets too
    repl.exit()


def test_an_exception_on_the_board_is_one_line_with_the_boards_traceback_kept(board):
    repl = repl_on(board)
    with pytest.raises(DeviceCodeError) as raised:
        repl.exec("def f():\n    raise OSError(28)\nf()")
    assert str(raised.value).endswith("OSError: 28")
    assert "\n" not in str(raised.value)
    assert "line 2" in raised.value.device_traceback
    assert repl.eval_text("print('still answering')") == "still answering"


def test_firmware_is_copied_verified_and_a_rerun_sends_nothing(board):
    firmware = Firmware.from_source(FIRMWARE_SOURCE)
    repl = repl_on(board, chunk_pause=0.0)
    flasher = Flasher(BoardFiles(repl))
    plan = flasher.plan(firmware)
    assert len(plan.send) == len(firmware.files)
    seen = []
    flasher.stage(plan, progress=lambda done, total, name: seen.append((done, total)))
    assert seen[-1] == (firmware.size, firmware.size)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    flasher.commit(firmware, plan)
    for firmware_file in firmware.files:
        on_board = (board.root / firmware_file.path).read_bytes()
        assert hashlib.sha256(on_board).hexdigest() == firmware_file.sha256
    assert not (board.root / STAGING).exists()
    # the firmware's own modules import and sign on the board
    public = repl.eval_text("import ed25519\nprint(ed25519.SigningKey(bytes(32)).public_key.hex())")
    assert public == "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"  # RFC 8032 TEST 1
    before = len(board.received)
    again = flasher.plan(firmware)
    assert again.send == () and len(again.unchanged) == len(firmware.files)
    assert len(board.received) - before <= 3  # hashes and manifest in a few round trips


def test_compiled_firmware_is_mpy_and_replaces_the_source_modules(board):
    repl = repl_on(board, chunk_pause=0.0)
    flasher = Flasher(BoardFiles(repl))
    source = small_firmware()
    flasher.commit(source, _staged(flasher, source))
    compiled_dir = board.root.parent / "src"
    (compiled_dir / "lib").mkdir(parents=True)
    (compiled_dir / "lib" / "greeting.py").write_bytes(b"def hello():\n    return 'compiled hello'\n")
    (compiled_dir / "main.py").write_bytes(b"import greeting\n")
    compiled = Firmware.from_source(compiled_dir, compile_mpy=True)
    assert sorted(f.path for f in compiled.files) == ["lib/greeting.mpy", "main.py"]
    assert compiled.files[0].data.startswith(b"M")  # the .mpy header
    plan = flasher.plan(compiled)
    assert plan.stale == ("lib/greeting.py",)
    flasher.stage(plan)
    flasher.commit(compiled, plan)
    assert not (board.root / "lib" / "greeting.py").exists()
    repl.soft_reset()
    assert repl.eval_text("import greeting\nprint(greeting.hello())") == "compiled hello"


def _staged(flasher: Flasher, firmware: Firmware):
    plan = flasher.plan(firmware)
    flasher.stage(plan)
    return plan


def test_a_file_failing_its_read_back_hash_installs_nothing(board):
    repl = repl_on(board, chunk_pause=0.0)
    flasher = Flasher(BoardFiles(repl))
    old = small_firmware()
    flasher.commit(old, _staged(flasher, old))
    before = {p.relative_to(board.root).as_posix(): p.read_bytes() for p in board.root.rglob("*") if p.is_file()}
    new = Firmware((FirmwareFile("lib/greeting.py", b"def hello():\n    return 'new'\n"),
                    FirmwareFile("lib/extra.py", b"X = 1\n" * 400), FirmwareFile("main.py", b"import greeting\n")))
    board.knobs.corrupt = r"^\.pw-staging/lib/extra\.py$"
    plan = flasher.plan(new)
    with pytest.raises(FlashVerifyError) as raised:
        flasher.stage(plan)
    message = str(raised.value)
    assert message.startswith("lib/extra.py: the board read back SHA-256") and "nothing was installed" in message
    flasher.discard()
    after = {p.relative_to(board.root).as_posix(): p.read_bytes() for p in board.root.rglob("*") if p.is_file()}
    assert after == before


def test_a_device_that_does_not_answer_the_raw_repl_is_named_in_one_line(board):
    board.knobs.silent = True
    repl = RawRepl(open_port(board.path), timeout=0.5)
    with pytest.raises(NoRawReplError) as raised:
        repl.enter()
    message = str(raised.value)
    assert board.path in message and "does not answer MicroPython's raw REPL" in message
    assert "press its reset button" in message and "\n" not in message
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, ProvisioningError)


def test_a_board_that_hangs_mid_flash_times_out_and_its_files_stay_as_they_were(board):
    repl = repl_on(board, chunk_pause=0.0, timeout=0.5)
    flasher = Flasher(BoardFiles(repl))
    flasher.plan(small_firmware())  # helpers loaded
    board.knobs.hang_after = len(board.received) + 3
    with pytest.raises(ProvisioningError):
        flasher.stage(flasher.plan(small_firmware()))
    assert not (board.root / "main.py").exists() and not (board.root / "lib" / "greeting.py").exists()


def test_a_missing_port_names_the_ports_that_exist(tmp_path):
    with pytest.raises(PortNotFoundError) as raised:
        open_port(tmp_path / "ttyUSB9")
    assert str(raised.value).startswith(f"no serial port {tmp_path / 'ttyUSB9'}: is the device plugged in")


def test_a_port_held_by_another_process_names_that_process(board):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import serial, sys, time
            port = serial.Serial({board.path!r}, exclusive=True)
            print('holding', flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(PortBusyError) as raised:
            open_port(board.path)
        message = str(raised.value)
        assert f"serial port {board.path} is busy: held by pid {holder.pid}" in message
        assert "stop it" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_port_the_user_may_not_open_says_which_group_to_join(board):
    if os.geteuid() != 0:
        pytest.skip("needs root to open the port as another user")
    os.chmod(board.pty_path, 0o660)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, pwd
            from provisioning.serialport import open_port  # imported while root may still read the stdlib
            from provisioning.exc import PortPermissionError
            import serial.serialposix, grp, errno
            os.setgid(pwd.getpwnam('nobody').pw_gid); os.setuid(pwd.getpwnam('nobody').pw_uid)
            try:
                open_port({board.pty_path!r})
            except PortPermissionError as exc:
                print(exc)
        """)], capture_output=True, text=True, cwd=FIRMWARE_SOURCE.parents[1], timeout=30)
    import grp
    group = grp.getgrgid(os.stat(board.pty_path).st_gid).gr_name
    assert child.stdout.startswith(f"permission denied opening {board.pty_path} (owned by group '{group}')"), child.stderr
    assert f"sudo usermod -aG {group} nobody" in child.stdout
