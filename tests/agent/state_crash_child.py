"""Child process for the state SIGKILL test: starts a run, then reserves seq blocks until killed.

Run as `python -I state_crash_child.py REPO STATE_FILE`. After each call
returns it reports on stdout, unbuffered, one line:

    b BOOT          begin_run() returned this boot number
    r CEILING       reserve_seqs(CEILING) returned
"""
from __future__ import annotations

import os
import sys

BLOCK = 1000


def main() -> None:
    repo, path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, repo)
    from agent.state import AgentState

    state = AgentState.open(path)
    run = state.begin_run()
    os.write(1, b"b %d\n" % run.boot)
    ceiling = state.seq_ceiling
    while True:
        ceiling += BLOCK
        state.reserve_seqs(ceiling)
        os.write(1, b"r %d\n" % ceiling)
        state.record_acked(ceiling - BLOCK // 2)
        if ceiling % (3 * BLOCK) == 0:
            state.save_config_snapshot({"uplink": {"batch": ceiling % 97}, "sensors": ["temp"] * (ceiling % 7)})


if __name__ == "__main__":
    main()
