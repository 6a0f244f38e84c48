"""Scenario (c): a flaky link — 30 % loss and 500 ms jitter in both directions, for a long run.

Requests, block-wise blocks and acks are lost or late at random (the seed of
the bench's [network] makes the pattern repeatable); CoAP retransmits, the
agent backs off and resends whole batches, the lender sees some envelopes
twice. Delivery must keep making progress through it, and at the end the
lender holds every reading exactly once.
"""
from __future__ import annotations

import pytest

from hil.netem import DOWN, UP

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults")


def test_a_flaky_link_with_30_percent_loss_and_500_ms_jitter_delivers_every_reading_once(bench, hil_profile):
    duration_s = hil_profile.pick(short=20.0, long=900.0)
    bench.run_for(2)
    bench.network.impair(loss=0.3, delay_s=0.5, jitter_s=0.5)
    start = bench.sample()
    bench.run_for(duration_s)
    end = bench.sample()
    progress = (end.lender_max_seq or 0) - (start.lender_max_seq or 0)
    produced = end.head_seq - start.head_seq
    assert progress > 0, "nothing was delivered during the flaky period"
    bench.note("delivered while flaky", f"{progress} of {produced} envelopes produced meanwhile")

    verdict = bench.finish(drain_timeout=hil_profile.pick(90, 300))
    stats = bench.proxy.stats()
    assert stats[UP].lost > 0 and stats[DOWN].lost > 0, "the link was not actually lossy"
    bench.note("datagrams lost up/down", f"{stats[UP].lost}/{stats[DOWN].lost} of "
                                        f"{stats[UP].received}/{stats[DOWN].received}")
    assert verdict.stored >= end.head_seq
