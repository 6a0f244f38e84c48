"""The health monitor inside the agent, against a simulated RM520N on a real pseudo-terminal, on a virtual clock.

A modem that stops answering is taken up the ladder in order, with backoff,
up to the hourly cap, then left alone with an alarm raised, and its status
telemetry resumes as soon as it answers again. A network that refuses the
modem (wrong APN: registration denied) gets status and an alarm for a whole
simulated day, never more resets per hour than the cap, and never a reboot.
"""
from __future__ import annotations

import asyncio

import pytest
from gpiozero.pins.mock import MockFactory

from agent.health import HOUR_S, ModemHealthConfig, ModemHealthMonitor, Recovery
from hil.sim.modem import ModemSimulator
from tests.kit.agent import build_agent, running, signed_envelopes, synced_clock
from tests.kit.health import VirtualClock, values

POWER_PIN = 5


def monitor_for(sim: ModemSimulator, clock: VirtualClock, factory: MockFactory | None, **settings) -> ModemHealthMonitor:
    config = ModemHealthConfig(**{
        "port": sim.path, "status_interval_s": 300, "command_timeout_s": 0.3, "cfun_timeout_s": 0.3,
        "backoff_s": 30, "max_resets_per_hour": 3, "slow_probe_s": 900, "port_return_s": 3.0, "boot_s": 0.3,
        "hotplug": False, "power_pin": POWER_PIN if factory else None, "power_off_s": 0.1, **settings})
    return ModemHealthMonitor.build(config, pin_factory=factory, clock=clock, wall=clock.wall, sleep=clock.sleep)


def test_a_modem_that_stops_answering_climbs_the_ladder_stops_at_the_cap_with_an_alarm_and_recovers(tmp_path):
    factory = MockFactory()
    clock = VirtualClock()
    with ModemSimulator("rm520n", link=tmp_path / "modem") as sim:
        monitor = monitor_for(sim, clock, factory)
        agent = build_agent(tmp_path, trusted_clock=synced_clock(), modem_health=monitor, rule_tick=0.05)
        pin = factory.pin(POWER_PIN)
        seen: dict[str, object] = {}

        async def scenario() -> None:
            await clock.parked()
            assert monitor.last_plan.health == "ok" and monitor.probes == 1
            sim.clear_received()
            pin.clear_states()
            sim.knobs.no_answer = True
            # ... except to the reset: it reboots (port gone, back under the same symlink, boot URCs) still hung
            sim.knobs.applies_to = r"^(?!AT\+CFUN=1,1$)"
            seen["fault_at"] = clock.now
            for _ in range(10):
                await clock.next_wakeup()
                if monitor.policy.gave_up:
                    break
            assert monitor.policy.gave_up, f"no give-up after {monitor.actions}"
            seen["gave_up_at"] = clock.now
            seen["commands_at_give_up"] = len(sim.commands())
            for _ in range(3):  # slow probes: the modem is left alone
                await clock.next_wakeup()
            seen["slow_probes"] = [t for t in (clock.now,)]
            seen["late_commands"] = sim.commands()[seen["commands_at_give_up"]:]
            sim.knobs.reset()
            await clock.next_wakeup()
            seen["healed_plan"] = monitor.last_plan

        asyncio.run(running(agent, scenario))
        commands = sim.commands()
        reboots = sim.reboots
        monitor.close()

    # the ladder, in order, with growing waits between its rungs
    assert [r for _, r in monitor.actions] == [Recovery.REQUERY, Recovery.RADIO_CYCLE, Recovery.REBOOT,
                                               Recovery.POWER_CYCLE]
    times = [t for t, _ in monitor.actions]
    assert times[0] == seen["fault_at"] + 300  # the first failed probe is the next scheduled one
    assert [b - a for a, b in zip(times, times[1:])] == [30, 60, 120]
    # ... performed on the wire: CFUN=0 then 1, then the reset, then the power line low and high again
    cfun = [c for c in commands if c.upper().startswith("AT+CFUN")]
    assert cfun[:3] == ["AT+CFUN=0", "AT+CFUN=1", "AT+CFUN=1,1"]
    assert reboots == 1  # the modem took the reset; its boot URCs did not shorten the wait before the next rung
    assert [s.state for s in pin.states][-2:] == [False, True]
    assert monitor.policy.resets_in_last_hour(times[-1]) == 3  # the cap
    # after giving up: only probes, spaced slowly, no reset of any kind
    assert not any(c.upper().startswith("AT+CFUN") for c in seen["late_commands"])
    assert set(seen["late_commands"]) <= {"AT", "ATI", "AT+CGMI", "AT+CGMM"}
    assert seen["gave_up_at"] == times[-1] + 240
    assert seen["healed_plan"].health == "ok"

    envelopes = signed_envelopes(agent)
    assert values(envelopes, "alarm.modem-down.gateway") == ["raised", "cleared"]
    raised = next(e for e in envelopes if "raised" in values([e], "alarm.modem-down.gateway"))
    cleared = next(e for e in envelopes if "cleared" in values([e], "alarm.modem-down.gateway"))
    assert raised.alarm and cleared.alarm and values([raised], "alarm.modem-down.gateway.severity") == ["major"]
    assert values(envelopes, "modem.recovery") == ["requery", "cfun-cycle", "reboot", "power-cycle"]
    assert values(envelopes, "modem.health") == ["ok", "recovering", "recovering", "recovering", "recovering",
                                                 "down", "down", "down", "down", "ok"]
    # status telemetry resumes with the answer: the full status, signed, after the clear
    after = [e for e in envelopes if e.seq > raised.seq and "modem.registration" in {r.name for r in e.records}]
    assert after and values(after, "modem.registration") == ["home"]
    rsrp = next(r for r in after[0].records if r.name == "modem.rsrp")
    assert rsrp.unit == "dBm" and rsrp.value == pytest.approx(-88.0)  # the simulator's NR5G-SA serving cell
    agent.spool.close()


