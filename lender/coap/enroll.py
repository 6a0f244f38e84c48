"""``/enroll``, ``/installations`` and ``/enroll/sites/<asset>``: the enrollment desk over plain CoAP.

A device has no OSCORE context before it is enrolled, so these are served
without one (lender.coap.routing puts them in front of the OSCORE site);
their messages are signed end to end instead (telemetry.enrollment). The
decisions are the desk's (lender.enrollment.desk), run in the ingest thread.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import aiocoap
import aiocoap.resource
from aiocoap import error
from aiocoap.numbers import ContentFormat, codes

from lender.coap.blocks import BlockAssembly
from lender.coap.resource import IngestThread, LenderResource
from lender.enrollment.desk import Decision, EnrollmentDesk
from telemetry.enrollment import MAX_REPORT, MAX_REQUEST
from telemetry.numbers import (
    CONTENT_FORMAT_CBOR,
    PATH_ENROLL,
    PATH_INSTALLATIONS,
    PATH_SITES,
)

log = logging.getLogger(__name__)

MAX_DESK_UPLOADS = 32


def decision_message(decision: Decision) -> aiocoap.Message:
    response = aiocoap.Message(code=decision.code, payload=decision.payload)
    if decision.signed:
        response.opt.content_format = ContentFormat(CONTENT_FORMAT_CBOR)
    return response


class DeskResource(LenderResource):
    """POST a signed message (CBOR, Block1 reassembled with a cap); the desk's decision is the answer."""

    def __init__(self, thread: IngestThread, path: tuple[str, ...], decide: Callable[[bytes], Decision],
                 max_body: int) -> None:
        super().__init__(thread)
        self.path = path
        self._decide = decide
        self._assembly = BlockAssembly(max_body, max_uploads=MAX_DESK_UPLOADS)

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        if not self.is_cbor(request):
            raise error.UnsupportedContentFormat("send application/cbor (60)")
        body = self._assembly.feed(request)
        try:
            decision = await self.thread.call(self._decide, body)
        except Exception:
            log.exception("enrollment desk failed on a request")
            raise error.InternalServerError("the lender failed; nothing was recorded") from None
        if decision.code != codes.CREATED:
            log.warning("refused %s: %s %s", "/".join(request.opt.uri_path), decision.code, decision.text)
        response = decision_message(decision)
        response.opt.block1 = request.opt.block1
        return response


class SiteResource(aiocoap.resource.Resource):
    """``GET /enroll/sites/<asset id>``: small, so aiocoap's own Block2 handling serves it."""

    def __init__(self, thread: IngestThread, desk: EnrollmentDesk) -> None:
        super().__init__()
        self._thread = thread
        self._desk = desk

    async def render_get(self, request):
        path = request.opt.uri_path
        if len(path) != len(PATH_SITES) + 1:
            return aiocoap.Message(code=codes.NOT_FOUND, payload=b"GET /enroll/sites/<asset id>")
        return decision_message(await self._thread.call(self._desk.site, path[-1]))


def enrollment_routes(thread: IngestThread, store, data_dir) -> tuple[dict, dict]:
    """The plain-CoAP routes and route prefixes lender.server puts in front of the OSCORE site: (routes, prefixes)."""
    desk = EnrollmentDesk(data_dir, store)
    routes = {PATH_ENROLL: DeskResource(thread, PATH_ENROLL, desk.enroll, MAX_REQUEST),
              PATH_INSTALLATIONS: DeskResource(thread, PATH_INSTALLATIONS, desk.report, MAX_REPORT)}
    return routes, {PATH_SITES: SiteResource(thread, desk)}
