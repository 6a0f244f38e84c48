"""``/enroll``, ``/installations`` and ``/enroll/sites``: the enrollment desk over plain CoAP.

A device has no OSCORE context before it is enrolled, so these are served
without one (lender.coap.routing puts them in front of the OSCORE site);
their messages are signed end to end instead (telemetry.enrollment). The
decisions are the desk's (lender.enrollment.desk), run in the strangers' lane
(lender.coap.screen: its own thread, queue and store connection, so a flood
of enrollment junk never waits in front of the evidence), each request
spending from the budget of the device it names. Refusals are logged through
the refusals' rate limit (lender.evidence.refusals).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import aiocoap
from aiocoap import error
from aiocoap.numbers import ContentFormat, codes

from lender.coap.blocks import BlockAssembly
from lender.coap.resource import LenderResource, peer_of
from lender.coap.screen import StrangersLane
from lender.enrollment.desk import Decision, EnrollmentDesk
from telemetry.enrollment import (
    MAX_REPORT,
    MAX_REQUEST,
    REPORT_LIMITS,
    EnrollmentRequest,
    InstallationReport,
    SiteRequest,
    parse_sign,
)
from telemetry.exc import WireFormatError
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

    def __init__(self, lane: StrangersLane, path: tuple[str, ...], decide: Callable[[bytes], Decision],
                 max_body: int, claim: Callable[[bytes], str | None] = lambda body: None) -> None:
        super().__init__(lane)  # type: ignore[arg-type]  # the strangers' lane, not the ingest thread
        self.path = path
        self._lane = lane
        self._decide = decide
        self._claim = claim
        self._assembly = BlockAssembly(max_body, max_uploads=MAX_DESK_UPLOADS)

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        if not self.is_cbor(request):
            raise error.UnsupportedContentFormat("send application/cbor (60)")
        body = self._assembly.feed(request)
        try:
            decision = await self._lane.call(self._lane.decide, self._claim, self._decide, body)
        except error.RenderableError:
            raise  # busy, or too many requests naming one device
        except Exception:
            log.exception("enrollment desk failed on a request")
            raise error.InternalServerError("the lender failed; nothing was recorded") from None
        if not decision.code.is_successful():
            self._lane.ingest.refusals.note(f"a request to /{'/'.join(self.path)} ({decision.code.dotted})",
                                            peer_of(request), "enrollment", decision.text)
        response = decision_message(decision)
        response.opt.block1 = request.opt.block1
        return response


class SitesForStrangers(LenderResource):
    """``/enroll/sites/<asset id>``, where anyone once could GET a site's address, fence, sensors and hours: 4.01."""

    path = PATH_SITES

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        raise error.Unauthorized("site files go only to registered technicians: POST /enroll/sites a site request "
                                 "signed with your technician key (pledgewatch provision gateway --asset does)")


def enrolling_device(body: bytes) -> str | None:
    """The device an enrollment request names (None if it is no request): whose budget it spends."""
    try:
        return EnrollmentRequest.decode(body).body.device
    except WireFormatError:
        return None


def reporting_device(body: bytes) -> str | None:
    """The device an installation report names (None if it is no report)."""
    try:
        return InstallationReport.decode(parse_sign(body, REPORT_LIMITS)[0]).device
    except WireFormatError:
        return None


def requesting_technician(body: bytes) -> str | None:
    """The technician a site request names (None if it is no request): whose budget it spends."""
    try:
        return SiteRequest.parse(body)[0].technician
    except WireFormatError:
        return None


def enrollment_routes(lane: StrangersLane, data_dir, *, require_hardware_key: bool | None = None
                      ) -> tuple[dict, dict]:
    """The plain-CoAP routes and route prefixes lender.server puts in front of the OSCORE site: (routes, prefixes).
    The desk works on `lane`'s own store connection; `require_hardware_key` True enrolls TPM-attested keys only
    (None: as DATA/enroll/policy.toml says)."""
    desk = EnrollmentDesk(data_dir, lane.store, require_hardware_key=require_hardware_key)
    routes = {PATH_ENROLL: DeskResource(lane, PATH_ENROLL, desk.enroll, MAX_REQUEST, enrolling_device),
              PATH_INSTALLATIONS: DeskResource(lane, PATH_INSTALLATIONS, desk.report, MAX_REPORT, reporting_device),
              PATH_SITES: DeskResource(lane, PATH_SITES, desk.site, MAX_REQUEST, requesting_technician)}
    return routes, {PATH_SITES: SitesForStrangers(lane)}  # type: ignore[arg-type]
