"""Scenario (a): a day in the field, compressed.

One hour of the field is `hour_s` seconds of the run (1 s in the short
version, 60 s in the long one). The probes follow the day: an outdoor yard
swinging between night and afternoon, a cold store that holds 4 °C until its
door is left open in the afternoon. The day brings what a gateway's day
brings: an NTP step at 02:00 (the RTC ran three minutes slow), morning
congestion on the cell, a two-hour outage at noon, a power blip at 18:00, a
flaky evening. At the end the lender holds every reading, the blip is a signed
power-loss record, and the lender's readings show the day as it was.
"""
from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults", "power_cut", "clock_jump")

NTP_STEP_S = 180.0


def yard_celsius(hour: float) -> float:
    """Outdoors: 8 °C before dawn, 22 °C at 15:00."""
    return 15.0 - 7.0 * math.cos((hour - 3.0) / 24.0 * 2.0 * math.pi)


def cold_store_celsius(hour: float) -> float:
    """4 °C, until the door stays open from 15:00 to 17:00 and the store warms to 11 °C."""
    if 15 <= hour < 17:
        return 4.0 + 3.5 * (hour - 14)
    return 4.0


def wall_clock_steps(envelopes) -> list[float]:
    """Steps of the wall clock against the monotonic uptime between consecutive envelopes (> 2 s only).

    Each envelope's clock statement (payload key 7) gives the uptime (3, ms) and,
    while the clock is unsynchronized, the system clock (4); a synchronized one
    puts the wall time on the records instead.
    """
    offsets = []
    for envelope in envelopes:
        clock = envelope.clock or {}
        wall = clock.get(4)
        if wall is None:
            wall = next((r.time for r in envelope.records if r.time is not None), None)
        if wall is not None and 3 in clock:
            offsets.append(wall - clock[3] / 1000)
    return [round(b - a, 1) for a, b in zip(offsets, offsets[1:]) if abs(b - a) > 2]


def test_a_day_in_the_field_delivers_every_reading_and_signs_the_power_blip(bench, hil_profile):
    hour_s = hil_profile.pick(short=1.0, long=60.0)
    yard, cold_store, *others = bench.probes
    for hour in range(24):
        yard.set_celsius(round(yard_celsius(hour), 2))
        cold_store.set_celsius(cold_store_celsius(hour))
        for index, probe in enumerate(others):
            probe.set_celsius(18.0 + index + 0.5 * math.sin(hour))
        if hour == 2:
            bench.clock.jump(+NTP_STEP_S)               # NTP steps the slow RTC
        elif hour == 7:
            bench.network.impair(loss=0.1, delay_s=0.1, jitter_s=0.1)  # morning congestion
        elif hour == 9:
            bench.network.heal()
        elif hour == 12:
            bench.network.partition(for_s=2 * hour_s)   # the cell goes down over lunch
        elif hour == 18:
            bench.power.cut(off_s=hour_s / 2)           # a power blip
        elif hour == 21:
            bench.network.impair(loss=0.2, jitter_s=0.3)  # a flaky evening
        elif hour == 23:
            bench.network.heal()
        bench.run_for(hour_s)

    verdict = bench.finish(drain_timeout=hil_profile.pick(60, 300))

    power_losses = [g for g in verdict.gaps if g.reason == "power-loss"]
    assert len(power_losses) == 1, verdict.gaps
    readings = bench.lender.readings(bench.device)
    by_probe: dict[str, list[dict]] = {}
    for reading in readings:
        by_probe.setdefault(reading["name"], []).append(reading)
    assert set(by_probe) >= {f"probe-{i}" for i in range(1, len(bench.probes) + 1)}, sorted(by_probe)
    yard_values = [r["value"] for r in by_probe["probe-1"]]
    assert max(yard_values) - min(yard_values) > 10, "the yard's day/night swing is not at the lender"
    assert max(r["value"] for r in by_probe["probe-2"]) >= 8.0, "the cold store's open door is not at the lender"
    steps = wall_clock_steps(bench.envelopes())
    assert any(abs(step - NTP_STEP_S) < 3 for step in steps), f"the NTP step is not in the envelopes' clocks: {steps}"
    bench.note("readings at the lender", len(readings))
    bench.note("yard range at the lender", f"{min(yard_values):.1f}..{max(yard_values):.1f} °C")
