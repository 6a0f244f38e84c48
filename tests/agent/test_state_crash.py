"""The agent's state across SIGKILL: the boot counter and the seq ceiling never go backwards.

A real child process starts a run and reserves seq blocks in a loop; the
parent kills it at random moments, 100 times, and after each kill checks the
file is whole and valid, and that nothing the child had been told was
persisted has gone backwards.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from agent.state import AgentState
from tests.kit.crash import killed_after

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
KILLS = 100
BLOCK = 1000


def test_state_never_goes_backwards_across_sigkill(tmp_path):
    path = tmp_path / "state.json"
    rng = random.Random(20260522)
    boot, ceiling, acked = 0, -1, -1  # what the child had been told was persisted
    reserved_blocks = 0
    for _ in range(KILLS):
        lines = killed_after(rng, [sys.executable, "-I", str(HERE / "state_crash_child.py"), str(REPO), str(path)],
                             most=25)
        told_boot, told_ceiling = boot, ceiling
        for line in lines:
            kind, value = line.split()
            if kind == b"b":
                assert int(value) == boot + 1
                told_boot = int(value)
            else:
                assert int(value) > told_ceiling
                told_ceiling = int(value)
                reserved_blocks += 1
        if path.exists():
            json.loads(path.read_bytes())  # always a whole file
        state = AgentState.open(path)
        try:
            assert state.recovered_from is None, "a kill must never leave a damaged state file"
            # Never below what returned; at most one write beyond it (the one in flight).
            assert told_boot <= state.boot <= told_boot + 1
            assert told_ceiling <= state.seq_ceiling <= told_ceiling + BLOCK
            assert state.acked_watermark >= acked
            snapshot = state.config_snapshot
            assert snapshot is None or set(snapshot) == {"uplink", "sensors"}
            if state.boot > boot:
                assert not state.clean_shutdown  # a killed run is never taken for a clean one
            boot, ceiling, acked = state.boot, state.seq_ceiling, state.acked_watermark
        finally:
            state.close()
        assert not (tmp_path / "state.json.tmp").exists()
    assert boot > KILLS // 2 and reserved_blocks > KILLS
    assert not list(tmp_path.glob("state.json.corrupt-*"))
