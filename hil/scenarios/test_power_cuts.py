"""Scenario (d): power cuts during upload, many times.

Each time the agent is seen sending towards the lender (a batch in flight),
the power goes a random moment later (0–150 ms, from the bench's seed): the
batch may be lost, half-sent, stored but unacknowledged, or acknowledged but
not yet deleted. The link is slowed a little so the cuts land inside
exchanges. Whatever the moment, nothing the agent accepted is lost, nothing is
stored twice, and every cut is one signed power-loss record.
"""
from __future__ import annotations

import random
import time

import pytest

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults", "power_cut")


def test_power_cuts_in_the_middle_of_uploads_lose_nothing_and_each_is_a_signed_gap_record(bench, hil_profile):
    cuts = hil_profile.pick(short=8, long=100)
    rng = random.Random(bench.env.network.seed)
    bench.network.impair(delay_s=0.05, jitter_s=0.04)
    bench.run_for(2)
    for _ in range(cuts):
        bench.network.wait_for_upload(timeout=30)
        time.sleep(rng.uniform(0.0, 0.15))
        bench.power.cut()
        bench.run_for(rng.uniform(1.0, 2.0))

    verdict = bench.finish(drain_timeout=hil_profile.pick(60, 300))
    power_losses = [g for g in verdict.gaps if g.reason == "power-loss"]
    assert len(power_losses) == cuts, f"{cuts} power cuts, {len(power_losses)} signed power-loss records"
    bench.note("power cuts", cuts)
