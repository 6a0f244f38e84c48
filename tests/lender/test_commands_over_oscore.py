"""A gateway fetches its signed commands from a real lender over CoAP with OSCORE (/c), and only its own."""
import asyncio

import aiocoap
from aiocoap.numbers import codes

from durable.oscore import close_context, open_context
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from telemetry.command import accept, decode_commands, encode_fetch
from tests.kit.lender import Device, LenderThread, enroll


async def fetch(uri: str, context_dir, last_applied: int) -> aiocoap.Message:
    client = await aiocoap.Context.create_client_context()
    security = open_context(context_dir)
    try:
        client.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = security
        request = aiocoap.Message(code=codes.POST, uri=uri, payload=encode_fetch(last_applied))
        return await asyncio.wait_for(client.request(request).response, 10)
    finally:
        close_context(security)
        await client.shutdown()


def test_a_gateway_fetches_its_pending_commands_over_oscore_and_no_other_devices(tmp_path):
    data = tmp_path / "lender"
    with SQLiteStore.open(data) as store:
        for name in ("gw-1", "gw-2"):
            enroll(store, data, Device(name), oscore=True)
        desk = CommandDesk(store, lender_identity(data))
        first, second = desk.inspect("gw-1", "staff-li"), desk.inspect("gw-1", "staff-li")
        desk.inspect("gw-2", "staff-li")
    with LenderThread(data) as lender:
        uri = f"coap://127.0.0.1:{lender.port}/c"
        response = asyncio.run(fetch(uri, data / DEVICE_CONTEXTS_DIR / "gw-1", 0))
        assert response.code == codes.CONTENT, response.payload
        commands = [accept(raw, lender_identity(data).public_key, "gw-1", 0, first.issued_at)
                    for raw in decode_commands(response.payload)]
        assert [c.digest for c in commands] == [first.digest, second.digest]
        again = asyncio.run(fetch(uri, data / DEVICE_CONTEXTS_DIR / "gw-1", second.seq))
        assert decode_commands(again.payload) == []