def test_a_wrong_apn_day_gets_status_every_interval_an_alarm_and_no_more_resets_per_hour_than_the_cap(tmp_path):
    clock = VirtualClock()
    day = 24 * HOUR_S
    with ModemSimulator("rm520n", link=tmp_path / "modem") as sim:
        sim.lose_registration(stat=3)  # attach rejected: the modem answers every command, registration denied
        # the modem answers everything here: real-time answer timeouts far above a loaded machine's scheduling
        # delays (0.3 s once made a late answer look like a silent modem: a requery the day never had)
        monitor = monitor_for(sim, clock, MockFactory(), status_interval_s=120, max_resets_per_hour=2,
                              command_timeout_s=5.0, cfun_timeout_s=5.0)
        agent = build_agent(tmp_path, assets=[], modem_health=monitor, rule_tick=0.05)

        async def scenario() -> None:
            await clock.parked()
            while clock.now < day:
                await clock.next_wakeup()
            sim.regain_registration()  # the APN is fixed
            await clock.next_wakeup()

        asyncio.run(running(agent, scenario))
        commands = sim.commands()
        reboots = sim.reboots
        monitor.close()

    resets = [t for t, r in monitor.actions if r.is_reset]
    assert {r for _, r in monitor.actions} == {Recovery.RADIO_CYCLE}  # a modem that answers is never rebooted
    assert reboots == 0 and "AT+CFUN=1,1" not in commands
    assert commands.count("AT+CFUN=0") == len(resets)  # what the monitor decided is what the modem got
    worst_hour = max(sum(1 for u in resets if t <= u < t + HOUR_S) for t in resets)
    assert worst_hour <= 2
    assert 3 <= len(resets) <= 8  # a few re-attaches over the day, spaced further and further apart

    envelopes = signed_envelopes(agent)
    registration = values(envelopes, "modem.registration")
    assert len(registration) == monitor.probes >= day / 120  # status every interval, all day
    assert registration[:-1] == ["denied"] * (len(registration) - 1) and registration[-1] == "home"
    assert values(envelopes, "alarm.registration.gateway") == ["raised", "cleared"]
    assert values(envelopes, "modem.iccid")[0] == "89012601234567890126"
    agent.spool.close()
