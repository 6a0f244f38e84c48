"""The lender's commands to a running gateway over real CoAP with OSCORE: an inspection within 2 s, a permit,
configurations applied live and refused, and agent.toml differing from the lender's configuration reported."""
import asyncio
import time

from gpiozero.pins.mock import MockFactory

from agent.assets import Asset
from agent.commands import CommandInbox, rules_validator
from agent.rules import SensorSpec
from drivers.gpio import ContactConfig, ContactSensor
from drivers.onewire import DS18B20, DS18B20Config
from hil.sim.onewire import OneWireTree
from lender.enrollment import registration
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.risks import Judge, device_risks
from lender.evidence.store import SQLiteStore
from telemetry.command import LOCAL_RULES, Configure, Permit, config_digest, configuration_rules_digest, inspection_nonce
from telemetry.envelope import decode
from telemetry.manifest import RULES, rules_digest
from tests.kit.agent import DEVICE, IDENTITY, QUICK_UPLINK, build_agent, running, stored_at_lender
from tests.kit.lender import LenderThread


def _registered(tmp_path, **asset) -> tuple:
    """The lender's data directory with DEVICE registered (OSCORE), and the agent's empty home."""
    data, home = tmp_path / "lender", tmp_path / "agent"
    home.mkdir()
    with SQLiteStore.open(data) as store:
        registration.register(store, data, DEVICE, IDENTITY.public_key, with_oscore=True, **asset)
    return data, home


def _shut_door() -> tuple:
    """A door contact on a mock pin, shut and settled: (the pin factory, the sensor)."""
    factory = MockFactory()
    door = ContactSensor(ContactConfig("door", 17, settle_s=0.01, interval_s=60), pin_factory=factory)
    factory.pin(17).drive_low()  # shut
    time.sleep(0.05)
    return factory, door


def test_a_gateway_answers_an_inspection_over_oscore_within_two_seconds(tmp_path):
    data, home = _registered(tmp_path)
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    temp = DS18B20(DS18B20Config("temp", probe.device_id, base_dir=tree.devices_dir, interval_s=3600))
    with LenderThread(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time)
        agent = build_agent(home, sensors=[temp], lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1)

        async def inspect():
            await asyncio.sleep(0.3)
            probe.set_celsius(6.25)
            with SQLiteStore.open(data) as store:
                desk = CommandDesk(store, lender_identity(data))
                issued = desk.inspect(DEVICE, "staff-li")
                while (answer := desk.snapshot(issued)) is None and time.time() - issued.issued_at < 10:
                    await asyncio.sleep(0.02)
                assert answer is not None, "no snapshot within 10 s"
                return issued, answer, time.time() - issued.issued_at, store.envelope(DEVICE, answer.seq)

        issued, answer, elapsed, stored = asyncio.run(running(agent, inspect))
    assert answer.outcome == "applied" and elapsed < 2.0, elapsed
    snapshot = decode(stored.raw)
    assert inspection_nonce(snapshot.records) == issued.nonce
    assert ("temp", 6.25) in [(r.name, r.value) for r in snapshot.records]
    assert inbox.last_seq == issued.seq


def test_a_permit_from_the_lender_turns_a_door_opening_into_an_event_and_after_its_window_an_alarm(tmp_path):
    data, home = _registered(tmp_path, asset="cold-store")
    factory, door = _shut_door()
    store_asset = Asset("cold-store", "stock", ("door",))  # no access hours: every opening is an alarm
    with LenderThread(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time)
        agent = build_agent(home, sensors=[door], assets=[store_asset], specs=[SensorSpec("door", "contact", 60)],
                            lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1)
        agent.rules.permits = inbox.permitted

        async def release_of_goods():
            now = int(time.time())
            with SQLiteStore.open(data) as store:
                CommandDesk(store, lender_identity(data)).issue(
                    DEVICE, Permit("cold-store", now - 1, now + 3, "release of goods, C-17"), "staff-li")
            while not inbox.permits:
                await asyncio.sleep(0.05)
            factory.pin(17).drive_high()   # opened inside the window
            await asyncio.sleep(0.3)
            factory.pin(17).drive_low()
            await asyncio.sleep(max(0.0, now + 3.2 - time.time()))
            factory.pin(17).drive_high()   # opened after it
            await asyncio.sleep(0.3)
            factory.pin(17).drive_low()
            deadline = time.time() + 10
            while time.time() < deadline:
                names = {r.name: r.string for e in stored_at_lender(data) for r in e.records if r.string}
                if "alarm.door.cold-store" in names and "command.permit.asset" in names:
                    break
                await asyncio.sleep(0.1)

        asyncio.run(running(agent, release_of_goods, timeout=30))
    states = [(r.name, r.string) for e in stored_at_lender(data) for r in e.records
              if r.name in ("event.door.cold-store", "alarm.door.cold-store")]
    assert states[:2] == [("event.door.cold-store", "opened"), ("event.door.cold-store", "closed")], states
    assert ("alarm.door.cold-store", "raised") in states[2:], states


