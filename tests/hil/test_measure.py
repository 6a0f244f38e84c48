"""hil.measure: delivery during a fault read off the timeline, and alarm latencies from signed to stored."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.faults import FaultRecord
from hil.measure import (
    AlarmDelivery,
    alarm_deliveries,
    delivery_during,
    delivery_per_fault,
    latency_summary,
    percentile,
)
from hil.observer import Sample

T0 = 1_800_000_000.0


def timeline(seconds: int = 60) -> list[Sample]:
    """6 envelopes/s produced; from 20 s to 40 s the lender stores only 2 of every 6 (a lossy spell), then catches up."""
    samples, delivered = [], 0
    for second in range(seconds + 1):
        produced = 6 * second
        delivered = delivered + (2 if 20 < second <= 40 else 6) if second else 0
        if second > 40:
            delivered = produced
        samples.append(Sample(T0 + second, produced - delivered, produced, delivered, delivered, None, True))
    return samples


def test_delivery_during_a_window_is_read_at_its_ends():
    during = delivery_during(timeline(), T0 + 20, T0 + 40)
    assert (during.produced, during.delivered) == (120, 40)
    assert during.per_minute == pytest.approx(120.0) and during.fraction == pytest.approx(1 / 3)
    assert "40 delivered in 20 s (120/min, 33% of the 120 produced)" == during.describe()
    between = delivery_during(timeline(), T0 + 20.5, T0 + 39.9)        # between samples: the last one before each end
    assert (between.produced, between.delivered) == (114, 38)


def test_delivery_per_fault_skips_instants_and_faults_that_never_ended():
    faults = [FaultRecord("link-impaired", T0 + 20, T0 + 40, "loss 30%"), FaultRecord("power-cut", T0 + 45, T0 + 45,
              "agent killed", instant=True), FaultRecord("partition", T0 + 50, None, "no link")]
    [impaired] = delivery_per_fault(faults, timeline())
    assert impaired.kind == "link-impaired" and impaired.delivery.delivered == 40
    assert impaired.to_json()["fraction"] == pytest.approx(0.3333, abs=1e-4)


def test_a_timeline_without_readings_gives_no_figure():
    blind = [Sample(T0 + s, None, None, None, None, None, False) for s in range(10)]
    assert delivery_during(blind, T0, T0 + 9) is None
    assert delivery_per_fault([FaultRecord("partition", T0, T0 + 5, "")], blind) == []


def _envelope(seq: int, uptime_s: float | None, alarm: str | None):
    records = [SimpleNamespace(name="probe-1", string=None)]
    if alarm is not None:
        records.append(SimpleNamespace(name=alarm, string="raised"))
    statement = None if uptime_s is None else SimpleNamespace(uptime_s=uptime_s)
    return SimpleNamespace(seq=seq, alarm=alarm is not None, records=records, clock_statement=statement)


def test_alarm_latency_runs_from_the_signature_on_the_gateways_uptime_to_the_lenders_store():
    booted = T0 - 1000.0
    received = [(_envelope(3, 1010.0, "alarm.silence.gateway"), T0 + 11.5),
                (_envelope(1, 1001.0, None), T0 + 2.0),                          # routine: not an alarm
                (_envelope(2, None, "alarm.tamper.store"), T0 + 3.0),            # no clock statement: no signing time
                (_envelope(5, 1020.0, "alarm.silence.gateway"), T0 + 20.25)]
    alarms = alarm_deliveries(received, booted)
    assert [(a.seq, a.name, a.state) for a in alarms] == [(3, "alarm.silence.gateway", "raised"),
                                                          (5, "alarm.silence.gateway", "raised")]
    assert [a.latency for a in alarms] == [pytest.approx(1.5), pytest.approx(0.25)]
    assert latency_summary(alarms) == {"count": 2, "p50_s": 0.25, "p99_s": 1.5, "max_s": 1.5}
    assert latency_summary([]) == {"count": 0, "p50_s": None, "p99_s": None, "max_s": None}


@given(st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=300), st.floats(1, 100))
def test_the_nearest_rank_percentile_is_one_of_the_values_and_at_least_that_share_is_at_or_below_it(values, q):
    p = percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) >= q / 100 * len(values) - 1e-9
    assert percentile(values, 100) == max(values) and percentile([], 50) is None


def test_alarm_delivery_serialises_its_latency():
    alarm = AlarmDelivery(7, "alarm.silence.gateway", "cleared", T0, T0 + 2.5)
    assert alarm.to_json()["latency_s"] == 2.5
