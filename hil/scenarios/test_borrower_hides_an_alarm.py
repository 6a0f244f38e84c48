"""Scenario (h): a borrower hides an alarm — cuts the uplink, lets the alarm be signed, deletes the spool.

The borrower runs the site. They partition the network, unplug a probe (the
agent signs its silence alarm and spools it: nothing reaches the lender),
stop the agent, delete its spool database, plug the probe back, start the
agent again and heal the link. The agent signs a spool-reset gap record over
what it lost, so every missing seq is "explained" by the device's own account
(the rig's invariant holds); the lender does not take the device's word for
it: `pledgewatch lender status` for the gateway is not OK, and names the
declared gap and the alarm the signed counters say was raised and never
arrived. The report lists the risks the lender named.
"""
from __future__ import annotations

import json

import pytest

from hil.processes import run_cli

pytestmark = pytest.mark.needs("agent", "lender", "onewire_sensors", "network_faults")

SILENCE = "alarm.silence.gateway"  # the bench's probes belong to no asset: they are the gateway's


def spooled_silence_seq(bench) -> int | None:
    """The seq of the spooled envelope raising the silence alarm, once there is one."""
    return next((e.seq for e in bench.spooled_envelopes()
                 if any(r.name == SILENCE and r.string == "raised" for r in e.records)), None)


def lender_status(bench) -> list[dict]:
    """`pledgewatch lender status --json` for the bench's gateway, as the lender's staff read it."""
    return json.loads(run_cli(["lender", "status", "--data", str(bench.lender_dir), "--device", bench.device,
                               "--json"]))


def test_a_borrower_who_deletes_the_spool_over_an_unsent_alarm_leaves_the_lender_not_ok(bench):
    bench.run_for(2)
    bench.wait_delivered(timeout=20)
    before = lender_status(bench)

    bench.network.partition()
    probe = bench.probes[-1]
    probe.unplug()
    bench.wait_until(lambda: spooled_silence_seq(bench) is not None, timeout=20,
                     what="the silence alarm signed and spooled")
    alarm_seq = spooled_silence_seq(bench)
    bench.agent.stop()
    for suffix in ("", "-wal", "-shm"):
        (bench.state_dir / f"spool.db{suffix}").unlink(missing_ok=True)
    bench.faults.instant("spool-deleted", "the borrower deleted spool.db with the unsent alarm in it")
    probe.plug()
    bench.agent.start()
    bench.network.heal()
    # the restarted agent's spool starts empty: wait for what it signs after the lost alarm, not for its new head
    bench.wait_delivered(caught_up_to=alarm_seq + 1, timeout=30)
    after = lender_status(bench)

    assert {s["state"] for s in before} == {"OK"}, before
    states = {s["state"] for s in after}
    risks = {r["kind"]: r["detail"] for r in after[0]["risks"]}
    assert "OK" not in states and {"gap", "alarm-lost"} <= set(risks), after
    bench.note("lender status after the attack", ", ".join(sorted(states)))
    for kind, detail in sorted(risks.items()):
        bench.note(f"risk {kind}", detail)
    verdict = bench.finish(drain_timeout=60)
    resets = [g for g in verdict.gaps if g.reason == "spool-reset"]
    assert resets, "the agent signed no spool-reset record over the deleted spool"
    bench.note("the device's own account", f"spool-reset gap record seq {resets[0].seq}: the rig's invariant holds, "
                                           "the lender still says not OK")
