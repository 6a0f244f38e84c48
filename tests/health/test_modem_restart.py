"""Across agent restarts: an alarm raised before is cleared after, and resets made before still count against the cap."""
from __future__ import annotations

import asyncio

from agent.health import HealthStateFile, ModemHealthConfig, ModemHealthMonitor, Recovery
from tests.kit.health import VirtualClock
from hil.sim.modem import ModemSimulator


def run_monitor(monitor: ModemHealthMonitor, clock: VirtualClock, probes: int) -> list:
    recorded: list = []

    async def body():
        task = asyncio.create_task(monitor.run(recorded.append))
        try:
            await clock.parked()
            for _ in range(probes - 1):
                await clock.next_wakeup()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(body())
    return [(r.name, r.string) for batch in recorded for r in batch if r.name.startswith("alarm.")
            and r.name.count(".") == 2]


def test_a_restarted_agent_clears_the_alarm_it_raised_and_keeps_counting_resets_against_the_cap(tmp_path):
    clock = VirtualClock()
    config = dict(status_interval_s=60, command_timeout_s=0.5, hotplug=False, refused_alarm_after_s=0,
                  refused_reattach_s=60, max_resets_per_hour=1)
    with ModemSimulator("ec25", link=tmp_path / "at") as sim:
        sim.lose_registration(stat=3)
        first = ModemHealthMonitor.build(ModemHealthConfig(port=sim.path, **config), state_dir=tmp_path,
                                         clock=clock, wall=clock.wall, sleep=clock.sleep)
        assert run_monitor(first, clock, probes=3) == [("alarm.registration.gateway", "raised")]
        assert [r for _, r in first.actions] == [Recovery.RADIO_CYCLE]  # re-attached once: the cap of 1 is used
        reattached = sim.commands().count("AT+CFUN=0")

        # the agent restarts (same host boot) with the network still refusing: no second re-attach within the hour
        second = ModemHealthMonitor.build(ModemHealthConfig(port=sim.path, **config), state_dir=tmp_path,
                                          clock=clock, wall=clock.wall, sleep=clock.sleep)
        assert run_monitor(second, clock, probes=20) == []  # not raised twice either
        assert second.actions == [] and sim.commands().count("AT+CFUN=0") == reattached

        # restarted again once the APN is fixed: the alarm raised two runs ago is cleared
        sim.regain_registration()
        third = ModemHealthMonitor.build(ModemHealthConfig(port=sim.path, **config), state_dir=tmp_path,
                                         clock=clock, wall=clock.wall, sleep=clock.sleep)
        assert run_monitor(third, clock, probes=1) == [("alarm.registration.gateway", "cleared")]


def test_resets_from_another_boot_of_the_host_do_not_count_but_its_raised_alarms_do(tmp_path, monkeypatch):
    state = HealthStateFile(tmp_path / "modem-health.json")
    state.save({"raised": ["modem-down"], "resets": [100.0, 200.0]})
    assert HealthStateFile(tmp_path / "modem-health.json").load()["resets"] == [100.0, 200.0]
    monkeypatch.setattr(HealthStateFile, "boot_id", staticmethod(lambda: "a-later-boot"))
    loaded = HealthStateFile(tmp_path / "modem-health.json").load()
    assert loaded["raised"] == ["modem-down"] and loaded["resets"] == []


def test_a_damaged_state_file_is_ignored_not_fatal(tmp_path):
    (tmp_path / "modem-health.json").write_text("{not json")
    assert HealthStateFile(tmp_path / "modem-health.json").load() == {}
