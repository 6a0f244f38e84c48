"""Scenario (i): an attacker floods the lender while the gateway and a node go on delivering.

The lender listens on the internet. While the bench's gateway samples and
sends through the rig's proxy, and the bench's NB-IoT node runs its cycles
under MicroPython, hil.flood's attacker (a process of its own, from sixteen
addresses) sends junk to ``/n`` and ``/enroll``, garbage, datagrams of 63 KiB,
fake OSCORE naming a real device's kid and site probes. An honest probe, a
gateway and a node registered with OSCORE contexts (hil.flood.HonestProbe),
measures the lender's answers, idle first, then under the flood. At the end
the gateway's every reading is stored exactly once (the rig's invariant),
the node's too, every honest request was acked, and the lender's memory
stayed flat. The report gives the honest ack times idle and under the flood,
the lender's memory over time and what the attacker sent (the flood is a
fault on the timeline).
"""
from __future__ import annotations

import time

import pytest

from hil.flood import Flood, HonestProbe, ProbeDevice, percentile, rss_mb
from hil.node import DEEPSLEEP_RESET, PWRON_RESET
from telemetry.identity import Identity

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults", "nbiot_node")


def test_honest_devices_deliver_through_a_flood_and_the_lender_stays_flat(bench, hil_profile):
    flood_s = hil_profile.pick(short=15.0, long=600.0)
    rate = hil_profile.pick(short=5_000.0, long=20_000.0)
    node = next(iter(bench.nodes))

    probe_devices = [ProbeDevice("gw-probe", Identity.generate(), None, "t"),
                     ProbeDevice("node-probe", Identity.generate(), None, "n")]
    for device in probe_devices:
        device.context = bench.lender.register(device.name, device.identity.public_key.hex())
    kid = bytes.fromhex(next(d for d in bench.lender.devices() if d["device"] == "gw-probe")["oscore_id_hex"])
    bench.run_node(node, [{"reset_cause": PWRON_RESET, "celsius": 4.5}])
    bench.run_for(3)
    bench.wait_delivered(timeout=30)

    probe = HonestProbe(bench.lender.uri, probe_devices, per_s=10.0).start()
    bench.run_for(5)
    memory = [(0.0, rss_mb(bench.lender.pid))]
    flood = Flood(bench.lender.address, seconds=flood_s, rate=rate, sources=16, kid=kid)
    bench.faults.begin("flood", f"{rate:,.0f} datagrams/s of junk from 16 addresses", planned_s=flood_s)
    started = time.time()
    flood.start()
    cycles = 0
    while flood.process.poll() is None:
        bench.run_node(node, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 5.0}])  # a cycle through the flood
        cycles += 1
        memory.append((time.time() - started, rss_mb(bench.lender.pid)))
        bench.run_for(1)
    sent = flood.wait()
    bench.faults.end("flood")
    ended = time.time()
    delivered = bench.delivery_during("flood")
    bench.run_for(2)
    samples = probe.stop()
    final, = bench.run_node(node, [{"reset_cause": DEEPSLEEP_RESET, "celsius": 4.0}])
    verdict = bench.finish(drain_timeout=60)

    idle = [s for s in samples if s.at < started]
    during = [s for s in samples if started <= s.at <= ended]
    growth = max(m for _, m in memory) - memory[0][1]
    assert verdict.stored >= delivered.produced, "the gateway's readings are all stored (the invariant held)"
    assert delivered.delivered > 0, "the gateway delivered during the flood"
    assert final["report"]["buffered"] == [], "the node's outbox is empty: everything it sent through the flood acked"
    assert bench.result.node_invariants[node].stored >= cycles
    assert idle and during and all(s.acked for s in idle + during), "every honest request acked"
    assert growth < 50, f"the lender grew by {growth:.0f} MiB during the flood"
    ms = lambda group: f"p50 {percentile([s.ms for s in group], 0.5):.1f} ms, p99 {percentile([s.ms for s in group], 0.99):.1f} ms"
    bench.note("honest acks, idle", f"{ms(idle)} ({len(idle)} requests: an OSCORE gateway to /t, a node to /n)")
    bench.note("honest acks, under the flood", f"{ms(during)} ({len(during)} requests)")
    bench.note("the flood", f"{sent['per_s']:,} datagrams/s for {sent['seconds']:.0f} s from 16 addresses "
                            f"({', '.join(f'{k} {v:,}' for k, v in sent['by_attack'].items())})")
    step = max(1, len(memory) // 12)
    bench.note("lender memory over time", ", ".join(f"{at:.0f} s: {mb:.0f} MiB" for at, mb in memory[::step])
               + f"; growth {growth:.1f} MiB")
    bench.note("gateway during the flood", f"{delivered.produced} envelopes produced, {delivered.delivered} stored; "
                                           f"the node ran {cycles} cycle(s), its outbox empty at the end")
