"""``/c``: a gateway fetches the lender's pending signed commands (telemetry.command), under OSCORE only.

POST {1: last applied command seq} (content-format 60); the answer is 2.05
with a CBOR array of the device's pending commands above that seq, oldest
first, each the exact COSE_Sign1 bytes the lender signed, as many as fit in
`MAX_ANSWER` bytes (the gateway asks again for the rest). The device is the
one whose OSCORE context protected the request: a plain request, or one that
names another device, gets nothing. Commands handed out are marked delivered.
The gateway polls this on every uplink exchange (a poll fallback for Observe,
which is not served yet) and after an outage fetches what it missed, in order.
"""
from __future__ import annotations

import time

import aiocoap
from aiocoap import error
from aiocoap.numbers import ContentFormat, codes

from lender.coap.resource import IngestThread, LenderResource
from lender.evidence.commands import CommandDesk
from telemetry import cbor
from telemetry.cbor import Limits
from telemetry.exc import WireFormatError
from telemetry.numbers import CONTENT_FORMAT_CBOR, PATH_COMMANDS

MAX_ANSWER = 1024            # bytes of commands in one answer: fits one CoAP block exchange on NB-IoT
_REQUEST_LIMITS = Limits(max_bytes=32, max_depth=2, max_items=4)


def encode_fetch(last_applied: int) -> bytes:
    """The body a gateway POSTs to /c."""
    return cbor.encode({1: last_applied})


def decode_commands(payload: bytes) -> list[bytes]:
    """The commands in a /c answer (each still to be verified by the device); WireFormatError if malformed."""
    items = cbor.decode(payload, Limits(max_bytes=MAX_ANSWER + 64, max_depth=2, max_items=64))
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        raise WireFormatError("a /c answer is a CBOR array of byte strings")
    return items


class CommandResource(LenderResource):
    """``/c``: pending commands for the OSCORE-authenticated gateway that asks."""

    path = PATH_COMMANDS
    resource_type = "pledgewatch.commands"

    def __init__(self, thread: IngestThread, credentials, desk: CommandDesk) -> None:
        super().__init__(thread)
        self._credentials = credentials
        self._desk = desk

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        device = self._credentials.device_of(request) if self._credentials is not None else None
        if device is None:
            raise error.Unauthorized("commands are handed out under the device's own OSCORE context only")
        if not self.is_cbor(request):
            raise error.UnsupportedContentFormat("the body must be application/cbor (60)")
        try:
            fields = cbor.decode(request.payload, _REQUEST_LIMITS)
        except WireFormatError as exc:
            raise error.BadRequest(f"the body is not CBOR: {exc}") from exc
        if not isinstance(fields, dict) or set(fields) != {1} or type(fields[1]) is not int or fields[1] < 0:
            raise error.BadRequest("the body must be {1: last applied command seq}")
        answer = await self.in_thread(self.pending, device, fields[1])
        return aiocoap.Message(code=codes.CONTENT, payload=cbor.encode(answer),
                               content_format=ContentFormat(CONTENT_FORMAT_CBOR))

    def pending(self, device: str, after: int) -> list[bytes]:
        """Runs in the ingest thread: the commands to hand out, marked delivered."""
        chosen, size = [], 0
        for command in self._desk.pending(device, after):
            if chosen and size + len(command.raw) > MAX_ANSWER:
                break
            chosen.append(command.raw)
            size += len(command.raw)
            self._desk.store.mark_delivered(device, command.seq, time.time())
        return chosen
