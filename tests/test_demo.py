"""`make demo` as a new user runs it: verified telemetry arrives, a summary line ends it, Ctrl-C leaves nothing behind."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SUMMARY = re.compile(r"^demo: received=(\d+) verified=(\d+) rejected=(\d+) gaps=(\d+)$")


def lender_processes(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "lender serve" in command and marker in command:
                found.append(int(entry.name))
    return found


def test_the_demo_shows_verified_readings_and_ends_with_the_summary_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pledgewatch", "demo", "--seconds", "6", "--keep", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1])
    assert match, lines[-1]
    received, verified, rejected, gaps = map(int, match.groups())
    assert received == verified >= 3 and rejected == 0 and gaps == 0
    assert sum("verified" in line and "coldstore.temp" in line for line in lines) >= 2
    assert not lender_processes(str(tmp_path))


def test_ctrl_c_stops_the_demo_and_every_process_it_started(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "pledgewatch", "demo", "--seconds", "60", "--keep", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in demo.stdout:
        if "sampling for" in line or time.monotonic() > deadline:
            break
    assert lender_processes(str(tmp_path)), "the lender should be running by now"
    demo.send_signal(signal.SIGINT)
    _, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 130, stderr
    assert "stopped by the user" in stderr
    time.sleep(0.5)
    assert not lender_processes(str(tmp_path))
