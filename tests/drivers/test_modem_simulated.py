"""Each modem driver against its simulated modem through a real pseudo-terminal, fault knob by fault knob.

The driver is chosen by model detection (`open_modem`), exactly as the agent
does; every value it returns is checked against the simulator's state, and
every knob of the simulator is turned once per model.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from drivers.at import AtChannel, ChannelConfig
from drivers.exc import AtResultError, AtTimeoutError, CmeError, CmsError, PortClosedError
from drivers.modem import Modem, QuectelModem, RadioMode, RegistrationStatus, SimcomModem, identify, open_modem
from hil.sim.modem import ModemSimulator

MODELS = ["rm500q", "rm520n", "ec25", "sim7600", "sim8200"]
FIVE_G = {"rm500q", "rm520n", "sim8200"}


def run(coro, limit: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, limit))


@contextlib.asynccontextmanager
async def session(sim: ModemSimulator, **config: object) -> AsyncIterator[tuple[AtChannel, Modem]]:
    cfg = {"default_timeout_s": 2.0, "stale_grace_s": 0.05, **config}
    async with AtChannel(ChannelConfig(sim.path, **cfg)) as ch:  # type: ignore[arg-type]
        modem = await open_modem(ch, require_known=True)
        await modem.prepare()
        yield ch, modem


@pytest.fixture(params=MODELS)
def sim(request, tmp_path):
    with ModemSimulator(request.param, link=tmp_path / "modem") as s:
        yield s


def test_model_detection_picks_the_vendor_driver(sim):
    async def body():
        async with session(sim) as (_, modem):
            return modem
    modem = run(body())
    assert modem.identity is not None and modem.identity.family == sim.model.key
    assert isinstance(modem, SimcomModem if sim.model.key.startswith("sim") else QuectelModem)


def test_detection_falls_back_to_cgmm_when_ati_fails(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            sim.knobs.error = True
            sim.knobs.applies_to = "^ATI"
            return await identify(ch)
    ident = run(body())
    assert (ident.manufacturer, ident.model, ident.family) == (sim.model.manufacturer, sim.model.model,
                                                               sim.model.key)
    assert sim.commands() == ["ATI", "AT+CGMI", "AT+CGMM"]


def test_driver_reads_typed_values_that_match_the_modem_state(sim):
    s = sim.state

    async def body():
        async with session(sim) as (_, m):
            out = {
                "imei": await m.imei(), "imsi": await m.imsi(), "iccid": await m.iccid(),
                "csq": await m.signal_quality(), "cesq": await m.extended_signal_quality(),
                "reg": await m.registration(), "eps": await m.eps_registration(), "op": await m.operator(),
                "time": await m.network_time(), "fun": await m.functionality(), "cell": await m.serving_cell(),
            }
            await m.gnss_start()
            await m.gnss_start()  # already running counts as started
            out["fix"] = await m.gnss_location()
            await m.gnss_stop()
            return out
    v = run(body())
    assert (v["imei"], v["imsi"], v["iccid"]) == (s.imei, s.imsi, s.iccid)
    assert v["csq"].rssi_dbm == -113 + 2 * int((s.rssi + 113) // 2)
    assert v["reg"].registered and v["reg"].status is RegistrationStatus.HOME
    if s.rat == "NR5G-SA":
        assert (v["reg"].domain, v["reg"].tac, v["reg"].cell_id) == ("5GS", s.nr_tac, s.nr_cell_id)
        assert v["cesq"].rsrp_dbm is None  # not an E-UTRA cell
    else:
        assert (v["reg"].domain, v["reg"].tac, v["reg"].cell_id) == ("EPS", s.tac, s.cell_id)
        assert v["cesq"].rsrp_dbm == int(s.rsrp)
    assert v["op"].name == s.operator_long
    assert abs((v["time"] - s.network_time).total_seconds()) < 60
    assert int(v["fun"]) == 1
    cell = v["cell"]
    assert cell.mode.value == s.rat
    primary = cell.primary
    if s.rat == "NR5G-SA":
        assert (primary.pci, primary.band, primary.arfcn, primary.rsrp_dbm, primary.sinr_db) == \
            (s.nr_pci, s.nr_band, s.nr_arfcn, s.nr_rsrp, s.nr_sinr)
    else:
        assert (primary.pci, primary.band, primary.arfcn, primary.rsrp_dbm, primary.rsrq_db) == \
            (s.pci, s.band, s.earfcn, s.rsrp, s.rsrq)
    if s.rat == "NR5G-NSA":
        assert cell.nr is not None and (cell.nr.pci, cell.nr.rsrp_dbm) == (s.nr_pci, s.nr_rsrp)
    fix = v["fix"]
    assert fix is not None and fix.latitude == pytest.approx(s.fix.latitude, abs=1e-5)
    assert fix.longitude == pytest.approx(s.fix.longitude, abs=1e-5)


@pytest.mark.parametrize("key", ["rm500q", "rm520n", "ec25"])
def test_quectel_network_info_follows_the_rat(key, tmp_path):
    with ModemSimulator(key) as sim:
        info = run(_network_info(sim))
    assert info.plmn == sim.state.mcc + sim.state.mnc
    assert ("NR5G" in info.act) == (sim.state.rat == "NR5G-SA")


async def _network_info(sim):
    async with session(sim) as (_, m):
        assert isinstance(m, QuectelModem)
        return await m.network_info()


def test_gnss_without_a_fix_is_none_not_an_error(sim):
    sim.set_fix(None)

    async def body():
        async with session(sim) as (_, m):
            await m.gnss_start()
            return await m.gnss_location()
    assert run(body()) is None


def test_knob_delay_within_the_timeout_still_answers(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.delay_s = 0.05
            return await m.imsi()
    assert run(body()) == sim.state.imsi


def impatient(m: Modem) -> Modem:
    """The same driver with a short command timeout, for the steps that are meant to time out."""
    return type(m)(m.channel, m.identity, timeout_s=0.1)


def test_knob_delay_beyond_the_timeout_times_out_then_recovers(sim):
    async def body():
        async with session(sim, stale_grace_s=2.0) as (ch, m):
            sim.knobs.delay_s = 0.5
            with pytest.raises(AtTimeoutError):
                await impatient(m).signal_quality()
            sim.knobs.delay_s = 0.0
            return await m.imei(), ch.counters()
    imei, counters = run(body())
    assert imei == sim.state.imei and counters.timeouts == 1


def test_knob_no_answer_times_out_every_command(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.no_answer = True
            with pytest.raises(AtTimeoutError):
                await impatient(m).imsi()
            with pytest.raises(AtTimeoutError):
                await impatient(m).serving_cell()
            sim.knobs.no_answer = False
            return await m.imsi()
    assert run(body()) == sim.state.imsi


def test_knob_error_raises_a_result_error(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.error = True
            with pytest.raises(AtResultError) as info:
                await m.operator()
            return info.value
    err = run(body())
    assert err.result == "ERROR" and err.command == "AT+COPS?"


def test_knob_cme_error_carries_the_3gpp_meaning(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.cme_error = 10
            sim.knobs.applies_to = r"CIMI|CCID|ICCID"
            with pytest.raises(CmeError) as info:
                await m.imsi()
            imei = await m.imei()  # the knob only hits SIM commands
            return info.value, imei
    err, imei = run(body())
    assert (err.code, err.meaning) == (10, "SIM not inserted") and imei == sim.state.imei


def test_knob_cms_error_raises_cms_error(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.cms_error = 331
            with pytest.raises(CmsError) as info:
                await m.operator()
            return info.value
    err = run(body())
    assert (err.code, err.meaning) == (331, "no network service")


def test_knob_garbage_is_counted_and_the_value_still_parsed(sim):
    async def body():
        async with session(sim) as (ch, m):
            sim.knobs.garbage = b"\x00\xff\xfe\r\n\x07\x07\r\n"
            cell = await m.serving_cell()
            return cell, ch.counters()
    cell, counters = run(body())
    assert cell.primary is not None
    assert counters.garbage_lines == 2 and counters.nul_bytes >= 1


def test_knob_missing_final_result_times_out(sim):
    async def body():
        async with session(sim) as (_, m):
            sim.knobs.missing_final = True
            with pytest.raises(AtTimeoutError) as info:
                await impatient(m).signal_quality()
            sim.knobs.missing_final = False
            return info.value, await m.signal_quality()
    err, csq = run(body())
    assert err.lines and err.lines[0].startswith("+CSQ:")  # the answer came, its OK never did
    assert csq.rssi_dbm is not None


def test_knob_urc_in_the_middle_of_a_registration_response(sim):
    nr = sim.state.rat == "NR5G-SA"
    name = "+C5GREG" if nr else "+CEREG"
    urc = f'{name}: 1,"00B7E2","1A2B3C4D6",11' if nr else f'{name}: 1,"1A2C","01A2B3C5",7'

    async def body():
        async with session(sim) as (ch, m):
            q = ch.urc_queue(prefixes=[name + ":"])
            sim.knobs.urc_mid_response = urc
            reg = await (m.nr_registration() if nr else m.eps_registration())
            return reg, await q.get(timeout=5)
    reg, got = run(body())
    assert reg.registered and reg.cell_id == (sim.state.nr_cell_id if nr else sim.state.cell_id)
    assert got.line == urc


def test_urc_storm_does_not_disturb_answers(sim):
    async def body():
        async with session(sim) as (ch, m):
            sim.urc_storm('+QIND: "csq",20,99' if sim.model.key[0] != "s" else "+CPSMSTATUS: 1", 300)
            cells = [await m.serving_cell() for _ in range(10)]
            while ch.counters().urcs < 300:
                await asyncio.sleep(0.01)
            return cells, ch.counters()
    cells, counters = run(body())
    assert all(c == cells[0] and c.primary is not None for c in cells)
    assert counters.urcs == 300


def test_reboot_drops_the_port_and_it_returns_under_the_same_link(sim):
    async def body():
        ch = AtChannel(ChannelConfig(sim.path, default_timeout_s=2.0))
        await ch.open()
        modem = await open_modem(ch)
        before = await modem.imei()
        await modem.set_functionality(1, reset=True)  # AT+CFUN=1,1: OK, then the port goes
        await asyncio.wait_for(ch.wait_closed(), 5)
        assert not os.path.exists(sim.link) or sim.reboots == 1
        deadline = time.monotonic() + 5
        while not os.path.exists(sim.link):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await ch.open()
        boot = [u.line async for u in _take(ch.urc_queue(), len(sim.model.boot_urcs))]
        after = await modem.imei()
        with pytest.raises(AtResultError):
            await ch.command("AT+CEREG=9")  # session settings were reset; still a live modem
        await ch.close()
        return before, after, boot, ch.counters()
    before, after, boot, counters = run(body())
    assert before == after == sim.state.imei
    assert boot == list(sim.model.boot_urcs) and boot[0] == "RDY"
    assert counters.port_closures == 1 and sim.reboots == 1


async def _take(queue, n):
    for _ in range(n):
        yield await queue.get(timeout=5)


def test_commands_to_a_rebooting_modem_fail_with_port_closed(sim):
    async def body():
        async with session(sim) as (ch, m):
            sim.reboot(down_s=1.0)
            with pytest.raises(PortClosedError):
                await m.imsi()
    run(body())


def test_sim_swap_changes_iccid_and_imsi_and_announces_it(sim):
    async def body():
        async with session(sim) as (ch, m):
            first = await m.iccid(), await m.imsi()
            q = ch.urc_queue()
            sim.swap_sim("89470000000000000017", "242019999999999")
            urcs = [(await q.get(timeout=5)).line for _ in sim.model.sim_swap_urcs]
            return first, (await m.iccid(), await m.imsi()), urcs
    first, second, urcs = run(body())
    assert first != second == ("89470000000000000017", "242019999999999")
    assert urcs == list(sim.model.sim_swap_urcs)


def test_loss_of_registration_is_reported_by_urc_and_by_query(sim):
    async def body():
        async with session(sim) as (ch, m):
            q = ch.urc_queue(prefixes=["+CEREG:", "+C5GREG:"])
            sim.lose_registration(stat=3)
            urc = await q.get(timeout=5)
            lost, cell = await m.registration(), await m.serving_cell()
            sim.regain_registration()
            back = await q.get(timeout=5)
            return urc, lost, cell, back, await m.registration()
    urc, lost, cell, back, regained = run(body())
    assert urc.line.endswith(": 3")
    assert lost.status is RegistrationStatus.DENIED and not lost.registered
    assert cell.mode is RadioMode.NO_SERVICE and cell.cells == ()
    assert back.line.split(":")[1].strip().startswith("1,")
    assert regained.registered


def test_fading_signal_lowers_rsrp_each_query_until_registration_is_lost(sim):
    nr = sim.state.rat == "NR5G-SA"

    async def body():
        async with session(sim) as (_, m):
            sim.knobs.fade_db_per_query = -10.0
            values = []
            for _ in range(8):
                cell = await m.serving_cell()
                if cell.primary is None:
                    break
                values.append(cell.primary.rsrp_dbm)
            return values, await m.registration()
    values, reg = run(body())
    assert len(values) >= 3 and values == sorted(values, reverse=True) and values[0] > values[-1]
    start = sim.model.new_state()
    assert values[0] == (start.nr_rsrp if nr else start.rsrp) - 10
    assert not reg.registered and reg.status is RegistrationStatus.SEARCHING


def test_flight_mode_deregisters_and_full_function_returns(sim):
    async def body():
        async with session(sim) as (_, m):
            await m.set_functionality(4)
            off = await m.functionality(), await m.registration()
            await m.set_functionality(1)
            return off, await m.registration()
    (fun, off), on = run(body())
    assert int(fun) == 4 and not off.registered and on.registered
