"""Each fault injector on real things: a process killed and restarted, a wall clock jumped in a child
interpreter, a tmpfs filled to the last byte, a file-size quota on a live process, a simulated modem
hung and power-cycled — and the fault log that the report draws."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hil.bench import CLOCK_SHIM
from hil.env import DiskSpec, PowerRelaySpec
from hil.exc import FaultError
from hil.faults import AgentPower, ClockJump, DiskFull, FaultLog, ModemFaults, PowerRelay
from hil.processes import AgentProcess
from hil.sim.modem import ModemSimulator


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_fault_log_keeps_instants_intervals_and_planned_ends():
    clock = FakeClock()
    faults = FaultLog(clock)
    faults.instant("power-cut", "pid 1")
    faults.begin("partition", "for 30 s", planned_s=30)
    clock.now = 1010
    faults.end("partition")                       # healed early: the band ends now
    faults.begin("link-impaired", "loss 30%")
    clock.now = 1020
    faults.begin("link-impaired", "loss 50%")     # a new setting closes the old one
    clock.now = 1025
    faults.end_all()
    records = faults.records()
    assert [(r.kind, r.start, r.end, r.instant) for r in records] == [
        ("power-cut", 1000, 1000, True), ("partition", 1000, 1010, False),
        ("link-impaired", 1010, 1020, False), ("link-impaired", 1020, 1025, False)]


def test_a_partition_that_ends_on_its_own_keeps_its_planned_end():
    clock = FakeClock()
    faults = FaultLog(clock)
    faults.begin("partition", "for 5 s", planned_s=5)
    clock.now = 1100
    faults.end_all()
    assert faults.records()[0].end == 1005


def child_env(offset_file: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(CLOCK_SHIM), PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE=str(offset_file))


CLOCK_CHILD = "import sys, time\nfor _ in sys.stdin:\n    print(time.time(), time.monotonic(), flush=True)\n"


def test_a_clock_jump_moves_a_running_interpreters_wall_clock_at_once_and_not_its_monotonic_clock(tmp_path):
    faults = FaultLog()
    clock = ClockJump(tmp_path / "offset", faults)
    child = subprocess.Popen([sys.executable, "-c", CLOCK_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=child_env(clock.offset_file))
    try:
        def ask() -> tuple[float, float]:
            child.stdin.write("\n")
            child.stdin.flush()
            wall, mono = map(float, child.stdout.readline().split())
            return wall - time.time(), mono
        before, mono_before = ask()
        clock.jump(+86400)
        after, mono_after = ask()
        clock.jump(-90000)
        back, _ = ask()
    finally:
        child.stdin.close()
        child.wait(10)
    assert abs(before) < 1 and abs(after - 86400) < 1 and abs(back + 3600) < 1
    assert 0 <= mono_after - mono_before < 5
    assert [r.detail.split(" ")[0] for r in faults.records()] == ["+86400", "-90000"]


def test_without_the_variable_the_clock_shim_changes_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(CLOCK_SHIM))
    env.pop("PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE", None)
    out = subprocess.run([sys.executable, "-c", "import time; print(type(time.time).__name__, time.time())"],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[0] == "builtin_function_or_method" and abs(float(out[1]) - time.time()) < 2


def sleeper(tmp_path: Path) -> AgentProcess:
    return AgentProcess(["{python}", "-c", "import time, sys; open(sys.argv[1], 'a').write('x'); time.sleep(60)",
                         "{config}"], tmp_path / "starts", log_path=tmp_path / "agent.log", env=dict(os.environ))


def test_a_power_cut_kills_the_process_without_warning_and_starts_it_again(tmp_path):
    process = sleeper(tmp_path)
    faults = FaultLog()
    power = AgentPower(process, faults)
    process.start()
    try:
        first = process.pid
        deadline = time.monotonic() + 10
        while not (tmp_path / "starts").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        power.cut(off_s=0.1)
        assert process.running and process.pid != first and power.cuts == 1
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
    finally:
        process.stop(grace_s=5)
    assert faults.records()[0].kind == "power-cut" and process.starts == 2


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs (the rig uses a quota otherwise)")


@needs_root
def test_a_full_tmpfs_refuses_writes_until_it_is_freed_and_is_unmounted_at_release(tmp_path):
    state = tmp_path / "state"
    disk = DiskFull(DiskSpec(kind="tmpfs", size_bytes=1024 * 1024), state, FaultLog())
    disk.prepare()
    try:
        assert str(state) in Path("/proc/mounts").read_text()
        (state / "spool.db").write_bytes(b"x" * 4096)
        disk.fill()
        with pytest.raises(OSError) as full:
            with open(state / "more", "wb", buffering=0) as out:
                out.write(b"y" * 8192)
        assert full.value.errno == errno.ENOSPC
        disk.free()
        (state / "more").write_bytes(b"y" * 8192)
    finally:
        disk.release()
    assert str(state) not in Path("/proc/mounts").read_text()


WRITER = ("import sys\nfor line in sys.stdin:\n    try:\n        with open(sys.argv[1], 'ab') as out:\n"
          "            out.write(b'z' * 4096)\n        print('ok', flush=True)\n"
          "    except OSError as e:\n        print(e.errno, flush=True)\n")


def test_the_file_size_quota_makes_the_disk_full_for_one_live_process(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "spool.db")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)

    class Process:  # what DiskFull needs of the agent: its pid, and whether it runs
        pid = child.pid
        running = True

    disk = DiskFull(DiskSpec(kind="fsize-quota"), tmp_path, FaultLog(), agent=Process())
    try:
        def write() -> str:
            child.stdin.write("\n")
            child.stdin.flush()
            return child.stdout.readline().strip()
        assert write() == "ok"
        disk.fill()
        assert write() == str(errno.EFBIG)
        disk.free()
        assert write() == "ok"
    finally:
        child.stdin.close()
        child.wait(10)


def test_the_quota_needs_a_running_agent(tmp_path):
    with pytest.raises(FaultError, match="not running"):
        DiskFull(DiskSpec(kind="fsize-quota"), tmp_path, FaultLog()).fill()


def at(port: serial.Serial, command: str, wait: float = 0.5) -> bytes:
    port.reset_input_buffer()
    port.write(command.encode() + b"\r")
    deadline, got = time.monotonic() + wait, b""
    while time.monotonic() < deadline and b"OK" not in got:
        got += port.read(256)
    return got


def test_a_hung_modem_answers_nothing_until_its_relay_power_cycles_it(tmp_path):
    faults = FaultLog()
    with ModemSimulator("rm520n", link=tmp_path / "at") as sim:
        modem = ModemFaults(sim, faults, kind="simulator")
        relay = PowerRelay(PowerRelaySpec(kind="simulated", off_s=0.2), faults, simulator=sim)
        with serial.Serial(str(sim.path), timeout=0.05) as port:
            assert b"OK" in at(port, "AT")
            modem.hang()
            assert at(port, "AT") == b""
        relay.power_cycle()
        deadline = time.monotonic() + 5
        while not os.path.exists(sim.path):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with serial.Serial(str(sim.path), timeout=0.05) as port:
            time.sleep(0.3)  # the boot URCs
            assert b"OK" in at(port, "AT", wait=2.0)
    kinds = [(r.kind, r.end is not None) for r in faults.records()]
    assert kinds == [("modem-hang", True), ("modem-power-cycle", True)] and relay.cycles == 1


def test_a_real_modem_has_no_fault_knobs():
    with pytest.raises(FaultError, match="power relay"):
        ModemFaults(None, FaultLog(), kind="serial").hang()
