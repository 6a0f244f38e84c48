"""The daemon feeds every sample to the rules and records what they emit as signed alarm envelopes, across restarts."""
import asyncio
import time

from gpiozero.pins.mock import MockFactory

from agent.assets import Asset
from agent.clock import TrustedClock
from agent.rules import SensorSpec
from drivers.gpio import ContactConfig, ContactSensor
from telemetry.chain import check_chain
from tests.kit.agent import build_agent, running, signed_envelopes

STORE = Asset("cold-store", "stock", ("door",))  # no access hours: every opening is an alarm


def run_agent(tmp_path, factory, action):
    door = ContactSensor(ContactConfig("door", 17, settle_s=0.01, interval_s=30), pin_factory=factory)
    agent = build_agent(tmp_path, sensors=[door], assets=[STORE], specs=[SensorSpec("door", "contact", 30)], rule_tick=0.05)

    async def scenario():
        await asyncio.sleep(0.1)
        action()
        await asyncio.sleep(0.3)

    asyncio.run(running(agent, scenario))
    door.close()
    agent.state.close()
    return agent


def alarm_states(found):
    return [(r.name, r.string) for e in found for r in e.records if r.name == "alarm.door.cold-store"]


def test_a_door_opening_becomes_a_signed_alarm_envelope_and_stays_latched_across_a_restart(tmp_path):
    factory = MockFactory()
    factory.pin(17).drive_low()  # closed
    time.sleep(0.05)
    agent = run_agent(tmp_path, factory, lambda: factory.pin(17).drive_high())
    found = signed_envelopes(agent)
    assert check_chain(found).intact
    assert alarm_states(found) == [("alarm.door.cold-store", "raised")]
    (alarm,) = [e for e in found if any(r.name == "alarm.door.cold-store" for r in e.records)]
    assert alarm.alarm and alarm.clock[1] is True and alarm.clock[2] == "ntp"
    opened = [e for e in found if any(r.name == "door" and r.boolean for r in e.records)]
    assert opened and opened[0].seq < alarm.seq  # the evidence comes before the alarm in the chain
    manifest = [r for e in found for r in e.records if r.name.startswith("asset.")]
    assert [(r.name, r.string) for r in manifest] == [("asset.cold-store.kind", "stock"), ("asset.cold-store.sensors", "door")]
    assert agent.spool.stats().alarm_count >= 1
    agent.spool.close()

    # the agent restarts with the door still open: not raised again; closing it clears once
    agent = run_agent(tmp_path, factory, lambda: factory.pin(17).drive_low())
    assert alarm_states(signed_envelopes(agent)) == [("alarm.door.cold-store", "raised"), ("alarm.door.cold-store", "cleared")]
    assert agent.rules.raised == frozenset()
    agent.spool.close()


def test_hours_without_a_lender_ack_raise_connectivity_and_the_uplinks_next_delivered_batch_clears_it(tmp_path):
    """The daemon watches the uplink's last exchange: only a batch the lender acked counts as contact."""
    from agent.uplink import Exchange, Result

    mono = [0.0]
    clock = TrustedClock(kernel_synced=lambda: True, monotonic=lambda: mono[0], wall=lambda: 1_767_571_200 + mono[0])
    agent = build_agent(tmp_path, lender="coap://127.0.0.1:9", assets=[], trusted_clock=clock, rule_tick=0.01,
                        recording=True)  # the uplink is never started: no traffic
    uplink, rules = agent.uplink, agent.rules

    async def scenario():
        ticking = asyncio.create_task(agent._rules_tick())
        await asyncio.sleep(0.05)
        mono[0] = 7 * 3600.0  # seven hours later, nothing acked
        uplink.last_exchange = Exchange(Result.FAILED, (1,), detail="no answer")
        await asyncio.sleep(0.05)
        assert rules.raised == {"alarm.connectivity.gateway"}
        uplink.last_exchange = Exchange(Result.FAILED, (1,), detail="no answer")  # another failure: still cut off
        await asyncio.sleep(0.05)
        assert rules.raised == {"alarm.connectivity.gateway"}
        uplink.last_exchange = Exchange(Result.DELIVERED, (1,), deleted=1)
        await asyncio.sleep(0.05)
        ticking.cancel()

    asyncio.run(scenario())
    states = [(r.name, r.string) for e in signed_envelopes(agent) for r in e.records if r.name == "alarm.connectivity.gateway"]
    assert states == [("alarm.connectivity.gateway", "raised"), ("alarm.connectivity.gateway", "cleared")]
    assert rules.raised == frozenset()
    agent.spool.close()
    agent.state.close()


def test_the_modem_health_monitors_entry_point_turns_a_swapped_sim_into_a_signed_alarm(tmp_path):
    agent = build_agent(tmp_path, assets=[], recording=True)
    rules_file = agent.rules_state
    agent.modem_identity(imei="356938035643809", iccid="8944500102198304826")
    assert rules_file.load()["modem"]["iccid"] == "8944500102198304826"  # enrolled on disk at once
    agent.modem_identity(imei="356938035643809", iccid="8949226000001234567")
    sim = [e for e in signed_envelopes(agent) if any(r.name == "alarm.sim.gateway" for r in e.records)]
    assert len(sim) == 1 and sim[0].alarm
    assert rules_file.load()["modem"] == {"imei": "356938035643809", "iccid": "8944500102198304826"}
    agent.spool.close()
    agent.state.close()
