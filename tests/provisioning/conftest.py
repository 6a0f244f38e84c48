"""Fixtures for the provisioning tests: simulated MicroPython boards and modems on pseudo-terminals, a real lender."""
from __future__ import annotations

from pathlib import Path

import pytest

from hil.sim.rawrepl import RawReplSimulator

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_SOURCE = ROOT / "firmware" / "src"


@pytest.fixture
def board(tmp_path):
    """A simulated MicroPython board (real `micropython` behind a raw REPL on a pty), empty filesystem."""
    with RawReplSimulator(tmp_path / "board-fs", link=tmp_path / "ttyACM0") as simulated:
        yield simulated
