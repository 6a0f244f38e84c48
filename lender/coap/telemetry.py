"""``/t``: gateways POST batches of envelopes here, under OSCORE (docs/transport.md).

POST only, content-format 60; the body assembled from Block1 with a cap
(lender.coap.blocks); then `Ingest.batch` in the ingest thread; the answer is
2.04 with the ack (a long ack goes out in Block2 blocks), or 4.00 / 4.01 /
4.03 / 4.13 / 4.15 with a diagnostic text, or 5.03 if storage failed or the
ingest thread's queue is full. Refused bodies, oversize ones included, go to
the quarantine's policy (lender.evidence.refusals). A plain-CoAP request
(only a lender run with --insecure takes one) is screened in the strangers'
lane first (lender.coap.screen), like any unauthenticated request.
"""
from __future__ import annotations

import functools
import logging

import aiocoap
from aiocoap.blockwise import Block2Cache, IncompleteException

from lender.coap.blocks import BlockAssembly, TooLarge
from lender.coap.resource import IngestThread, LenderResource, outcome_message, peer_of
from lender.coap.screen import StrangersLane
from lender.enrollment.contexts import LenderCredentials
from lender.evidence.ingest import Status
from telemetry.numbers import PATH_TELEMETRY

log = logging.getLogger(__name__)


class TelemetryResource(LenderResource):
    """``/t``: one batch of envelopes per request, from an OSCORE-authenticated gateway (or any, with --insecure)."""

    path = PATH_TELEMETRY
    resource_type = "pledgewatch.telemetry"

    def __init__(self, thread: IngestThread, credentials: LenderCredentials | None, *, max_body: int,
                 strangers: StrangersLane | None = None) -> None:
        super().__init__(thread)
        self._credentials = credentials
        self._strangers = strangers
        self._assembly = BlockAssembly(max_body)
        self._responses = Block2Cache()

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            return await self._responses.extract_or_insert(request, _no_response)  # the rest of a long ack
        peer = peer_of(request)
        sender = self._credentials.device_of(request) if self._credentials is not None else None
        strangers = self._strangers if sender is None else None
        lane, ingest = (self.thread, self.thread.ingest) if strangers is None else (strangers, strangers.ingest)
        try:
            body = self._assembly.feed(request)
        except TooLarge as refusal:
            await self.in_lane(lane, ingest.refuse_request, Status.TOO_LARGE, refusal.message, refusal.partial,
                               peer=peer, size=refusal.size, attributable=sender is not None)
            raise
        if not self.is_cbor(request):
            outcome = await self.in_lane(
                lane, ingest.refuse_request, Status.UNSUPPORTED_FORMAT,
                f"content-format {int(request.opt.content_format)} is not application/cbor (60)", body, peer=peer,
                attributable=sender is not None)
        else:
            outcome = None if strangers is None else await self.in_lane(strangers, strangers.screen_batch, body,
                                                                        peer=peer)
            if outcome is None:
                outcome = await self.in_thread(self.thread.ingest.batch, body, peer=peer, sender=sender)
                if strangers is not None:
                    strangers.vouched(request, outcome)
        response = outcome_message(outcome)
        response.opt.block1 = request.opt.block1
        return await self._responses.extract_or_insert(request, functools.partial(_ready, response))


async def _no_response():
    raise IncompleteException()  # a Block2 request for an ack that is not (or no longer) cached: 4.08


async def _ready(response: aiocoap.Message) -> aiocoap.Message:
    return response
