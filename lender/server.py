"""The lender's CoAP server (aiocoap): the telemetry resource ``/t`` in front of the ingest logic.

Layers, outside in:

* aiocoap's UDP transport and message layer (deduplication, piggybacked or
  separate responses). Its receive buffer is raised to a whole UDP datagram so
  that an oversize single-datagram body gets 4.13, not a silently truncated read.
* `_RegistryWatch`: before each request, picks up devices registered or
  revoked by `pledgewatch lender register/revoke` (another process) and loads
  their OSCORE contexts, so a new device is served without a restart.
* OSCORE (lender.oscore.protected_site): requests must be OSCORE-protected
  unless the lender runs with ``--insecure``.
* `TelemetryResource` (``/t``): POST only, content-format 60; its own Block1
  reassembly (RFC 7959) with a total-size cap and a bound on concurrent
  assemblies (aiocoap's ``Block1Spool`` has neither); then `Ingest.batch` in
  the single ingest thread, so signature checks never stall the event loop and
  storage stays one writer; the answer is 2.04 with the ack, or 4.00 / 4.01 /
  4.03 / 4.13 / 4.15 with a diagnostic text, or 5.03 if storage failed (nothing
  was acked, the agent retries).

Bad input costs one answer, never the server: every request is answered and
every refusal is kept in the quarantine (see lender.ingest).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiocoap
from aiocoap import interfaces
from aiocoap.blockwise import Block2Cache, IncompleteException
from aiocoap.numbers import ContentFormat, codes
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.resource import Site, WKCResource

from lender import oscore
from lender.exc import OscoreContextError, ServeError, StoreError
from lender.ingest import DEFAULT_MAX_BODY, BatchOutcome, Ingest, Status
from lender.routing import PlainRoutes, Wrapper
from lender.store import SQLiteStore

log = logging.getLogger(__name__)

TELEMETRY_PATH = ("t",)
CBOR_FORMAT = 60
DEFAULT_PORT = 5683
MAX_ASSEMBLIES = 256          # concurrent Block1 uploads held at once (memory <= this x max_body)
ASSEMBLY_LIFETIME = 93.0      # RFC 7252 MAX_TRANSMIT_WAIT: a client gives up on an upload after this
UDP_DATAGRAM_MAX = 65536      # read whole datagrams (aiocoap reads 4096 bytes and drops the rest silently)
RETRY_AFTER = 30              # Max-Age of a 5.03 when storage failed
SERVE_LOCK = "serve.lock"     # held by the one lender serving a data directory

_STATUS_CODE = {
    Status.CHANGED: codes.CHANGED,
    Status.BAD_REQUEST: codes.BAD_REQUEST,
    Status.UNAUTHORIZED: codes.UNAUTHORIZED,
    Status.FORBIDDEN: codes.FORBIDDEN,
    Status.TOO_LARGE: codes.REQUEST_ENTITY_TOO_LARGE,
    Status.UNSUPPORTED_FORMAT: codes.UNSUPPORTED_CONTENT_FORMAT,
}


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` (port 5683) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        inside, _, rest = text[1:].partition("]")
        host, port = inside, rest[1:] if rest.startswith(":") else str(DEFAULT_PORT)
    elif not sep or ":" in host:  # no port, or a bare IPv6 address
        host, port = text, str(DEFAULT_PORT)
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number <= 65535:
        raise ServeError(f"bind address {text!r} is not HOST:PORT (for example 127.0.0.1:5683 or [::1]:5683)")
    return host, number


# --- Block1 reassembly with a cap -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Complete:
    """The whole body has arrived."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer this block now: 2.31 Continue, or a refusal. `oversize`: the size that broke the cap."""

    code: aiocoap.numbers.codes.Code
    text: str = ""
    oversize: int | None = None
    partial: bytes = b""


