"""The lender's CoAP endpoint: wires the floors (evidence, enrollment, coap) into one server over a data directory.

Layers, outside in:

* The datagram gate (lender.coap.gate): per-source budgets in front of
  aiocoap, so a flood is dropped unread; it reads whole UDP datagrams (an
  oversize single-datagram body gets 4.13, not a silently truncated read) and
  bounds aiocoap's de-duplication cache.
* aiocoap's UDP transport and message layer.
* `RegistryWatch`: before each request, picks up devices registered or
  revoked by another process and loads their OSCORE contexts, so a new
  device is served without a restart.
* `PlainRoutes` (lender.coap.routing): ``/n`` (insecure nodes), ``/enroll``,
  ``/installations`` and ``/enroll/sites/`` over plain CoAP; everything else,
  and every OSCORE request, goes to the OSCORE-protected site
  (lender.enrollment.contexts), unless the lender runs with ``--insecure``.
* ``/t`` (lender.coap.telemetry) and ``/n`` (lender.coap.node, nodes with a
  context) inside the protected site, with ``/c`` (a gateway fetches its
  commands) and ``/c/o`` (it observes the newest command issued to it; the
  server looks for new ones every `lender.coap.commands.CHECK_S` s, on the
  registry view's connection, for the observed devices only).

Work runs in two bounded lanes (lender.coap.resource): the ingest thread, the
evidence's one writer, for authenticated requests, and the strangers' lane
(lender.coap.screen), with its own store connection, for everything anyone
may send. A full lane answers 5.03 with Max-Age.

Bad input costs one answer, never the server: every request is answered and
every refusal goes to the quarantine's policy (lender.evidence.refusals),
whose counts this server flushes and whose log summary it writes, once a
second at most (`_housekeeping`).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import aiocoap
import aiocoap.pipe
from aiocoap import interfaces
from aiocoap.resource import Site, WKCResource

from lender.coap import gate
from lender.coap.commands import REFRESH_S, CommandNotices, CommandResource
from lender.coap.enroll import enrollment_routes
from lender.coap.node import node_routes, protected_node_resource
from lender.coap.resource import Busy, IngestThread
from lender.coap.screen import StrangersLane
from lender.coap.routing import PlainRoutes, Wrapper
from lender.coap.telemetry import TelemetryResource
from lender.enrollment import contexts as oscore
from lender.evidence.commands import CommandDesk
from lender.evidence.ingest import DEFAULT_MAX_BODY, Ingest, NodeIngest
from lender.evidence.log import lender_identity
from lender.evidence.refusals import Refusals
from lender.evidence.store import EvidenceStore
from lender.evidence.stores import open_store
from lender.evidence.tokens import token_key
from lender.exc import OscoreContextError, ServeError, StoreError
from telemetry.numbers import PATH_COMMANDS, PATH_NODE, PATH_TELEMETRY

log = logging.getLogger(__name__)

DEFAULT_PORT = 5683
UDP_DATAGRAM_MAX = 65536      # read whole datagrams (aiocoap reads 4096 bytes and drops the rest silently)
SERVE_LOCK = "serve.lock"     # held by the one lender serving a data directory
SWITCH_INTERVAL = 0.0005      # seconds a thread may hold the GIL while another waits


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


class RegistryWatch(Wrapper):
    """Loads the OSCORE contexts of devices registered since the last request, then passes the request on."""

    def __init__(self, inner: interfaces.Resource, refresh: Callable) -> None:
        super().__init__(inner)
        self._refresh = refresh

    async def render_to_pipe(self, pipe) -> None:
        await self._refresh()
        await self.inner.render_to_pipe(pipe)


# --- the server -------------------------------------------------------------------------------

class LenderServer:
    """The lender's CoAP endpoint over one data directory: `await start()`, serve, `await stop()`.

    With `store_url` (``postgresql://…``) the evidence and the OSCORE state
    live in PostgreSQL (lender.enrollment.shared), and several servers may
    serve the same store at once: `reuse_port` lets one join the others on
    their port (the kernel's SO_REUSEPORT group; lender.workers starts them).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        bind: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT),
        insecure: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        store_url: str | None = None,
        reuse_port: bool = False,
        gate_policy: gate.GatePolicy = gate.GatePolicy(),
        require_hardware_key: bool | None = None,
        notice_refresh: float = REFRESH_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.require_hardware_key = require_hardware_key  # True: enroll TPM-attested keys only; None: DATA's policy
        self.gate = gate.DatagramGate(gate_policy)
        self.store_url = store_url
        self.reuse_port = reuse_port
        self.bind = bind
        self.insecure = insecure
        self.max_body = max_body
        self.store: EvidenceStore | None = None
        self._registry_view: EvidenceStore | None = None  # a second connection, read in the event loop
        self.credentials: oscore.LenderCredentials | None = None
        self._thread: IngestThread | None = None
        self._strangers: StrangersLane | None = None
        self._housekeeping_task: asyncio.Task | None = None
        self._gate_window = 0.0  # when the gate's current summary window began (event loop time)
        self._context: aiocoap.Context | None = None
        self._generation: int | None = None
        self._lock_fd: int | None = None
        self.notice_refresh = notice_refresh   # seconds between notifications to every observer of /c/o (Max-Age)
        self.notices: CommandNotices | None = None
        self._notices_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.store = open_store(self.data_dir, self.store_url)
        # Every store call (a PostgreSQL round trip, an fsync) and every datagram read releases the GIL; with the
        # 5 ms default switch interval, a lane busy on a flood's junk would make the event loop wait that long to
        # get it back after each one (measured: honest acks at 200+ ms under flood, datagrams dropped by the kernel)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        try:
            if self.store_url is None:  # one SQLite lender per directory; a shared store has several
                self._lock_fd = lock_data_dir(self.data_dir)
            if not self.reuse_port:
                check_port_free(*self.bind)
            key = token_key(self.data_dir)
            refusals = Refusals()
            ingest = {"max_body": self.max_body, "token_key": key, "refusals": refusals,
                      "require_hardware_key": self.require_hardware_key}   # also: a rotation must keep the TPM proof
            self._thread = IngestThread(Ingest(self.store, **ingest))
            strangers_store = open_store(self.data_dir, self.store_url)  # the strangers' lane's own connection
            self._strangers = StrangersLane(
                strangers_store, Ingest(strangers_store, **ingest),
                NodeIngest(strangers_store, token_key=key, refusals=refusals), per_device=self.gate.policy.device,
                trust=self.gate.trust)
            # One indexed read per request; its own connection keeps it off the ingest thread's queue.
            self._registry_view = open_store(self.data_dir, self.store_url)
            self.credentials = self._credentials()
            await self._refresh()
            site = Site()
            site.add_resource(PATH_TELEMETRY, TelemetryResource(self._thread, self.credentials, max_body=self.max_body,
                                                                strangers=self._strangers))
            site.add_resource(PATH_NODE, protected_node_resource(self._thread, self.store, self.credentials, key))
            site.add_resource(PATH_COMMANDS, CommandResource(self._thread, self.credentials, CommandDesk(
                self.store, lender_identity(self.data_dir))))
            self.notices = CommandNotices(self.credentials, self._registry_view, refresh=self.notice_refresh)
            site.add_resource(self.notices.path, self.notices)
            site.add_resource((".well-known", "core"), WKCResource(site.get_resources_as_linkheader))
            protected = oscore.protected_site(gate.TrustAuthenticated(site, self.gate, self.credentials.device_of),
                                              self.credentials, insecure=self.insecure)
            routes, prefixes = enrollment_routes(self._strangers, self.data_dir,
                                                 require_hardware_key=self.require_hardware_key)
            routes.update(node_routes(self._thread, self.store, key, self._strangers))
            root = RegistryWatch(PlainRoutes(protected, routes, prefixes), self._refresh)
            try:
                self._context = await aiocoap.Context.create_server_context(root, bind=self.bind)
            except OSError as exc:
                raise ServeError(f"cannot listen on {self.bind[0]}:{self.bind[1]}: {exc.strerror or exc}") from exc
            gate.install(self._context, self.gate, max_datagram=UDP_DATAGRAM_MAX)
            self._housekeeping_task = asyncio.create_task(self._housekeeping())
            self._notices_task = asyncio.create_task(self.notices.watch(), name="command notices")
        except BaseException:
            await self.stop()
            raise

    def _credentials(self):
        if self.store_url is None:
            return oscore.LenderCredentials.load(self.data_dir / "oscore")
        from lender.enrollment.shared import SharedCredentials  # psycopg only with a PostgreSQL store

        return SharedCredentials.load(self.store_url, self.data_dir / "oscore")

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on: the real port when it was started with port 0."""
        if self._context is not None:
            for transport, _, _ in gate.udp_transports(self._context):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    return self.bind[0], sock.getsockname()[1]
        return self.bind

    async def answer(self, datagram: bytes, source: tuple[str, int] = ("127.0.0.1", 5683)) -> aiocoap.Message | None:
        """What this server answers the request in `datagram` from `source`, past the datagram gate and aiocoap's
        message layer (None for anything that is no request: unparsable, an ACK, a response). The in-process
        entry point of the lender's fuzzer (tests/kit/fuzz.py): the same resources, lanes and store."""
        try:
            request = aiocoap.Message.decode(datagram, gate.remote(self._context, *source))
        except Exception:  # unparsable (aiocoap raises more than UnparsableMessage): ignored, as the gate does
            return None
        if not request.code.is_request():
            return None
        answers: list[aiocoap.Message] = []

        def on_event(event) -> bool:
            if event.message is not None:
                answers.append(event.message)
            return False

        pipe = aiocoap.pipe.Pipe(request, log)
        pipe.on_event(on_event)
        with_errors = aiocoap.pipe.error_to_message(pipe, log)  # an exception becomes a 5.00, as aiocoap serves it
        try:
            await self._context.serversite.render_to_pipe(with_errors)
        except Exception as exc:
            with_errors.add_exception(exc)
        return answers[0] if answers else None

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

    async def _housekeeping(self) -> None:
        """Once a second: junk counted since the last flush goes to the store (in the ingest thread, unless it is
        busy), the refusals' log summary and the gate's drops are written when their window is over."""
        self._gate_window = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(1.0)
            ingest = self._thread.ingest
            ingest.refusals.tick()
            if ingest.refusals.flush_due():
                with contextlib.suppress(Busy, StoreError):
                    await self._thread.call(ingest.flush_refusals)
            if asyncio.get_running_loop().time() - self._gate_window >= ingest.refusals.log_window_s:
                self._log_gate_summary()

    def _log_gate_summary(self) -> None:
        """What the gate dropped and quieted since the last summary, in one line (nothing if nothing)."""
        now = asyncio.get_running_loop().time()
        dropped, hosts = self.gate.take_dropped()
        quieted = self.gate.chatter.take_quieted()
        if dropped or quieted:
            most = "; most from " + ", ".join(f"{host} ({count})" for host, count in hosts) if hosts else ""
            log.warning("datagram gate: %d datagrams over their sender's budget dropped unread in the last %.0f s%s; "
                        "%d of aiocoap's lines about single datagrams not logged", dropped, now - self._gate_window,
                        most, quieted)
        self._gate_window = now

    async def stop(self) -> None:
        """Stop answering, persist the OSCORE contexts' state, write the refusals counted, and close the store."""
        notices, self._notices_task = self._notices_task, None
        if notices is not None:
            notices.cancel()
            await asyncio.gather(notices, return_exceptions=True)
        task, self._housekeeping_task = self._housekeeping_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._thread.ingest.refusals.tick(final=True)
            self._log_gate_summary()
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
        if self.credentials is not None:
            self.credentials.close()
            self.credentials = None
        strangers, self._strangers = self._strangers, None
        if strangers is not None:
            strangers.close()  # flushes the refusals counted (its connection writes them)
            strangers.store.close()
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


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data directory: one lender serves one directory."""
    fd = os.open(data_dir / SERVE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ServeError(f"another lender is serving {data_dir} already; stop it first") from exc
    return fd


def check_port_free(host: str, port: int) -> None:
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
