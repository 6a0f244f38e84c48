"""A gateway observing the lender's command notices (/c/o, RFC 7641, over real CoAP with OSCORE) gets a command
issued from the CLI without its poll, and after a lender restart observes again and gets the missed ones in order.

The agent polls /c only every 60 s here: within these tests' waits only a notification explains a delivery."""
import asyncio
import json
import time

from agent.commands import CommandInbox
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from lender.server import LenderServer
from tests.kit.agent import DEVICE, QUICK_UPLINK, build_agent, running
from tests.kit.lender import PYTHON_BIN, LenderThread
from tests.agent.test_commands_end_to_end import _registered

SLOW_POLL = 60.0
REFRESH = 0.5   # the lender notifies every observer this often: a lost observation shows within ~1.5 s


def lender_on(data, port: int = 0) -> LenderThread:
    """A lender over `data` on `port` (0: any), notifying every observer every `REFRESH` s."""
    lender = LenderThread(data, notice_refresh=REFRESH)
    lender.server = LenderServer(data, bind=("127.0.0.1", port), notice_refresh=REFRESH)
    return lender


async def observing(agent, registrations: int = 1, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not (agent.uplink.observing and agent.uplink.registrations >= registrations):
        assert time.monotonic() < deadline, f"not observing ({agent.uplink.registrations} registrations)"
        await asyncio.sleep(0.05)


def test_an_inspection_from_the_cli_reaches_an_observing_gateway_without_its_poll(tmp_path):
    data, home = _registered(tmp_path)
    with lender_on(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time)
        agent = build_agent(home, lender=f"coap://127.0.0.1:{lender.port}", uplink=QUICK_UPLINK,
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, commands=inbox,
                            command_poll=SLOW_POLL)

        async def inspect_from_the_cli():
            await observing(agent)
            cli = await asyncio.create_subprocess_exec(
                str(PYTHON_BIN / "pledgewatch"), "lender", "inspect", "--data", str(data), DEVICE, "--wait", "10",
                "--by", "staff-li", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await cli.communicate()
            return cli.returncode, out, err

        code, out, err = asyncio.run(running(agent, inspect_from_the_cli, timeout=30))
    assert code == 0, err.decode()
    answer = json.loads(out)
    assert answer["state"] == "applied" and answer["issuer"] == "staff-li"
    assert inbox.last_seq == answer["seq"] == 1


def test_after_a_lender_restart_the_gateway_observes_again_and_gets_the_missed_commands_in_order(tmp_path):
    data, home = _registered(tmp_path)
    first = lender_on(data).__enter__()
    port = first.port
    inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time)
    agent = build_agent(home, lender=f"coap://127.0.0.1:{port}", uplink=QUICK_UPLINK,
                        security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, commands=inbox, command_poll=SLOW_POLL)

    async def outage():
        nonlocal first
        await observing(agent)
        await asyncio.to_thread(first.__exit__, None, None, None)
        first = None
        with SQLiteStore.open(data) as store:   # issued while the lender is down
            desk = CommandDesk(store, lender_identity(data))
            missed = [desk.inspect(DEVICE, "staff-li"), desk.inspect(DEVICE, "staff-li")]
        await asyncio.sleep(3 * REFRESH)         # the observation is lost meanwhile
        assert not agent.uplink.observing
        again = await asyncio.to_thread(lender_on(data, port).__enter__)
        try:
            with SQLiteStore.open(data) as store:
                desk = CommandDesk(store, lender_identity(data))
                deadline = time.monotonic() + 15
                while any(desk.snapshot(c) is None for c in missed) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                answers = [desk.snapshot(c) for c in missed]
            registrations = agent.uplink.registrations
        finally:
            await asyncio.to_thread(again.__exit__, None, None, None)
        return missed, answers, registrations

    try:
        missed, answers, registrations = asyncio.run(running(agent, outage, timeout=40))
    finally:
        if first is not None:
            first.__exit__(None, None, None)
    assert [a.outcome if a else None for a in answers] == ["applied", "applied"]
    assert answers[0].seq < answers[1].seq, "acted on out of order"
    assert inbox.last_seq == missed[1].seq == 2
    assert registrations >= 2
