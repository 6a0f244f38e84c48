"""Scenario (b): a 24-hour outage, then recovery and drain.

The link goes down completely while the gateway keeps measuring. Compressed:
the short version is 20 s of outage; the long one 1,440 s, which at the
bench's rate (6 probes, one reading a second each) is the backlog a 6-probe
gateway sampling once a minute builds in 24 hours (8,640 envelopes). When the
link returns, the agent drains the backlog while it keeps sampling, and the
lender ends up with every reading exactly once. (The invariant is checked
before the outage's numbers: when readings are lost, the failure names them.)
As the link returns a probe goes silent; the report gives the silence
alarm's end-to-end latency, signed at the gateway to stored at the lender
(a figure: the tests assert that alarms overtake the backlog, not how fast).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults")

SILENCE = "alarm.silence.gateway"  # the bench's probes belong to no asset: they are the gateway's


def silence_at_lender(bench, state: str) -> bool:
    return any(r["name"] == SILENCE and r["string"] == state for r in bench.lender.readings(bench.device))


def test_a_long_outage_is_held_in_the_spool_and_drained_when_the_link_returns(bench, hil_profile):
    outage_s = hil_profile.pick(short=20.0, long=1440.0)
    probes, interval = len(bench.probes), bench.env.gateway.sensors.interval_s

    bench.run_for(3)
    bench.wait_delivered(timeout=20)
    before = bench.sample()

    bench.network.partition()
    bench.run_for(outage_s)
    during = bench.sample()
    bench.network.heal()
    silent = bench.probes[-1]
    silent.unplug()                                 # silent from now on: its alarm goes out ahead of the backlog
    drain_s = bench.wait_delivered(caught_up_to=during.head_seq, timeout=hil_profile.pick(60.0, 900.0))
    bench.wait_until(lambda: silence_at_lender(bench, "raised"), timeout=30, what="the silence alarm at the lender")
    silent.plug()
    bench.wait_until(lambda: silence_at_lender(bench, "cleared"), timeout=30, what="the silence alarm to clear")
    verdict = bench.finish(drain_timeout=hil_profile.pick(60, 300))

    assert during.lender_max_seq == before.lender_max_seq, "something got through a total outage"
    grown = during.head_seq - before.head_seq
    assert grown >= 0.8 * probes * outage_s / interval, f"the agent stopped sampling during the outage ({grown} envelopes)"
    assert during.spooled >= grown * 0.95, f"the backlog ({during.spooled}) does not hold the outage's envelopes ({grown})"
    assert verdict.stored >= during.head_seq
    bench.note("backlog when the link returned", f"{during.spooled} envelopes")
    bench.note("backlog drained in", f"{drain_s:.1f} s ({during.spooled / max(drain_s, 0.01):.0f} envelopes/s, "
                                     "while sampling on)")
    raised = next(a for a in bench.alarm_deliveries() if a.name == SILENCE and a.state == "raised")
    bench.note("alarm end-to-end latency", f"{raised.latency:.3f} s ({SILENCE}: signed at the gateway, "
                                           "stored at the lender)")
