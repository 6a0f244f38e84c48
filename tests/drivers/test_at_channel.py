"""The AT channel over real pseudo-terminals, against the simulated modem and other pyserial URLs.

Every test opens the simulator's slave side by path with pyserial, exactly
as the gateway opens /dev/ttyUSB2. Each test body runs under a wall-clock
bound (`run`), so a hang fails the test instead of stalling the suite.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from drivers.at import AtChannel, ChannelConfig, Urc
from drivers.exc import AtPortError, AtResultError, AtTimeoutError, AtUsageError, CmeError, PortClosedError
from hil.sim.model import DataPrompt, ModemModel, Reply
from hil.sim.models import common
from hil.sim.modem import ModemSimulator


def run(coro, limit: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, limit))


@pytest.fixture
def sim(tmp_path):
    with ModemSimulator("rm520n", link=tmp_path / "modem") as s:
        yield s


def wait_for_path(path: Path, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not come back"
        time.sleep(0.005)


def test_channel_round_trip_with_echo_on_then_off(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            on = await ch.command("AT+CSQ", expect="+CSQ:")
            await ch.command("ATE0")
            off = await ch.command("AT+CSQ", expect="+CSQ:")
            return on, off, ch.counters()
    on, off, counters = run(body())
    assert on.lines == off.lines == ("+CSQ: 24,99",)
    assert counters.commands == 3 and counters.garbage_lines == 0 and counters.urcs == 0
    assert sim.commands() == ["AT+CSQ", "ATE0", "AT+CSQ"]


@pytest.mark.parametrize("reader", ["fd", "thread"])
def test_both_readers_give_the_same_answers(sim, reader):
    async def body():
        async with AtChannel(ChannelConfig(sim.path, reader=reader)) as ch:
            assert ch.transport_kind == reader
            return [(await ch.command(c)).lines for c in ("ATI", "AT+CGSN", "AT+CIMI")]
    assert run(body()) == [("Quectel", "RM520N-GL", "Revision: RM520NGLAAR03A03M4G"), ("867698040123450",),
                           ("310260123456789",)]


def test_timeout_raises_typed_error_and_the_late_answer_is_not_taken_for_the_next_command(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path, stale_grace_s=5.0)) as ch:
            sim.knobs.delay_s = 0.3
            with pytest.raises(AtTimeoutError) as info:
                await ch.command("AT+CSQ", expect="+CSQ:", timeout=0.05)
            sim.knobs.delay_s = 0.0
            nxt = await ch.command("AT+CGMM")
            return info.value, nxt, ch.counters()
    err, nxt, counters = run(body())
    assert isinstance(err, TimeoutError) and err.command == "AT+CSQ" and err.timeout_s == 0.05
    assert nxt.lines == ("RM520N-GL",)
    assert counters.timeouts == 1 and counters.late_lines >= 2


def test_silent_modem_times_out_and_the_channel_stays_usable(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path, stale_grace_s=0.05)) as ch:
            sim.knobs.no_answer = True
            for _ in range(2):
                with pytest.raises(AtTimeoutError):
                    await ch.command("AT", timeout=0.05)
            sim.knobs.no_answer = False
            return await ch.command("AT+CGMM")
    assert run(body()).lines == ("RM520N-GL",)


def test_port_loss_fails_the_command_in_flight_and_the_channel_reopens_after_reboot(sim):
    async def body():
        ch = AtChannel(ChannelConfig(sim.path))
        await ch.open()
        sim.knobs.delay_s = 5.0
        pending = asyncio.create_task(ch.command("AT+CSQ", timeout=10))
        await asyncio.to_thread(sim.wait_for_command, r"AT\+CSQ")
        sim.reboot(down_s=0.1)
        with pytest.raises(PortClosedError) as info:
            await pending
        assert not ch.is_open
        with pytest.raises(PortClosedError):
            await ch.command("AT")
        sim.knobs.delay_s = 0.0
        await asyncio.to_thread(wait_for_path, sim.link)
        await ch.open()
        boot = await ch.wait_urc("RDY", timeout=5)
        rsp = await ch.command("AT+CGMM")
        counters = ch.counters()
        await ch.close()
        return info.value, boot, rsp, counters
    err, boot, rsp, counters = run(body())
    assert isinstance(err, ConnectionError) and "went away" in str(err)
    assert boot.line == "RDY"
    assert rsp.lines == ("RM520N-GL",)
    assert counters.port_closures == 1
    assert sim.reboots == 1


def test_close_fails_a_pending_command(sim):
    async def body():
        ch = AtChannel(ChannelConfig(sim.path))
        await ch.open()
        sim.knobs.no_answer = True
        pending = asyncio.create_task(ch.command("AT", timeout=10))
        await asyncio.to_thread(sim.wait_for_command, "^AT$")
        await ch.close()
        with pytest.raises(PortClosedError):
            await pending
    run(body())


def _prompt_model() -> ModemModel:
    """A modem with two data commands: SMS-style (up to Ctrl-Z) and socket-style (by length).

    The payloads land in the simulator state's `extra`, as a socket model's would.
    """
    def cmgs(ctx):
        def sent(data):
            ctx.state.extra.setdefault("payloads", []).append(data)
            return Reply((f"+CMGS: {len(data)}",))
        return Reply(prompt=DataPrompt(then=sent))

    def qisend(ctx):
        def sent(data):
            ctx.state.extra.setdefault("payloads", []).append(data)
            return Reply(final="SEND OK")
        return Reply(prompt=DataPrompt(length=int(ctx.match.group(1)), then=sent))

    return ModemModel(key="prompt_test", manufacturer="Test", model="PROMPT", revision="1", ati=("Test",),
                      answers=common.ANSWERS, handlers=common.HANDLERS + (
                          (r"AT\+CMGS=\d+", cmgs), (r"AT\+QISEND=0,(\d+)", qisend)))


def test_data_prompt_sends_the_payload_then_ctrl_z_or_by_length():
    with ModemSimulator(_prompt_model()) as s:
        async def body():
            async with AtChannel(ChannelConfig(s.path)) as ch:
                sms = await ch.command("AT+CMGS=5", data=b"hello")
                sock = await ch.command("AT+QISEND=0,4", data=b"\x1a\x00\r\n", data_end="none",
                                        finals=("SEND OK",), fail_finals=("SEND FAIL",))
                return sms, sock
        sms, sock = run(body())
        payloads = s.state.extra["payloads"]
    assert sms.lines == ("+CMGS: 5",)
    assert sock.final == "SEND OK"
    assert payloads == [b"hello", b"\x1a\x00\r\n"]


def test_data_that_would_end_a_ctrl_z_payload_early_is_refused(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            with pytest.raises(AtUsageError, match="Ctrl-Z"):
                await ch.command("AT+CMGS=3", data=b"a\x1ab")
    run(body())


def test_an_error_instead_of_the_prompt_raises_at_once(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            with pytest.raises(AtResultError):
                await ch.command("AT+CMGS=3", data=b"abc", timeout=2)
    run(body())


def test_urc_storm_reaches_subscribers_and_a_full_queue_drops_the_oldest(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            seen: list[Urc] = []
            ch.subscribe(seen.append, prefixes=["+QIND:"])
            queue = ch.urc_queue(maxsize=10)
            await ch.command("AT")
            sim.urc_storm('+QIND: "csq",20,99', 500)
            # The storm and the responses interleave; every answer must still be right.
            answers = [(await ch.command("AT+CSQ", expect="+CSQ:")).lines for _ in range(20)]
            while len(seen) < 500:
                await asyncio.sleep(0.01)
            return seen, queue, answers, ch.counters()
    seen, queue, answers, counters = run(body())
    assert len(seen) == 500 and all(u.prefix == "+QIND:" for u in seen)
    assert answers == [("+CSQ: 24,99",)] * 20
    assert queue.qsize() == 10 and queue.dropped == 490 and counters.urcs_dropped == 490


def test_a_failing_subscriber_is_counted_and_the_others_still_get_urcs(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            got: list[str] = []

            def broken(urc):
                raise RuntimeError("subscriber bug")
            ch.subscribe(broken)
            ch.subscribe(lambda u: got.append(u.line))
            await ch.command("AT")
            sim.emit_urc("RING")
            await ch.wait_urc("RING", timeout=5)
            await ch.command("AT")
            return got, ch.counters()
    got, counters = run(body())
    assert got == ["RING"] and counters.subscriber_errors == 1


def test_urc_in_the_middle_of_a_response_is_delivered_and_the_response_kept(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            await ch.command("AT+C5GREG=2")
            q = ch.urc_queue()
            sim.knobs.urc_mid_response = '+C5GREG: 1,"00B7E2","1A2B3C4D6",11'
            rsp = await ch.command("AT+C5GREG?", expect="+C5GREG:")
            return rsp, await q.get(timeout=5)
    rsp, urc = run(body())
    assert rsp.lines == ('+C5GREG: 2,1,"00B7E1","1A2B3C4D5",11',)
    assert urc.line == '+C5GREG: 1,"00B7E2","1A2B3C4D6",11'


def test_garbage_before_a_response_is_counted_and_the_answer_still_arrives(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            sim.knobs.garbage = b"\xff\xfe\x00\x13\x80\r\n\x00\x00"
            rsp = await ch.command("AT+CSQ", expect="+CSQ:")
            return rsp, ch.counters()
    rsp, counters = run(body())
    assert rsp.lines == ("+CSQ: 24,99",)
    assert counters.garbage_lines == 1 and counters.nul_bytes == 3


def test_concurrent_callers_get_their_own_answers_one_command_in_flight(sim):
    commands = ["AT+CGMM", "AT+CIMI", "AT+CGSN", "AT+CSQ", "AT+CFUN?"] * 6

    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            # +CFUN: is also a boot URC, so AT+CFUN? must name its prefix (the module's URC rule 4/5).
            return await asyncio.gather(*(ch.command(c, expect="+CFUN:" if c == "AT+CFUN?" else ())
                                          for c in commands))
    answers = run(body())
    expected = {"AT+CGMM": ("RM520N-GL",), "AT+CIMI": ("310260123456789",), "AT+CGSN": ("867698040123450",),
                "AT+CSQ": ("+CSQ: 24,99",), "AT+CFUN?": ("+CFUN: 1",)}
    assert [a.lines for a in answers] == [expected[c] for c in commands]
    assert sim.commands() == commands


def test_cme_error_knob_raises_cme_error_with_meaning(sim):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            sim.knobs.cme_error = 14
            with pytest.raises(CmeError) as info:
                await ch.command("AT+CIMI")
            return info.value
    err = run(body())
    assert err.code == 14 and err.meaning == "SIM busy" and isinstance(err, RuntimeError)


def test_socket_url_works_through_the_reader_thread():
    """A `socket://` URL has no descriptor to watch: the channel falls back to its reader thread."""
    async def body():
        async def modem(reader, writer):
            while True:
                cmd = await reader.readuntil(b"\r")
                if cmd.strip() == b"AT+CSQ":
                    writer.write(b'\r\n+CEREG: 1,"0001","00000002",7\r\n+CSQ: 17,99\r\n\r\nOK\r\n')
                else:
                    writer.write(b"\r\nOK\r\n")
                await writer.drain()
        server = await asyncio.start_server(modem, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        urcs: list[str] = []
        async with server, AtChannel(ChannelConfig(f"socket://127.0.0.1:{port}")) as ch:
            ch.subscribe(lambda u: urcs.append(u.line))
            kind = ch.transport_kind
            rsp = await ch.command("AT+CSQ", expect="+CSQ:")
            await ch.command("AT")
        return kind, rsp, urcs
    kind, rsp, urcs = run(body())
    assert kind == "thread"
    assert rsp.lines == ("+CSQ: 17,99",)
    assert urcs == ['+CEREG: 1,"0001","00000002",7']


def test_spy_url_records_a_hex_trace_of_the_traffic(sim, tmp_path):
    trace = tmp_path / "trace.txt"

    async def body():
        async with AtChannel(ChannelConfig(f"spy://{sim.path}?file={trace}")) as ch:
            return await ch.command("AT+CGMM")
    assert run(body()).lines == ("RM520N-GL",)
    text = trace.read_text()
    tx = [line for line in text.splitlines() if " TX " in line]
    rx = " ".join(line for line in text.splitlines() if " RX " in line)
    assert tx and "41 54 2B 43 47 4D 4D 0D" in tx[0]  # "AT+CGMM\r"
    assert "52 4D 35 32 30 4E" in rx  # "RM520N" in the answer


@pytest.mark.parametrize("bad", ["", "CSQ", "AT+CSQ\r", "AT\nAT", "AT+COPS=\"é\"", "AT\x00", "AT" + "X" * 2000])
def test_commands_the_channel_cannot_send_are_refused_before_the_port(sim, bad):
    async def body():
        async with AtChannel(ChannelConfig(sim.path)) as ch:
            with pytest.raises(AtUsageError) as info:
                await ch.command(bad)
            assert isinstance(info.value, ValueError)
    run(body())
    assert sim.commands() == []


def test_opening_a_missing_port_names_it_and_is_a_port_error(tmp_path):
    missing = tmp_path / "no-such-modem"

    async def body():
        with pytest.raises(AtPortError) as info:
            await AtChannel(ChannelConfig(str(missing))).open()
        return info.value
    err = run(body())
    assert str(missing) in str(err) and isinstance(err, OSError)


def test_channel_config_rejects_nonsense():
    with pytest.raises(ValueError):
        ChannelConfig("")
    with pytest.raises(ValueError):
        ChannelConfig("/dev/ttyUSB2", default_timeout_s=0)
    with pytest.raises(ValueError):
        ChannelConfig("/dev/ttyUSB2", reader="magic")  # type: ignore[arg-type]
