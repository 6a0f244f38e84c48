"""`python -m bench lossy`: the real agent and lender through a lossy, jittery link — delivery during it, alarm latency, air cost.

One run of the simulated HIL bench (`hil/envs/sim.toml`: the agent process
with 6 probes read every second, `pledgewatch lender serve`, the rig's UDP
proxy between them), in phases on the same agent and lender:

1. clean: `PHASE_S` seconds on a clean link (the baseline air cost);
2. loss 10 %: 10 % loss and 500 ± 500 ms delay in both directions;
3. a clean pause of `PAUSE_S` (the backlog drains);
4. loss 30 %: 30 % loss, 500 ± 500 ms.

During each lossy phase a probe is unplugged and plugged back every 8 s, so
the agent raises and clears silence alarms in the middle of it. Figures per
phase (suffix ``_loss_10``, ``_loss_30``, ``_clean``):

* ``delivered_fraction``: envelopes stored at the lender during the phase /
  envelopes the agent produced during it (the timeline, `hil.measure`);
* ``delivered_in_time_fraction``: of the envelopes produced until `TAIL_S`
  before the phase ended, the share stored before it ended (what the
  short HIL scenario asserts: the last round trip's envelopes cannot be
  there yet);
* ``alarm_latency_s_p50`` / ``_p99`` / ``_max`` and ``alarms``: alarm envelopes
  signed during the phase, from the gateway's signature to the lender's store;
* ``datagrams_per_envelope``: datagrams both ways through the proxy during
  the phase (before its loss: what the radio would carry) per envelope stored;
* ``backlog_end``: envelopes waiting in the agent's spool when the phase ended.

Takes about ``3 * PHASE_S + PAUSE_S`` seconds plus start-up and the final drain.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from hil.bench import Bench, Profile
from hil.env import REPO, load
from hil.measure import delivery_during, head_at, latency_summary, stored_by
from hil.netem import DOWN, UP

PHASE_S = 120.0
PAUSE_S = 15.0
TAIL_S = 5.0
SILENT_S, REPORTING_S = 5.0, 3.0


def _phase(bench: Bench, *, loss: float | None) -> dict:
    """One phase on the running bench; returns its raw figures (alarms and in-time share are added after the run)."""
    if loss is not None:
        bench.network.impair(loss=loss, delay_s=0.5, jitter_s=0.5)
    before = bench.proxy.stats()
    start = time.time()
    deadline = time.monotonic() + PHASE_S
    probe = bench.probes[-1]
    while loss is not None and deadline - time.monotonic() > SILENT_S + REPORTING_S:
        probe.unplug()
        bench.run_for(SILENT_S)
        probe.plug()
        bench.run_for(REPORTING_S)
    bench.run_for(max(0.0, deadline - time.monotonic()))
    end_sample = bench.observer.sample()
    after = bench.proxy.stats()
    if loss is not None:
        bench.network.heal()
    samples = bench.observer.samples()
    during = delivery_during(samples, start, end_sample.at)
    datagrams = sum(after[d].received - before[d].received for d in (UP, DOWN))
    return {"start": start, "end": end_sample.at, "produced": during.produced, "delivered": during.delivered,
            "delivered_fraction": round(during.fraction, 4), "delivered_per_minute": round(during.per_minute, 1),
            "datagrams_per_envelope": round(datagrams / max(1, during.delivered), 3),
            "datagrams_lost": sum(after[d].lost - before[d].lost for d in (UP, DOWN)),
            "backlog_end": end_sample.spooled,
            "counted": (head_at(samples, start) + 1, head_at(samples, end_sample.at - TAIL_S) + 1)}


def measure() -> dict:
    env = load(REPO / "hil" / "envs" / "sim.toml")
    with tempfile.TemporaryDirectory(prefix="bench-lossy-") as directory:
        with Bench(env, Path(directory), name="bench-lossy", profile=Profile("long")) as bench:
            bench.run_for(2)
            bench.wait_delivered(timeout=30)
            phases = {"clean": _phase(bench, loss=None), "loss_10": _phase(bench, loss=0.1)}
            bench.run_for(PAUSE_S)
            phases["loss_30"] = _phase(bench, loss=0.3)
            bench.finish(drain_timeout=300)
            received = bench.received()
            figures: dict[str, object] = {}
            for name, phase in phases.items():
                first, stop = phase.pop("counted")
                counted = range(first, stop)
                phase["delivered_in_time_fraction"] = round(
                    stored_by(received, counted, phase["end"]) / max(1, len(counted)), 4)
                alarms = latency_summary(bench.alarm_deliveries(phase.pop("start"), phase.pop("end")))
                phase.update({"alarms": alarms["count"], "alarm_latency_s_p50": alarms["p50_s"],
                              "alarm_latency_s_p99": alarms["p99_s"], "alarm_latency_s_max": alarms["max_s"]})
                figures.update({f"{key}_{name}": value for key, value in phase.items()})
            figures.update({"phase_s": PHASE_S, "delay_s": 0.5, "jitter_s": 0.5, "envelopes_per_s_produced": 6,
                            "uplink": dict(env.gateway.uplink), "invariant_holds": True})
            return figures


def main() -> None:
    print(json.dumps(measure()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
