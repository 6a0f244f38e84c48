"""``/c``: a gateway fetches its own pending signed commands, in order, under OSCORE only."""
import asyncio

import aiocoap
import pytest
from aiocoap.numbers import codes

from lender.coap.commands import CommandResource
from lender.coap.resource import IngestThread
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from telemetry.command import accept, decode_commands, encode_fetch
from tests.kit.evidence import EvidenceLender


class Credentials:
    """Stands in for the lender's OSCORE contexts: says which device protected a request."""

    def __init__(self, device):
        self.device = device

    def device_of(self, request):
        return self.device


@pytest.fixture
def lender(tmp_path):
    lender = EvidenceLender(tmp_path / "lender")
    yield lender
    lender.close()


def fetch(lender, device, last_applied, payload=None):
    thread = IngestThread(lender.ingest)
    desk = CommandDesk(lender.store, lender_identity(lender.data_dir))
    resource = CommandResource(thread, Credentials(device), desk)
    request = aiocoap.Message(code=codes.POST, payload=encode_fetch(last_applied) if payload is None else payload)
    try:
        return asyncio.run(resource.respond(request))
    except aiocoap.error.RenderableError as refusal:
        return refusal.to_message()
    finally:
        thread.close()


def test_a_gateway_gets_its_own_pending_commands_in_order_and_they_are_marked_delivered(lender):
    desk = CommandDesk(lender.store, lender_identity(lender.data_dir))
    for _ in range(3):
        desk.inspect("gw-1", "staff-li")
    desk.inspect("gw-2", "staff-li")
    response = fetch(lender, "gw-1", 1)
    assert response.code == codes.CONTENT
    commands = [accept(raw, lender.key, "gw-1", 0, desk.clock()) for raw in decode_commands(response.payload)]
    assert [c.seq for c in commands] == [2, 3]
    assert [c.delivered_at is not None for c in lender.store.issued_commands("gw-1")] == [False, True, True]


def test_a_plain_request_or_a_malformed_body_gets_no_commands(lender):
    CommandDesk(lender.store, lender_identity(lender.data_dir)).inspect("gw-1", "staff-li")
    assert fetch(lender, None, 0).code == codes.UNAUTHORIZED
    assert fetch(lender, "gw-1", 0, payload=b"\xff").code == codes.BAD_REQUEST
    assert fetch(lender, "gw-1", 0, payload=b"\xa1\x01\x20").code == codes.BAD_REQUEST  # {1: -1}
