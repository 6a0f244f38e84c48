"""Hot-plug: udev's remove and add for the modem's AT port (real pyudev.Device events through drivers.hotplug)
make the agent close and reopen the port under its stable symlink, while every other sensor keeps reporting;
a different modem or SIM behind the same port raises the tamper alarm of the edge rules."""
from __future__ import annotations

import asyncio

from gpiozero.pins.mock import MockFactory

from agent.health import ModemHealthConfig, ModemHealthMonitor
from drivers.gpio import ContactConfig, ContactSensor, RunHoursConfig, RunHoursMeter
from drivers.hotplug import ModemPortWatcher
from hil.sim.modem import ModemSimulator
from tests.kit.agent import build_agent, running, signed_envelopes
from tests.kit.health import UdevFeed, VirtualClock, udev_event, values, wait_until

OTHER_IMEI = "359225051234565"  # a valid Luhn check digit: another modem's IMEI
OTHER_ICCID = "89490200001234567894"


def hotplug_monitor(port: str, feed: UdevFeed, **settings) -> ModemHealthMonitor:
    config = ModemHealthConfig(port=port, status_interval_s=600, command_timeout_s=1.0, boot_s=5.0,
                               port_return_s=5.0, **settings)
    return ModemHealthMonitor.build(config, watcher=ModemPortWatcher(monitor=feed))


def test_a_remove_and_an_add_close_and_reopen_the_port_and_no_reading_of_the_other_sensors_is_lost(tmp_path):
    factory = MockFactory()
    door = ContactSensor(ContactConfig("door", 17, settle_s=0.005, interval_s=600), pin_factory=factory)
    press = RunHoursMeter(RunHoursConfig("press", 22, settle_s=0.005, interval_s=0.1), pin_factory=factory)
    factory.pin(22).drive_high()  # the press runs all along
    initial = door.is_open  # what the start poll reports
    feed = UdevFeed()
    toggles: list[bool] = []
    seen: dict[str, object] = {}

    async def toggle_door(times: int) -> None:
        for _ in range(times):
            opened = not (toggles[-1] if toggles else initial)
            (factory.pin(17).drive_high if opened else factory.pin(17).drive_low)()
            toggles.append(opened)
            await asyncio.sleep(0.06)

    with ModemSimulator("rm520n", link=tmp_path / "modem-at") as sim:
        monitor = hotplug_monitor(sim.path, feed)
        agent = build_agent(tmp_path, sensors=[door, press], assets=[], modem_health=monitor, rule_tick=0.05)

        async def scenario() -> None:
            await wait_until(lambda: monitor.probes == 1, what="the first modem status")
            assert monitor.link.is_open and sim.attached
            # the modem falls off the USB bus: udev reports the AT port removed (properties from its database)
            feed.emit(udev_event("remove", "/dev/ttyUSB2"))
            await wait_until(lambda: not sim.attached, 5, "the agent closing the port")
            assert not monitor.link.is_open and monitor.probes == 1
            seen["closed_at"] = asyncio.get_running_loop().time()
            sim.reboot(down_s=0.4)  # gone for a while, back under the same symlink
            await toggle_door(4)
            await wait_until(lambda: sim.pty_path is not None, 5, "the simulated modem coming back")
            feed.emit(udev_event("add", "/dev/ttyUSB5"))  # re-enumerated under another number
            await toggle_door(4)
            await wait_until(lambda: monitor.probes == 2, 8, "a status probe after the add")
            seen["reopened_after_s"] = asyncio.get_running_loop().time() - seen["closed_at"]
            await toggle_door(2)
            await asyncio.sleep(0.2)

        try:
            asyncio.run(running(agent, scenario))
        finally:
            feed.close()
            door.close()
            press.close()
        opens, events = monitor.link.opens, list(monitor.hotplug_events)

    assert events == ["remove", "add"]
    assert opens == 2  # closed on remove, reopened on add, by path: the stable symlink
    assert seen["reopened_after_s"] < 8  # the add woke the monitor; its next scheduled probe was 600 s away
    envelopes = signed_envelopes(agent)
    assert values(envelopes, "modem.registration") == ["home", "home"]
    assert values(envelopes, "door") == [initial, *toggles]  # the start poll, then every push, in order
    times = [r.time for e in envelopes for r in e.records if r.name == "press"]
    run_seconds = values(envelopes, "press")
    assert len(times) >= 15 and max(b - a for a, b in zip(times, times[1:])) < 1.0  # polled straight through
    assert run_seconds == sorted(run_seconds)
    assert not any(r.name.startswith("fault.") for e in envelopes for r in e.records)
    agent.spool.close()


