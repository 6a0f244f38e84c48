"""SIGKILL at a random moment: run a child that reports each durable step on stdout, kill it, return its reports.

    lines = killed_after(rng, [sys.executable, "-I", "child.py", ...], most=25)

The child writes one line per step *after* the step returned, unbuffered; a
line read before or after the kill is a step the child was told had
happened, so the test checks that it survived.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Sequence


def killed_after(rng: random.Random, argv: Sequence[str], *, most: int) -> list[bytes]:
    """Start `argv`, SIGKILL it after a random number of reports (0..`most`; 0 kills it while starting up)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wanted = 0 if rng.random() < 0.1 else rng.randint(1, most)
    lines = []
    while len(lines) < wanted:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    os.kill(proc.pid, signal.SIGKILL)
    lines += proc.stdout.read().splitlines()  # reports written before death count as returned
    stderr = proc.stderr.read()
    proc.wait()
    proc.stdin.close(), proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, stderr.decode(errors="replace")
    return lines
