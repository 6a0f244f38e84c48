"""A gateway observes /c/o over OSCORE (RFC 7641): told of a command issued by another store connection (as the
CLI's process) within the lender's look interval, and of its own commands only; without a context, nothing."""
import asyncio
import contextlib

import aiocoap
from aiocoap.numbers import codes

from durable.oscore import close_context, open_context
from lender.coap.commands import CHECK_S
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from telemetry.command import decode_fetch
from tests.kit.lender import Device, LenderThread, RawCoap, enroll


@contextlib.asynccontextmanager
async def device_client(port: int, data, device: str):
    """An aiocoap client speaking to the lender on `port` under `device`'s side of its OSCORE context."""
    client = await aiocoap.Context.create_client_context()
    security = open_context(data / DEVICE_CONTEXTS_DIR / device)
    try:
        client.client_credentials[f"coap://127.0.0.1:{port}/*"] = security
        yield client
    finally:
        close_context(security)
        await client.shutdown()


async def observe_and_issue(port: int, data, device: str, issue_for: list[str], wait: float) -> list[int]:
    """Observe /c/o as `device`, issue one inspection per name in `issue_for` (another connection), and return
    the newest seqs notified until a second notice or `wait` s."""
    seen = []
    async with device_client(port, data, device) as client:
        request = client.request(aiocoap.Message(code=codes.GET, uri=f"coap://127.0.0.1:{port}/c/o", observe=0))
        first = await asyncio.wait_for(request.response, 10)
        assert first.code == codes.CONTENT and first.opt.observe is not None, first
        seen.append(decode_fetch(first.payload))
        with SQLiteStore.open(data) as store:
            desk = CommandDesk(store, lender_identity(data))
            for name in issue_for:
                desk.inspect(name, "staff-li")
        notices = aiter(request.observation)
        try:
            async with asyncio.timeout(wait):
                seen.append(decode_fetch((await anext(notices)).payload))
        except TimeoutError:
            pass
        return seen


def test_a_gateway_observing_its_commands_is_notified_of_one_issued_elsewhere_and_of_no_other_devices(tmp_path):
    data = tmp_path / "lender"
    with SQLiteStore.open(data) as store:
        for name in ("gw-1", "gw-2"):
            enroll(store, data, Device(name), oscore=True)
        CommandDesk(store, lender_identity(data)).inspect("gw-1", "staff-li")
    with LenderThread(data) as lender:
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(observe_and_issue(lender.port, data, "gw-1", ["gw-1"], 5)) == [1, 2]
            # gw-2 observes; a command for gw-1 tells it nothing (no notice in four looks), its own newest stays 0
            assert loop.run_until_complete(observe_and_issue(lender.port, data, "gw-2", ["gw-1"], 4 * CHECK_S)) == [0]
        finally:
            loop.close()
        plain = RawCoap(lender.port)
        try:  # plain CoAP, no context: refused, and nothing observed
            answer = plain.request(code=codes.GET, path=("c", "o"), content_format=None)
            assert answer.code == codes.UNAUTHORIZED and answer.opt.observe is None
        finally:
            plain.close()


def test_a_new_registration_of_a_device_ends_its_older_observation(tmp_path):
    data = tmp_path / "lender"
    with SQLiteStore.open(data) as store:
        enroll(store, data, Device("gw-1"), oscore=True)

    async def register_twice(port: int) -> tuple:
        async with device_client(port, data, "gw-1") as client:
            uri = f"coap://127.0.0.1:{port}/c/o"
            older = client.request(aiocoap.Message(code=codes.GET, uri=uri, observe=0))
            await asyncio.wait_for(older.response, 10)
            newer = client.request(aiocoap.Message(code=codes.GET, uri=uri, observe=0))
            await asyncio.wait_for(newer.response, 10)
            ended = []
            async with asyncio.timeout(5):
                async for _ in older.observation:   # the older one's final answer ends it
                    pass
                ended.append("older")
            return ended, lender.server.notices.observed()

    with LenderThread(data) as lender:
        assert asyncio.run(register_twice(lender.port)) == (["older"], ["gw-1"])
