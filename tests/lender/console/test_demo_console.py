"""`make demo` shows the console: its address and a one-time login; with --serve it stays up until Ctrl-C."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx

from tests.test_demo import lender_processes


def test_the_demo_prints_the_console_and_a_login_that_works_and_serve_keeps_it_until_ctrl_c(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "pledgewatch", "demo", "--seconds", "4", "--serve",
                             "--keep", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 90
    for line in demo.stdout:
        lines.append(line.rstrip("\n"))
        if "keep running" in line or time.monotonic() > deadline:
            break
    try:
        consoles = [m.group(1) for m in map(re.compile(r"^console: (http://127\.0\.0\.1:\d+/)$").match, lines) if m]
        links = [m.group(1) for m in map(re.compile(r"^console login, once, within 15 min: (\S+)").match, lines) if m]
        assert consoles and len(set(consoles)) == 1, lines   # one console, named as the demo ends
        assert links, lines
        # the story's summary: the forgery refused, the borrower's deleted spool a gap
        assert any(re.match(r"^demo: received=\d+ verified=\d+ rejected=1 gaps=1$", line) for line in lines), lines
        with httpx.Client(base_url=consoles[0], follow_redirects=False) as client:
            assert client.get("/api/portfolio").status_code == 401
            assert client.get(links[-1]).status_code == 303
            portfolio = client.get("/api/portfolio").json()
            assert {a["device"] for a in portfolio["assets"]} == {"demo-gw-1"}
            assert client.get(links[-1]).status_code == 401          # once
    finally:
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=30)
    assert demo.returncode == 0, stderr
    time.sleep(0.5)
    assert not lender_processes(str(tmp_path))