def test_a_configuration_is_applied_and_reported_and_a_bad_one_refused_with_its_errors_keeping_the_old(tmp_path):
    data, home = _registered(tmp_path)
    good = b'[rules]\n\n[[assets]]\nname = "yard"\nkind = "stock"\nsensors = ["door"]\n'
    bad = b'[rules]\n\n[[assets]]\nname = "yard"\nkind = "stock"\nsensors = ["no-such-sensor"]\n'
    with LenderThread(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time,
                             validate=rules_validator({"door": "contact"}))
        agent = build_agent(home, lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1)

        async def configure():
            with SQLiteStore.open(data) as store:
                desk = CommandDesk(store, lender_identity(data))
                issued = [desk.issue(DEVICE, Configure(1, good), "staff-li"),
                          desk.issue(DEVICE, Configure(2, bad), "staff-li")]
                deadline = time.time() + 10
                while time.time() < deadline and any(desk.snapshot(c) is None for c in issued):
                    await asyncio.sleep(0.05)
                return [desk.snapshot(c) for c in issued]

        applied, refused = asyncio.run(running(agent, configure))
    assert applied.outcome == "applied" and refused.outcome == "refused"
    assert "no-such-sensor" in refused.detail
    assert inbox.config == good and inbox.last_seq == 2
    config_records = [r.data for e in stored_at_lender(data) for r in e.records if r.name == "command.config"]
    assert config_records[0] == config_digest(good)


def test_a_configuration_is_put_in_force_live_and_agent_toml_differing_from_it_is_a_mismatch_at_the_lender(tmp_path):
    data, home = _registered(tmp_path, asset="cold-store")
    factory, door = _shut_door()
    local = rules_digest([{"name": "cold-store", "kind": "stock", "sensors": ["door"]}], {})  # agent.toml's tables
    document = b'[rules]\n\n[[assets]]\nname = "yard"\nkind = "stock"\nsensors = ["door"]\n'
    with LenderThread(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time,
                             validate=rules_validator({"door": "contact"}))
        agent = build_agent(home, sensors=[door], assets=[Asset("cold-store", "stock", ("door",))],
                            specs=[SensorSpec("door", "contact", 60)], lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1, rules_digest=local, local_rules_digest=local)

        async def reconfigure():
            with SQLiteStore.open(data) as store:
                CommandDesk(store, lender_identity(data)).issue(DEVICE, Configure(1, document), "staff-li")
            while inbox.config is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            factory.pin(17).drive_high()   # opened under the new rules, without a restart
            await asyncio.sleep(0.3)
            factory.pin(17).drive_low()
            deadline = time.time() + 10
            while time.time() < deadline:
                names = {r.name for e in stored_at_lender(data) for r in e.records}
                if {"alarm.door.yard", LOCAL_RULES} <= names:
                    break
                await asyncio.sleep(0.1)

        asyncio.run(running(agent, reconfigure, timeout=30))
    records = [r for e in stored_at_lender(data) for r in e.records]
    assert ("alarm.door.yard", "raised") in [(r.name, r.string) for r in records]
    assert "alarm.door.cold-store" not in {r.name for r in records}
    declared = [r.string for r in records if r.name == RULES]
    assert declared == [local, configuration_rules_digest(document)]  # at start, then once the lender's is in force
    assert [r.string for r in records if r.name == LOCAL_RULES] == [local]
    with SQLiteStore.open(data) as store:
        risks = [r.detail for r in device_risks(store, DEVICE, Judge(now=time.time())) if r.kind == "rules"]
    assert len(risks) == 1 and "agent.toml at the site has rules" in risks[0] and local in risks[0], risks
