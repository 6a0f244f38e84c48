"""What one probe finds, per simulated model through a real pty: the status records, and sick vs refused vs healthy."""
from __future__ import annotations

import asyncio

import pytest

from agent.health import ModemHealthConfig, ModemHealthMonitor, Outcome
from hil.sim.modem import ModemSimulator
from telemetry.senml import pack_to_cbor, records_from_cbor

MODELS = ["rm500q", "rm520n", "ec25", "sim7600", "sim8200"]


def monitor_for(path: str, **settings) -> ModemHealthMonitor:
    config = ModemHealthConfig(**{"port": path, "command_timeout_s": 0.5, "boot_s": 0.5, "hotplug": False, **settings})
    return ModemHealthMonitor.build(config)


async def observe(monitor: ModemHealthMonitor):
    try:
        return await monitor._observe()
    finally:
        await monitor.link.close()


@pytest.mark.parametrize("model", MODELS)
def test_status_records_carry_registration_rat_signal_cell_operator_and_iccid_in_registry_units(tmp_path, model):
    with ModemSimulator(model, link=tmp_path / "at") as sim:
        observation, status = asyncio.run(observe(monitor_for(sim.path)))
        state = sim.state
    assert observation.outcome is Outcome.HEALTHY
    records = {r.name: r for r in records_from_cbor(pack_to_cbor(status.records(1_767_571_200.0)))}  # wire round trip
    assert records["modem.registration"].string == "home"
    assert records["modem.iccid"].string == state.iccid and records["modem.imei"].string == state.imei
    assert records["modem.operator"].string == state.operator_long
    nr_sa = state.rat == "NR5G-SA"
    assert records["modem.rat"].string == state.rat
    assert records["modem.rsrp"].unit == "dBm"
    assert records["modem.rsrp"].value == pytest.approx(state.nr_rsrp if nr_sa else state.rsrp)
    assert records["modem.rsrq"].unit == "dB"
    assert records["modem.cell"].string == f"{state.nr_cell_id if nr_sa else state.cell_id:X}"
    assert records["modem.plmn"].string == state.mcc + state.mnc


@pytest.mark.parametrize(("knob", "value", "applies_to", "error"), [
    ("no_answer", True, None, "AtTimeoutError"),  # hung
    ("missing_final", True, None, "AtTimeoutError"),  # answers, never finishes
    ("error", True, None, "AtResultError"),  # ERROR even to a bare AT
    ("garbage", b"+QENG: \"servingcell\",\"\xff\x00junk\r\n+QENG: nonsense\r\n", "QENG", "ModemResponseError"),
])
def test_a_modem_that_does_not_answer_sanely_is_sick(tmp_path, knob, value, applies_to, error):
    with ModemSimulator("rm520n", link=tmp_path / "at") as sim:
        monitor = monitor_for(sim.path)

        async def body():
            await monitor.link.open()
            setattr(sim.knobs, knob, value)
            sim.knobs.applies_to = applies_to
            return await observe(monitor)

        observation, status = asyncio.run(body())
    assert observation.outcome is Outcome.SICK and observation.port_present and status is None
    assert observation.detail.startswith(error)


def test_a_port_that_is_gone_is_sick_and_says_so(tmp_path):
    monitor = monitor_for(str(tmp_path / "no-such-modem"))
    observation, _ = asyncio.run(observe(monitor))
    assert (observation.outcome, observation.port_present) == (Outcome.SICK, False)
    assert "is gone" in observation.detail


@pytest.mark.parametrize("stat,name", [(3, "denied"), (2, "searching"), (0, "not-registered")])
def test_a_modem_that_answers_but_is_not_registered_is_refused_not_sick(tmp_path, stat, name):
    with ModemSimulator("ec25", link=tmp_path / "at") as sim:
        sim.lose_registration(stat=stat)
        observation, status = asyncio.run(observe(monitor_for(sim.path)))
    assert observation.outcome is Outcome.REFUSED and f"registration {name}" in observation.detail
    assert status.registration_name == name and status.iccid  # the SIM is still reported


def test_a_missing_sim_is_reported_as_the_modems_refusal_not_as_a_sick_modem(tmp_path):
    with ModemSimulator("rm520n", link=tmp_path / "at") as sim:
        sim.lose_registration(stat=0)
        sim.state.sim_present = False  # read by the answer functions: QCCID / CIMI now answer +CME ERROR: 10
        observation, status = asyncio.run(observe(monitor_for(sim.path)))
    assert observation.outcome is Outcome.REFUSED
    assert status.iccid is None and any("SIM not inserted" in r for r in status.refusals)
    assert "SIM not inserted" in {r.name: r.string for r in status.records(None)}["modem.refused"]


def test_a_modem_that_reboots_on_its_own_is_opened_and_prepared_again(tmp_path):
    from tests.kit.health import VirtualClock, wait_until

    clock = VirtualClock()
    with ModemSimulator("rm520n", link=tmp_path / "at") as sim:
        config = ModemHealthConfig(port=sim.path, status_interval_s=600, command_timeout_s=0.5, hotplug=False)
        monitor = ModemHealthMonitor.build(config, clock=clock, wall=clock.wall, sleep=clock.sleep)
        recorded: list = []

        async def body():
            task = asyncio.create_task(monitor.run(recorded.append))
            try:
                await clock.parked()
                sim.clear_received()
                sim.emit_urc("RDY")  # e.g. a watchdog reset inside the modem on a UART link: the port stayed
                await wait_until(lambda: clock.next_deadline() == 10, 5, "the RDY waking the monitor")
                await clock.next_wakeup()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(body())
        commands = sim.commands()
    assert monitor.link.opens == 2
    assert "ATE0" in commands and "AT+CEREG=2" in commands  # its session settings restored
    assert [r.string for batch in recorded for r in batch if r.name == "modem.health"] == ["ok", "ok"]
