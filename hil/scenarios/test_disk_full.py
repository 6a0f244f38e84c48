"""Scenario (f): the spool's disk fills up, then frees again.

The agent's state directory is on a size-limited filesystem (tmpfs or a loop
image as root; a file-size quota on the agent otherwise). While it is full,
appends fail: the agent must keep running, count every reading it could not
store, and sign one storage-failure gap record with that count once it can
write again. Everything it did store reaches the lender exactly once.
"""
from __future__ import annotations

import pytest


pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "disk_full")


def test_a_full_disk_keeps_the_agent_running_and_the_lost_readings_are_a_signed_gap_record(bench, hil_profile):
    full_s = hil_profile.pick(short=15.0, long=300.0)
    bench.run_for(3)
    bench.wait_delivered(timeout=20)
    bench.disk.fill()
    bench.run_for(full_s)               # fails at once if the agent dies
    bench.disk.free()
    bench.run_for(4)

    verdict = bench.finish(drain_timeout=60)
    storage = [g for g in verdict.gaps if g.reason == "storage-failure"]
    assert storage and all(g.count for g in storage), f"no signed storage-failure record with a count: {verdict.gaps}"
    bench.note("readings the full disk cost", sum(g.count for g in storage))