def test_another_modem_behind_the_same_port_raises_the_modem_tamper_alarm(tmp_path):
    feed = UdevFeed()
    link = tmp_path / "modem-at"
    with ModemSimulator("rm520n", link=link) as first:
        monitor = hotplug_monitor(str(link), feed)
        agent = build_agent(tmp_path, assets=[], modem_health=monitor, rule_tick=0.05)
        second = ModemSimulator("rm520n", link=link, imei=OTHER_IMEI)

        async def scenario() -> None:
            await wait_until(lambda: monitor.probes == 1, what="the first modem status")
            feed.emit(udev_event("remove", "/dev/ttyUSB2"))
            await wait_until(lambda: not first.attached, 5, "the agent closing the port")
            await asyncio.to_thread(first.stop)
            await second.astart()  # someone swapped the modem
            feed.emit(udev_event("add", "/dev/ttyUSB2"))
            await wait_until(lambda: monitor.probes == 2, 8, "a status probe after the add")

        try:
            asyncio.run(running(agent, scenario))
        finally:
            second.stop()
            feed.close()

    envelopes = signed_envelopes(agent)
    assert values(envelopes, "modem.imei") == ["867698040123450", OTHER_IMEI]
    assert values(envelopes, "alarm.modem.gateway") == ["raised"]
    detail = values(envelopes, "alarm.modem.gateway.detail")[0]
    assert "867698040123450" in detail and OTHER_IMEI in detail
    alarm = next(e for e in envelopes if "alarm.modem.gateway" in {r.name for r in e.records})
    assert alarm.alarm
    agent.spool.close()


def test_a_sim_swap_is_probed_at_once_and_raises_the_sim_tamper_alarm(tmp_path):
    clock = VirtualClock()
    with ModemSimulator("ec25", link=tmp_path / "modem-at") as sim:
        config = ModemHealthConfig(port=sim.path, status_interval_s=600, command_timeout_s=1.0, hotplug=False)
        monitor = ModemHealthMonitor.build(config, clock=clock, wall=clock.wall, sleep=clock.sleep)
        agent = build_agent(tmp_path, assets=[], modem_health=monitor, rule_tick=0.05)
        seen = {}

        enrolled = sim.state.iccid

        async def scenario() -> None:
            await clock.parked()
            first = clock.now
            sim.swap_sim(OTHER_ICCID, "262011234567890")  # +CPIN: NOT READY ... +CPIN: READY
            await wait_until(lambda: clock.next_deadline() == first + 10, 5, "the SIM URC waking the monitor")
            seen["probed_at"] = await clock.next_wakeup() - first

        asyncio.run(running(agent, scenario))

    assert seen["probed_at"] == 10  # URC_PROBE_GAP_S after the last probe, not the 600 s interval
    envelopes = signed_envelopes(agent)
    assert values(envelopes, "modem.iccid") == [enrolled, OTHER_ICCID]
    assert values(envelopes, "alarm.sim.gateway") == ["raised"]
    assert values(envelopes, "alarm.sim.gateway.severity") == ["critical"]
    agent.spool.close()


def test_an_add_for_a_port_already_open_again_does_not_cut_the_backoff_short(tmp_path):
    """After its own reset the monitor has reopened the port itself; udev's add that follows is no reason to probe."""
    clock = VirtualClock()
    feed = UdevFeed()
    with ModemSimulator("rm520n", link=tmp_path / "modem-at") as sim:
        config = ModemHealthConfig(port=sim.path, status_interval_s=600, command_timeout_s=1.0)
        monitor = ModemHealthMonitor.build(config, watcher=ModemPortWatcher(monitor=feed), clock=clock,
                                           wall=clock.wall, sleep=clock.sleep)
        recorded: list = []

        async def body():
            task = asyncio.create_task(monitor.run(recorded.append))
            try:
                await clock.parked()
                feed.emit(udev_event("add", "/dev/ttyUSB2"))
                await wait_until(lambda: monitor.hotplug_events == ["add"], 5, "the add event")
                await asyncio.sleep(0.1)
                await clock.parked()
                return clock.next_deadline(), monitor.probes
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        try:
            deadline, probes = asyncio.run(body())
        finally:
            feed.close()
    assert (deadline, probes) == (600, 1)
