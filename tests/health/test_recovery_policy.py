"""The recovery policy, pure: the ladder's order and backoff, the hourly reset cap, and no reset loop when the network refuses."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.exc import AgentError, ModemHealthConfigError
from agent.health import HOUR_S, ModemHealthConfig, Observation, Outcome, Recovery, RecoveryPolicy

CONFIG = ModemHealthConfig(status_interval_s=60, backoff_s=30, max_resets_per_hour=3, slow_probe_s=900,
                           refused_alarm_after_s=600, refused_reattach_s=1800)
SICK = Observation(Outcome.SICK, True, "AtTimeoutError: no final result code for AT")
GONE = Observation(Outcome.SICK, False, "port /dev/pledgewatch-modem-at is gone")
DENIED = Observation(Outcome.REFUSED, True, "registration denied")
OK = Observation(Outcome.HEALTHY)


def run_probes(policy: RecoveryPolicy, observe, until: float, start: float = 0.0):
    """Probe as the monitor does — at each plan's next_probe_s — until `until`; yield (time, plan)."""
    now = start
    while now < until:
        plan = policy.observe(observe(now), now)
        yield now, plan
        now += plan.next_probe_s


def resets_per_sliding_hour(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + HOUR_S) for t in times), default=0)


def test_a_silent_modem_climbs_the_ladder_in_order_with_growing_waits_then_stops_and_raises_the_alarm():
    policy = RecoveryPolicy(CONFIG, has_power_line=True)
    steps = list(run_probes(policy, lambda t: SICK, until=4 * HOUR_S))
    recoveries = [(t, p.recovery) for t, p in steps if p.recovery]
    assert [r for _, r in recoveries] == [Recovery.REQUERY, Recovery.RADIO_CYCLE, Recovery.REBOOT, Recovery.POWER_CYCLE]
    waits = [steps[i + 1][0] - steps[i][0] for i in range(4)]
    assert waits == [30, 60, 120, 240]  # backoff_s x 2^rung
    give_up = steps[4][1]
    assert give_up.health == "down" and give_up.next_probe_s == 900
    assert [(a.name, a.state) for a in give_up.alarms] == [("alarm.modem-down.gateway", "raised")]
    assert "cfun-cycle, reboot, power-cycle" in give_up.alarms[0].detail
    later = steps[5:]
    assert later and all(p.recovery is None and not p.alarms and p.next_probe_s == 900 for _, p in later)


def test_the_modem_answering_again_clears_the_alarm_and_restarts_the_ladder_from_the_bottom():
    policy = RecoveryPolicy(CONFIG, has_power_line=True)
    for now in range(0, 3000, 300):
        policy.observe(SICK, now)
    assert policy.gave_up
    back = policy.observe(OK, 3000)
    assert (back.health, back.next_probe_s) == ("ok", 60)
    assert [(a.kind, a.state) for a in back.alarms] == [("modem-down", "cleared")]
    assert policy.observe(SICK, 9000).recovery is Recovery.REQUERY


def test_without_a_power_line_the_ladder_stops_after_the_reboot():
    policy = RecoveryPolicy(CONFIG, has_power_line=False)
    plans = [p for _, p in run_probes(policy, lambda t: SICK, until=HOUR_S)]
    assert [p.recovery for p in plans if p.recovery] == [Recovery.REQUERY, Recovery.RADIO_CYCLE, Recovery.REBOOT]
    assert plans[3].health == "down" and plans[3].alarms[0].state == "raised"


def test_a_port_that_is_gone_skips_the_rungs_that_need_it_and_goes_to_the_power_line():
    policy = RecoveryPolicy(CONFIG, has_power_line=True)
    plans = [p for _, p in run_probes(policy, lambda t: GONE, until=HOUR_S)]
    assert [p.recovery for p in plans if p.recovery] == [Recovery.REQUERY, Recovery.POWER_CYCLE]
    assert plans[2].health == "down" and "power-cycle" in plans[2].alarms[0].detail


