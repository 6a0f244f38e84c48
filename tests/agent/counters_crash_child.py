"""Child process for the signed-counters SIGKILL test: the agent's recorder signs readings and alarms until killed.

Run as `python -I counters_crash_child.py REPO DIR`. DIR holds the agent's
spool (`spool.db`, synchronous FULL) and state (`state.json`), as
`tests.kit.agent.build_agent` lays them out. Every third envelope is an
alarm. After each append returns it reports on stdout, unbuffered, one line:

    s SEQ ALARMS GAPS    an envelope with these signed counters is in the spool
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    repo, directory = sys.argv[1], sys.argv[2]
    sys.path.insert(0, repo)
    from agent.recorder import Recorder
    from agent.spool import Spool
    from agent.state import AgentState
    from telemetry.identity import Identity
    from telemetry.senml import Record

    spool = Spool.open(os.path.join(directory, "spool.db"), synchronous="FULL")
    state = AgentState.open(os.path.join(directory, "state.json"))
    recorder = Recorder.start(Identity(bytes([5]) * 32), "gw-test-7", spool, state, now=1767225600.0)
    n = 0
    while True:
        n += 1
        records = [Record("alarm.door.store", string="raised")] if n % 3 == 0 else [Record("temp", value=4.0 + n % 5)]
        envelope = recorder.record(records)
        os.write(1, b"s %d %d %d\n" % (envelope.seq, envelope.counters.alarms, envelope.counters.gaps))


if __name__ == "__main__":
    main()