class BlockAssembly:
    """Reassembles Block1 uploads (RFC 7959 §2.5) without ever holding more than `max_body` bytes per upload.

    Refuses with 4.13 (and Size1 = the cap) as soon as a Size1 indication or
    the bytes received exceed the cap; 4.08 for a block with no upload in
    progress; 4.00 for a block whose size does not match its Block1 option.
    At most `max_uploads` uploads are held; the oldest is dropped first.
    """

    def __init__(self, max_body: int, *, max_uploads: int = MAX_ASSEMBLIES,
                 lifetime: float = ASSEMBLY_LIFETIME, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_body = max_body
        self.max_uploads = max_uploads
        self.lifetime = lifetime
        self._clock = clock
        self._uploads: OrderedDict[tuple, tuple[float, bytearray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._uploads)

    @staticmethod
    def _key(request: aiocoap.Message) -> tuple:
        return (
            request.remote.blockwise_key,
            request.code,
            request.get_cache_key([OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.SIZE1]),
        )

    def feed(self, request: aiocoap.Message) -> Complete | Answer:
        block1 = request.opt.block1
        payload = request.payload
        if block1 is None:
            if len(payload) > self.max_body:
                return Answer(codes.REQUEST_ENTITY_TOO_LARGE, self._too_large(len(payload)), len(payload), payload)
            return Complete(payload)
        now = self._clock()
        while self._uploads:
            key, (started, _) = next(iter(self._uploads.items()))
            if now - started <= self.lifetime:
                break
            del self._uploads[key]
        key = self._key(request)
        if block1.block_number == 0:
            self._uploads.pop(key, None)  # a new upload replaces an unfinished one (RFC 7959 §2.5)
            size1 = request.opt.size1
            if size1 is not None and size1 > self.max_body:
                return Answer(codes.REQUEST_ENTITY_TOO_LARGE, self._too_large(size1), size1, payload)
            data = bytearray()
            self._uploads[key] = (now, data)
            while len(self._uploads) > self.max_uploads:
                self._uploads.popitem(last=False)
        else:
            entry = self._uploads.get(key)
            if entry is None:
                return Answer(codes.REQUEST_ENTITY_INCOMPLETE,
                              f"block {block1.block_number} arrived with no upload in progress; start again at block 0")
            data = entry[1]
        if block1.more and (block1.size_exponent == 7 or len(payload) != block1.size):
            self._uploads.pop(key, None)
            return Answer(codes.BAD_REQUEST, f"block {block1.block_number} carries {len(payload)} bytes, "
                                             f"its Block1 option says {block1.size}")
        if block1.start != len(data):
            if block1.start < len(data) and data[block1.start:block1.start + len(payload)] == payload and block1.more:
                return Answer(codes.CONTINUE)  # a block we have already (a repeated request)
            self._uploads.pop(key, None)
            return Answer(codes.REQUEST_ENTITY_INCOMPLETE,
                          f"block {block1.block_number} starts at byte {block1.start}, expected {len(data)}")
        if len(data) + len(payload) > self.max_body:
            self._uploads.pop(key, None)
            total = len(data) + len(payload)
            return Answer(codes.REQUEST_ENTITY_TOO_LARGE, self._too_large(total, at_least=True), total, bytes(data))
        data += payload
        if block1.more:
            return Answer(codes.CONTINUE)
        self._uploads.pop(key, None)
        return Complete(bytes(data))

    def _too_large(self, size: int, *, at_least: bool = False) -> str:
        return f"body of {'at least ' if at_least else ''}{size} bytes is over the {self.max_body}-byte cap"


# --- the ingest thread ----------------------------------------------------------------------

class IngestThread:
    """One thread that owns the store: ingest decisions and registry reads run there, one at a time."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.store = ingest.store
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lender-ingest")

    async def call(self, function: Callable, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _peer(request: aiocoap.Message) -> str:
    remote = request.remote
    underlying = getattr(remote, "underlying_address", remote)
    try:
        text = underlying.hostinfo
    except Exception:  # an address type without hostinfo: still name it
        text = repr(underlying)
    return text if underlying is remote else f"{text} (OSCORE)"


class TelemetryResource(interfaces.Resource):
    """``/t``: gateways POST batches of envelopes here (docs/transport.md)."""

    def __init__(self, ingest: IngestThread, credentials: oscore.LenderCredentials | None, *, max_body: int) -> None:
        super().__init__()
        self._ingest = ingest
        self._credentials = credentials
        self._assembly = BlockAssembly(max_body)
        self._responses = Block2Cache()  # a long ack goes out in Block2 blocks

    def get_link_description(self) -> dict:
        return {"ct": str(CBOR_FORMAT), "rt": "pledgewatch.telemetry"}

    async def render(self, request):
        raise RuntimeError("TelemetryResource is used through render_to_pipe only")

    async def needs_blockwise_assembly(self, request):
        return False  # this resource assembles Block1 itself, with a cap

    async def render_to_pipe(self, pipe) -> None:
        request = pipe.request
        response = await self._respond(request)
        pipe.add_response(response, is_last=True)

    async def _respond(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.code != codes.POST:
            return _text(codes.METHOD_NOT_ALLOWED, "only POST is allowed on /t")
        block2 = request.opt.block2
        if block2 is not None and block2.block_number > 0:
            return await self._responses.extract_or_insert(request, _no_response)  # the rest of a long ack
        peer = _peer(request)
        step = self._assembly.feed(request)
        if isinstance(step, Answer):
            if step.code == codes.CONTINUE:
                response = aiocoap.Message(code=codes.CONTINUE)
                response.opt.block1 = request.opt.block1
                return response
            if step.oversize is not None:
                await self._ingest.call(self._ingest.ingest.refuse_request, Status.TOO_LARGE, step.text,
                                        step.partial, peer=peer, size=step.oversize)
                response = _text(codes.REQUEST_ENTITY_TOO_LARGE, step.text)
                response.opt.size1 = self._assembly.max_body
                return response
            log.info("block-wise upload from %s refused with %s: %s", peer, step.code, step.text)
            return _text(step.code, step.text)
        body = step.body
        if request.opt.content_format not in (None, CBOR_FORMAT):
            outcome = await self._ingest.call(
                self._ingest.ingest.refuse_request, Status.UNSUPPORTED_FORMAT,
                f"content-format {int(request.opt.content_format)} is not application/cbor (60)", body, peer=peer)
        else:
            sender = self._credentials.device_of(request) if self._credentials is not None else None
            try:
                outcome = await self._ingest.call(self._ingest.ingest.batch, body, peer=peer, sender=sender)
            except StoreError as exc:
                log.error("batch from %s not stored, answered 5.03 (the sender retries): %s", peer, exc)
                response = _text(codes.SERVICE_UNAVAILABLE, "storage unavailable; nothing was stored, retry later")
                response.opt.max_age = RETRY_AFTER
                return response
        response = _answer(outcome)
        response.opt.block1 = request.opt.block1
        return await self._responses.extract_or_insert(request, functools.partial(_ready, response))


async def _no_response():
    raise IncompleteException()  # a Block2 request for an ack that is not (or no longer) cached: 4.08


async def _ready(response: aiocoap.Message) -> aiocoap.Message:
    return response


def _text(code, text: str) -> aiocoap.Message:
    return aiocoap.Message(code=code, payload=text.encode("utf-8"))


def _answer(outcome: BatchOutcome) -> aiocoap.Message:
    if outcome.status is Status.CHANGED:
        return aiocoap.Message(code=codes.CHANGED, payload=outcome.ack(), content_format=ContentFormat(CBOR_FORMAT))
    return _text(_STATUS_CODE[outcome.status], outcome.diagnostic)


class _RegistryWatch(Wrapper):
    """Loads the OSCORE contexts of devices registered since the last request, then passes the request on."""

    def __init__(self, inner: interfaces.Resource, refresh: Callable) -> None:
        super().__init__(inner)
        self._refresh = refresh

    async def render_to_pipe(self, pipe) -> None:
        await self._refresh()
        await self.inner.render_to_pipe(pipe)


# --- the server -------------------------------------------------------------------------------

class LenderServer:
    """The lender's CoAP endpoint over one data directory: `await start()`, serve, `await stop()`."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        bind: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
        insecure: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.insecure = insecure
        self.max_body = max_body
        self.store: SQLiteStore | None = None
        self._registry_view: SQLiteStore | None = None  # a second connection, read in the event loop
        self.credentials: oscore.LenderCredentials | None = None
        self._thread: IngestThread | None = None
        self._context: aiocoap.Context | None = None
        self._generation: int | None = None
        self._lock_fd: int | None = None

    async def start(self) -> None:
        self.store = SQLiteStore.open(self.data_dir)
        try:
            self._lock_fd = _lock_data_dir(self.data_dir)
            _check_port_free(*self.bind)
            self._thread = IngestThread(Ingest(self.store, max_body=self.max_body))
            # One indexed read per request; its own connection keeps it off the ingest thread's queue.
            self._registry_view = SQLiteStore.open(self.data_dir)
            self.credentials = oscore.LenderCredentials.load(self.data_dir / "oscore")
            await self._refresh()
            site = Site()
            site.add_resource(TELEMETRY_PATH, TelemetryResource(self._thread, self.credentials, max_body=self.max_body))
            site.add_resource((".well-known", "core"), WKCResource(site.get_resources_as_linkheader))
            protected = oscore.protected_site(site, self.credentials, insecure=self.insecure)
            # NB-IoT nodes POST signed envelopes to /n over plain CoAP (lender.node, docs/firmware.md);
            # imported here because lender.node builds on this module.
            from lender.node import node_routes
            # Devices without an OSCORE context yet enroll over plain CoAP: /enroll and /installations
            # (lender.enroll; its messages are signed end to end instead).
            from lender.enroll import enrollment_routes
            routes, prefixes = enrollment_routes(self._thread, self.store, self.data_dir)
            routes.update(node_routes(self._thread, self.store))
            root = _RegistryWatch(PlainRoutes(protected, routes, prefixes), self._refresh)
            try:
                self._context = await aiocoap.Context.create_server_context(root, bind=self.bind)
            except OSError as exc:
                raise ServeError(f"cannot listen on {self.bind[0]}:{self.bind[1]}: {exc.strerror or exc}") from exc
            _read_whole_datagrams(self._context)
        except BaseException:
            await self.stop()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on: the real port when it was started with port 0."""
        if self._context is not None:
            for transport in _udp_transports(self._context):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    return self.bind[0], sock.getsockname()[1]
        return self.bind

    async def _refresh(self) -> None:
        """Pick up registry changes made by other processes (register, revoke)."""
        try:
            generation = self._registry_view.registry_generation()
            if generation == self._generation:
                return
            devices = self._registry_view.devices()
        except StoreError as exc:  # serve on with the contexts already loaded
            log.error("cannot read the device registry, new registrations are not picked up yet: %s", exc)
            return
        for device in devices:
            if device.oscore_context and device.device not in self.credentials:
                try:
                    self.credentials.add(device.device)
                except OscoreContextError as exc:
                    log.error("device %s: OSCORE context not loaded, its protected requests get 4.01: %s",
                              device.device, exc)
        self._generation = generation

    async def stop(self) -> None:
        """Stop answering, persist the OSCORE contexts' state, and close the store."""
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
        if self.credentials is not None:
            self.credentials.close()
            self.credentials = None
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.close()
        for store in (self.store, self._registry_view):
            if store is not None:
                store.close()
        self.store = self._registry_view = None
        lock_fd, self._lock_fd = self._lock_fd, None
        if lock_fd is not None:
            os.close(lock_fd)

    async def __aenter__(self) -> LenderServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory: one lender serves one directory."""
    fd = os.open(data_dir / SERVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ServeError(f"another lender is serving {data_dir} already; stop it first") from exc
    return fd


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another socket holds. aiocoap binds with SO_REUSEPORT, so a second lender on the same
    port would otherwise start quietly and take a share of the devices' requests."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from exc
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _udp_transports(context: aiocoap.Context) -> list:
    """The datagram transports under an aiocoap context (token manager -> message manager -> UDP interface)."""
    found = []
    for token_manager in context.request_interfaces:
        message_interface = getattr(getattr(token_manager, "token_interface", None), "message_interface", None)
        transport = getattr(message_interface, "transport", None)
        if transport is not None:
            found.append(transport)
    return found


def _read_whole_datagrams(context: aiocoap.Context) -> None:
    """Raise aiocoap's receive buffer to a whole UDP datagram (it reads 4096 bytes and ignores MSG_TRUNC)."""
    raised = 0
    for transport in _udp_transports(context):
        if hasattr(transport, "max_size"):
            transport.max_size = UDP_DATAGRAM_MAX
            raised += 1
    if not raised:
        log.warning("could not raise the CoAP receive buffer: datagrams over 4096 bytes will be read truncated")


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) about our state, when it is listening; a no-op otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", address, exc)