def test_the_hourly_cap_pauses_the_ladder_raises_the_alarm_and_resumes_when_the_hour_allows():
    policy = RecoveryPolicy(ModemHealthConfig(backoff_s=30, max_resets_per_hour=2), has_power_line=True)
    steps = list(run_probes(policy, lambda t: SICK, until=2 * HOUR_S))
    recoveries = [(t, p.recovery) for t, p in steps if p.recovery]
    assert [r for _, r in recoveries] == [Recovery.REQUERY, Recovery.RADIO_CYCLE, Recovery.REBOOT, Recovery.POWER_CYCLE]
    capped = next(p for _, p in steps if p.health == "capped")
    assert [(a.kind, a.state) for a in capped.alarms] == [("modem-down", "raised")]
    assert "cap of 2 resets per hour" in capped.alarms[0].detail
    (cfun_at, _), (reboot_at, _), (power_at, _) = recoveries[1:]
    assert power_at - cfun_at >= HOUR_S  # the third reset waited until the first one left the hour
    # raised once, never again while the ladder finishes and the monitor gives up
    assert sum(len(p.alarms) for _, p in steps) == 1


def test_a_network_that_refuses_gets_status_and_an_alarm_and_only_rare_reattaches_over_a_simulated_week():
    policy = RecoveryPolicy(CONFIG, has_power_line=True)
    steps = list(run_probes(policy, lambda t: DENIED, until=7 * 24 * HOUR_S))
    assert all(p.health == "refused" and p.next_probe_s == 60 for _, p in steps)  # status every interval
    resets = [t for t, p in steps if p.recovery]
    assert {p.recovery for _, p in steps if p.recovery} == {Recovery.RADIO_CYCLE}  # never a reboot or power cycle
    assert resets_per_sliding_hour(resets) <= 1
    assert len(resets) <= 6 + 4 * 6  # first day 6 (30 min, doubling), then one every 6 h
    assert all(b - a >= 1800 for a, b in zip(resets, resets[1:]))
    alarms = [(t, a.kind, a.state) for t, p in steps for a in p.alarms]
    assert alarms == [(600, "registration", "raised")]
    healed = policy.observe(OK, steps[-1][0] + 60)
    assert [(a.kind, a.state) for a in healed.alarms] == [("registration", "cleared")]


def test_refusing_network_with_reattach_disabled_never_touches_the_modem():
    policy = RecoveryPolicy(ModemHealthConfig(refused_reattach_s=0), has_power_line=True)
    assert not any(p.recovery for _, p in run_probes(policy, lambda t: DENIED, until=24 * HOUR_S))


observations = st.sampled_from([OK, DENIED, SICK, GONE])


@settings(max_examples=400)
@given(st.lists(st.tuples(observations, st.floats(0.0, 1200.0)), min_size=1, max_size=300),
       st.integers(1, 5), st.booleans())
def test_whatever_modem_and_network_do_resets_never_exceed_the_cap_in_any_hour(script, cap, power):
    policy = RecoveryPolicy(ModemHealthConfig(max_resets_per_hour=cap, backoff_s=5, refused_reattach_s=60),
                            has_power_line=power)
    now, resets, raised = 0.0, [], {}
    previous = None
    for observation, gap in script:
        plan = policy.observe(observation, now)
        if plan.recovery is not None and plan.recovery.is_reset:
            resets.append(now)
            if plan.recovery in (Recovery.REBOOT, Recovery.POWER_CYCLE):
                assert observation.outcome is Outcome.SICK  # a modem that answers is never rebooted
            if plan.recovery is Recovery.REBOOT:
                assert observation.port_present
        if observation.outcome is Outcome.REFUSED:
            assert plan.recovery in (None, Recovery.RADIO_CYCLE)
        for alarm in plan.alarms:  # latched: raised, cleared, raised … per kind
            assert alarm.state == ("cleared" if raised.get(alarm.kind) else "raised")
            raised[alarm.kind] = alarm.state == "raised"
        assert plan.next_probe_s > 0
        previous = observation
        now += gap
    assert resets_per_sliding_hour(resets) <= cap
    assert previous is not None


def test_config_errors_name_the_key_and_are_agent_errors():
    with pytest.raises(ModemHealthConfigError, match="max_resets_per_hour") as caught:
        ModemHealthConfig(max_resets_per_hour=0)
    assert isinstance(caught.value, AgentError) and isinstance(caught.value, ValueError)
    with pytest.raises(ModemHealthConfigError, match="model 'quectel-x'"):
        ModemHealthConfig(model="quectel-x")
    with pytest.raises(ModemHealthConfigError, match="status_interval_s"):
        ModemHealthConfig(status_interval_s=0)
    with pytest.raises(ModemHealthConfigError, match="power_pin"):
        ModemHealthConfig(power_pin=5, power_off_s=0.01)
    assert ModemHealthConfig(power_pin=5).power_line().pin == 5
