"""Scenario (g): an NB-IoT node running the real firmware under MicroPython, on the simulated NB-IoT modem.

The node wakes, samples, signs and sends one envelope per cycle through its
simulated modem (real UDP on 127.0.0.1, through the rig's proxy) to the
lender's node resource, under OSCORE (the context the lender made when the
bench registered the node), the radio released after each ack. Its days bring what a node's days bring: acks lost on
the air (the envelope stays in the outbox and goes with the next cycle), a
power cut right after signing (before the envelope reached flash), a tamper
wake, a cycle with no link at all. At the end its outbox is empty and the
lender holds every envelope the node kept, exactly once, with every gap
explained by a signed gap record — the same invariant as the gateway's.
"""
from __future__ import annotations

import pytest

from hil.node import DEEPSLEEP_RESET, PIN_WAKE, PWRON_RESET

pytestmark = pytest.mark.needs("lender", "nbiot_node", "network_faults")


def test_an_nbiot_node_under_micropython_keeps_every_envelope_through_lost_acks_and_a_power_cut(bench, hil_profile):
    from hil.sim.models import nbiot

    name = next(iter(bench.nodes))
    days = hil_profile.pick(short=1, long=10)
    air = nbiot.link(bench.node_modems[name])

    bench.run_node(name, [{"reset_cause": PWRON_RESET, "celsius": 4.5}])
    for day in range(days):
        air.drop_downlink = 3                       # every try of the next exchange loses its ack
        lost_ack, = bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 5.0 + day}])
        assert lost_ack["report"]["buffered"], lost_ack["report"]  # kept in the outbox, not lost
        bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 5.5}])
        cut, = bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "power_cut": "after_sign"}])
        assert cut["power_cut"]
        bench.run_node(name, [{"reset_cause": PWRON_RESET, "celsius": 6.0}])
        bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "wake_reason": PIN_WAKE, "tamper": 1}])
        bench.network.partition()                   # no link through a whole cycle
        offline, = bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 6.5}])
        bench.network.heal()
        assert offline["report"]["buffered"], offline["report"]
    final, = bench.run_node(name, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 4.0}])
    assert final["report"]["buffered"] == [], final["report"]

    node = bench.nodes[name]
    assert node.context is not None and all(r["oscore"] for r in node.reports), "OSCORE throughout"
    assert all(r["forged"] == 0 for r in node.reports if "forged" in r)

    bench.finish(drain_timeout=30)
    verdict = bench.result.node_invariants[name]
    assert verdict.alarms_delivered >= days, "the tamper wakes did not reach the lender as alarms"
    bench.note(f"node {name}", f"{verdict.stored} envelopes stored, seqs 1..{verdict.head_seq}, "
                               f"{len(verdict.gaps)} signed gap record(s)")
