"""`python -m bench flood`: honest devices' ack times while an attacker floods the lender, and the lender's memory.

A real `pledgewatch lender serve` process (hil.processes.LenderProcess) on
127.0.0.1 serves two honest devices over OSCORE (hil.flood.HonestProbe, in a
thread of this process): a gateway POSTing one-envelope batches to ``/t`` and
a node POSTing single envelopes to ``/n``, one request in flight, 20 requests
a second between them. First `IDLE_S` seconds with no attacker, then `FLOOD_S`
seconds while hil.flood's attacker, a child process of its own, sends its mix
(unique 1 KiB junk to ``/n``, junk to ``/enroll``, garbage and 63 KiB
datagrams, fake OSCORE naming the gateway's kid, site probes) from 16
addresses at `FLOOD_RATE` datagrams a second. The lender's resident memory
is read from ``/proc/PID/status`` once a second.

Figures: ``honest_ack_ms_p99_idle`` and ``honest_ack_ms_p99_under_flood`` (the
99th percentile, nearest rank, of the honest round trips of both devices in
the same run; a request not acked within 10 s counts as 10 s),
``flood_datagrams_per_s`` (what the attacker sent), ``lender_rss_mb_growth``
(the highest RSS during the flood less the RSS when it started), the
lender's CPU time over the flood, and what it did with the flood from its
own counts afterwards (``lender quarantine --json --counts``).
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from hil.flood import Flood, HonestProbe, ProbeDevice, percentile, rss_mb
from hil.processes import LenderProcess, run_cli
from telemetry.identity import Identity

IDLE_S = 15.0
FLOOD_S = 60.0
FLOOD_RATE = 20_000.0
FLOOD_SOURCES = 16
HONEST_PER_S = 20.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(idle_s: float = IDLE_S, flood_s: float = FLOOD_S, rate: float | None = FLOOD_RATE,
            sources: int = FLOOD_SOURCES) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as directory:
        root = Path(directory)
        lender = LenderProcess(root / "lender", log_path=root / "lender.log")
        devices = [ProbeDevice("gw-flood-bench", Identity.generate(), Path(), "t"),
                   ProbeDevice("node-flood-bench", Identity.generate(), Path(), "n")]
        for device in devices:
            device.context = lender.register(device.name, device.identity.public_key.hex())
        lender.start()
        try:
            # the gateway's OSCORE sender id: the kid its requests carry in clear, which an attacker reads off the air
            kid = bytes.fromhex(next(d for d in lender.devices() if d["device"] == devices[0].name)["oscore_id_hex"])
            probe = HonestProbe(lender.uri, devices, per_s=HONEST_PER_S).start()
            time.sleep(idle_s)
            rss_before, cpu_before = rss_mb(lender.pid), _cpu_s(lender.pid)
            flood = Flood(lender.address, seconds=flood_s, rate=rate, sources=sources, kid=kid).start()
            flood_start = time.time()
            memory = []
            while flood.process.poll() is None:
                memory.append(rss_mb(lender.pid))
                time.sleep(1.0)
            sent = flood.wait()
            flood_end = time.time()
            cpu = _cpu_s(lender.pid) - cpu_before
            time.sleep(1.0)
            samples = probe.stop()
            rss_after = rss_mb(lender.pid)
        finally:
            lender.stop()
        refusals = json.loads(run_cli(["lender", "quarantine", "--data", str(lender.data), "--json", "--counts"]))
    idle = [s.ms for s in samples if s.at < flood_start]
    under = [s.ms for s in samples if flood_start + 1 <= s.at <= flood_end]
    p99_idle, p99_under = percentile(idle, 0.99), percentile(under, 0.99)
    return {
        "honest_ack_ms_p99_idle": round(p99_idle, 2),
        "honest_ack_ms_p99_under_flood": round(p99_under, 2),
        "under_flood_vs_idle": round(p99_under / p99_idle, 2),
        "honest_ack_ms_median_idle": round(statistics.median(idle), 2),
        "honest_ack_ms_median_under_flood": round(statistics.median(under), 2),
        "honest_requests_idle": len(idle),
        "honest_requests_under_flood": len(under),
        "honest_unacked_under_flood": sum(not s.acked for s in samples if flood_start + 1 <= s.at <= flood_end),
        "flood_datagrams_per_s": sent["per_s"],
        "flood_datagrams": sent["sent"],
        "flood_seconds": sent["seconds"],
        "flood_sources": sources,
        "flood_by_attack": sent["by_attack"],
        "lender_cpu_s_during_flood": round(cpu, 1),
        "lender_rss_mb_before_flood": round(rss_before, 1),
        "lender_rss_mb_max_during_flood": round(max(memory), 1),
        "lender_rss_mb_after_flood": round(rss_after, 1),
        "lender_rss_mb_growth": round(max(memory) - rss_before, 1),
        "lender_refusals": {f"{r['kind']}/{r['reason_name']}": {k: r[k] for k in ("refused", "kept", "counted_only")}
                            for r in refusals},
    }


def main() -> None:
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
