"""Command notices (/c/o) from several lender workers over one PostgreSQL store: a gateway observing whichever
worker the kernel picked is told of a command issued by another process, and the notifications, protected with the
lender's sender sequence numbers (blocks each worker reserves in the database), unprotect at the gateway."""
from __future__ import annotations

import asyncio

import aiocoap
import pytest
from aiocoap.numbers import codes

from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.stores import open_store
from lender.workers import WorkerConfig, WorkerGroup
from telemetry.command import decode_fetch
from tests.kit.lender import Device, enroll
from tests.kit.workers import ProtectedGateway


@pytest.fixture
def shared(postgres, data_dir):
    url = postgres.database()
    open_store(data_dir, url).close()
    return url


def test_observing_gateways_are_told_of_commands_by_whichever_worker_holds_their_observation(shared, data_dir):
    config = WorkerConfig(data_dir, shared, ("127.0.0.1", 0))
    with open_store(data_dir, shared) as store:
        with WorkerGroup(config, 2) as group:
            uri = f"coap://127.0.0.1:{group.port}/c/o"
            fleet = []
            for n in range(4):   # four source ports, which the kernel hashes to either worker
                registration = enroll(store, data_dir, Device(f"gw-{n}"), oscore=True)
                fleet.append(ProtectedGateway(Device(f"gw-{n}"), registration.device_context, uri))
            desk = CommandDesk(store, lender_identity(data_dir))

            async def observe(gateway: ProtectedGateway) -> list[int]:
                await gateway.open()
                try:
                    request = gateway._client.request(aiocoap.Message(code=codes.GET, uri=uri, observe=0))
                    first = await asyncio.wait_for(request.response, 10)
                    assert first.code == codes.CONTENT and first.opt.observe is not None, first
                    seen = [decode_fetch(first.payload)]
                    await asyncio.to_thread(desk.inspect, gateway.device.name, "staff-li")
                    async with asyncio.timeout(5):
                        seen.append(decode_fetch((await anext(aiter(request.observation))).payload))
                    return seen
                finally:
                    await gateway.close()

            async def run() -> list:
                return [await observe(gateway) for gateway in fleet]

            assert asyncio.run(run()) == [[0, 1]] * 4
