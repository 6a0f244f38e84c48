"""The base of the lender's CoAP resources: POST-only, refusals that render themselves, work in bounded lanes.

A resource derives from `LenderResource` and implements `respond`. Anything
it refuses it raises as an aiocoap `RenderableError` (BadRequest,
RequestEntityTooLarge, ...; `StorageUnavailable` and `Busy` for a 5.03 with
Max-Age); `render_to_pipe` turns it into the response, as aiocoap's own site
does.

Work that blocks runs in a `Lane`: one thread and a bounded queue, so signature
checks and storage never stall the event loop, and work that does not fit is
answered 5.03 with Max-Age at once (`Busy`) instead of waiting without bound.
There are two lanes (lender.server wires them): the `IngestThread`, the
evidence store's one writer, which takes only authenticated work (OSCORE
requests, envelopes whose signature verified), and the strangers' lane
(lender.coap.screen), where unauthenticated requests are checked first, so a
flood of them fills only their own queue. A `StoreError` in the ingest thread
becomes a 5.03 (nothing was stored, the sender retries).
"""
from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable

import aiocoap
from aiocoap import error, interfaces
from aiocoap.numbers import ContentFormat, codes

from lender.evidence.ingest import BatchOutcome, Ingest, Status
from lender.exc import StoreError
from telemetry.numbers import CONTENT_FORMAT_CBOR

log = logging.getLogger(__name__)

RETRY_AFTER = 30              # Max-Age of a 5.03 when storage failed
BUSY_RETRY = 5                # Max-Age of a 5.03 when a lane's queue is full
INGEST_DEPTH = 64             # requests waiting for the ingest thread, at most (each holds its body: <= 64 x max body)

STATUS_CODES = {
    Status.CHANGED: codes.CHANGED,
    Status.BAD_REQUEST: codes.BAD_REQUEST,
    Status.UNAUTHORIZED: codes.UNAUTHORIZED,
    Status.FORBIDDEN: codes.FORBIDDEN,
    Status.TOO_LARGE: codes.REQUEST_ENTITY_TOO_LARGE,
    Status.UNSUPPORTED_FORMAT: codes.UNSUPPORTED_CONTENT_FORMAT,
}


class StorageUnavailable(error.ServiceUnavailable):
    """5.03 with Max-Age: the store failed, nothing was stored; the sender retries after `RETRY_AFTER` s."""

    message = "storage unavailable; nothing was stored, retry later"

    def to_message(self) -> aiocoap.Message:
        response = super().to_message()
        response.opt.max_age = RETRY_AFTER
        return response


class Busy(error.ServiceUnavailable):
    """5.03 with Max-Age: the lane this request needs is full; nothing was done, retry after `BUSY_RETRY` s."""

    def __init__(self, lane: str) -> None:
        super().__init__(f"the lender is busy ({lane}); nothing was done, retry in {BUSY_RETRY} s")

    def to_message(self) -> aiocoap.Message:
        response = super().to_message()
        response.opt.max_age = BUSY_RETRY
        return response


class Lane:
    """One worker thread and at most `depth` calls waiting for it: a call that does not fit raises `Busy` at once."""

    def __init__(self, name: str, *, depth: int) -> None:
        if depth < 1:
            raise ValueError("a lane's depth must be positive")
        self.name = name
        self.depth = depth
        self.pending = 0          # calls submitted and not finished; read and written in the event loop only
        self.refused = 0          # calls refused as Busy since the start
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, function: Callable, *args, **kwargs):
        if self.pending >= self.depth:
            self.refused += 1
            raise Busy(self.name)
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class IngestThread(Lane):
    """The lane that owns the evidence store: ingest decisions run there, one at a time, for authenticated work."""

    def __init__(self, ingest: Ingest, *, depth: int = INGEST_DEPTH) -> None:
        super().__init__("lender-ingest", depth=depth)
        self.ingest = ingest
        self.store = ingest.store


def peer_of(request: aiocoap.Message) -> str:
    """Who sent `request`, for logs and the quarantine: host and port, marked when it came through OSCORE."""
    remote = request.remote
    underlying = getattr(remote, "underlying_address", remote)
    try:
        text = underlying.hostinfo
    except Exception:  # an address type without hostinfo: still name it
        text = repr(underlying)
    return text if underlying is remote else f"{text} (OSCORE)"


def text_message(code: codes.Code, text: str) -> aiocoap.Message:
    return aiocoap.Message(code=code, payload=text.encode("utf-8"))


def outcome_message(outcome: BatchOutcome) -> aiocoap.Message:
    """2.04 with the ack, or the refusal's code with its diagnostic text."""
    if outcome.status is Status.CHANGED:
        return aiocoap.Message(code=codes.CHANGED, payload=outcome.ack(), content_format=ContentFormat(CONTENT_FORMAT_CBOR))
    return text_message(STATUS_CODES[outcome.status], outcome.diagnostic)


class LenderResource(interfaces.Resource, abc.ABC):
    """A lender resource: answers through `respond`, raising refusals; store work goes through `in_thread`."""

    path: tuple[str, ...] = ()
    resource_type = ""

    def __init__(self, thread: IngestThread) -> None:
        super().__init__()
        self.thread = thread

    def get_link_description(self) -> dict:
        return {"ct": str(CONTENT_FORMAT_CBOR), "rt": self.resource_type} if self.resource_type else {}

    async def render(self, request):
        raise RuntimeError(f"{type(self).__name__} is used through render_to_pipe only")

    async def needs_blockwise_assembly(self, request):
        return False  # bodies are assembled by lender.coap.blocks, with a cap

    async def render_to_pipe(self, pipe) -> None:
        try:
            response = await self.respond(pipe.request)
        except error.RenderableError as refusal:
            response = refusal.to_message()
        pipe.add_response(response, is_last=True)

    @abc.abstractmethod
    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        """The response to `request`; raise a `RenderableError` to refuse it."""

    def require_post(self, request: aiocoap.Message) -> None:
        if request.code != codes.POST:
            raise error.MethodNotAllowed(f"only POST is allowed on /{'/'.join(self.path)}")

    @staticmethod
    def is_cbor(request: aiocoap.Message) -> bool:
        return request.opt.content_format in (None, CONTENT_FORMAT_CBOR)

    async def in_thread(self, function: Callable, *args, **kwargs):
        """Run `function` in the ingest thread; a store failure becomes a 5.03 (nothing stored, retry later)."""
        return await self.in_lane(self.thread, function, *args, **kwargs)

    async def in_lane(self, lane: Lane, function: Callable, *args, **kwargs):
        """Run `function` in `lane`: `Busy` when its queue is full; a store failure becomes a 5.03."""
        try:
            return await lane.call(function, *args, **kwargs)
        except StoreError as exc:
            log.error("request to /%s not stored, answered 5.03 (the sender retries): %s", "/".join(self.path), exc)
            raise StorageUnavailable() from exc
