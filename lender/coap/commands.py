"""``/c``: a gateway fetches the lender's pending signed commands (telemetry.command), under OSCORE only.

POST {1: last applied command seq} (content-format 60); the answer is 2.05
with a CBOR array of the device's pending commands above that seq, oldest
first, each the exact COSE_Sign1 bytes the lender signed, as many as fit in
`MAX_FETCH_ANSWER` bytes (the gateway asks again for the rest). The device is the
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
from telemetry.command import MAX_FETCH_ANSWER, decode_fetch, encode_commands
from telemetry.exc import CommandError
from telemetry.numbers import CONTENT_FORMAT_CBOR, PATH_COMMANDS

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
            after = decode_fetch(request.payload)
        except CommandError as exc:
            raise error.BadRequest(str(exc)) from exc
        answer = await self.in_thread(self.pending, device, after)
        return aiocoap.Message(code=codes.CONTENT, payload=encode_commands(answer),
                               content_format=ContentFormat(CONTENT_FORMAT_CBOR))

    def pending(self, device: str, after: int) -> list[bytes]:
        """Runs in the ingest thread: the commands to hand out, marked delivered."""
        chosen, size = [], 0
        for command in self._desk.pending(device, after):
            if chosen and size + len(command.raw) > MAX_FETCH_ANSWER:
                break
            chosen.append(command.raw)
            size += len(command.raw)
            self._desk.store.mark_delivered(device, command.seq, time.time())
        return chosen
