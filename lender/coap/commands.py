"""``/c``: a gateway fetches the lender's pending signed commands (telemetry.command), under OSCORE only.

POST {1: last applied command seq} (content-format 60); the answer is 2.05
with a CBOR array of the device's pending commands above that seq, oldest
first, each the exact COSE_Sign1 bytes the lender signed, as many as fit in
`MAX_FETCH_ANSWER` bytes (the gateway asks again for the rest). The device is the
one whose OSCORE context protected the request: a plain request, or one that
names another device, gets nothing. Commands handed out are marked delivered.

``/c/o`` (`CommandNotices`): the gateway observes it (RFC 7641, a GET with
Observe 0 under its OSCORE context, as aiocoap sends it: an outer FETCH) and
is told, in every notification, the newest command seq the lender issued to
it, in the fetch body's shape {1: seq} (`telemetry.command.encode_fetch`).
A notification carries no command: the gateway fetches /c for that, so the
order and replay rules stay in one place. The server learns of commands
issued by another process (the `lender inspect|permit|configure` CLI, another
worker) by looking up the newest seq of every observed device every
`CHECK_S` seconds on the server's registry view (a store connection read in
the event loop; looks spaced out so they take at most `LOOK_SHARE` of it,
for a fleet of observers); every `REFRESH_S` seconds it
notifies every observer anyway (Max-Age = `REFRESH_S`), so a gateway that
hears nothing for longer knows its observation is lost (a lender restart, a
worker that died) and registers again. Only the device's own OSCORE context
observes its commands; there is no device in the request to name another,
and a device's new registration ends its older ones (a final answer without
Observe), so observations lost by the gateway do not pile up.
The gateway still polls /c, slower while it observes (agent.daemon), and
after an outage fetches what it missed, in order.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiocoap
from aiocoap import error
from aiocoap.numbers import ContentFormat, codes
from aiocoap.resource import ObservableResource

from lender.coap.resource import IngestThread, LenderResource
from lender.evidence.commands import CommandDesk
from lender.exc import StoreError
from telemetry.command import MAX_FETCH_ANSWER, decode_fetch, encode_commands, encode_fetch
from telemetry.exc import CommandError
from telemetry.numbers import CONTENT_FORMAT_CBOR, PATH_COMMAND_NOTICES, PATH_COMMANDS

log = logging.getLogger(__name__)

CHECK_S = 0.1       # seconds between looks at the store for commands issued to observing devices (bench/commands.py)
LOOK_SHARE = 0.05   # the looks take at most this share of the event loop: with many observers they space out
REFRESH_S = 60.0    # every observer is notified at least this often (the notifications' Max-Age)

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


def newest_issued(store, device: str) -> int:
    """The newest command seq the lender issued to `device` (0 for none): one indexed read of its commands."""
    issued = store.issued_commands(device)
    return issued[-1].seq if issued else 0


class CommandNotices(ObservableResource):
    """``/c/o``: observed by a gateway under its own OSCORE context; each notification is {1: newest issued seq}.

    `view` is a store connection read in the event loop (the server's registry
    view): the first answer of an observation reads it; `watch()` looks at
    it every `check` seconds for the observed devices only and notifies a
    device's observers when its newest seq changed, and every observer every
    `refresh` seconds. A request without a device's context gets 4.01 and no
    observation; nothing in the request names a device, so none can observe
    another's.
    """

    path = PATH_COMMAND_NOTICES

    def __init__(self, credentials, view, *, check: float = CHECK_S, refresh: float = REFRESH_S,
                 newest: Callable[[object, str], int] = newest_issued) -> None:
        super().__init__()
        self._credentials = credentials
        self._view = view
        self._newest_of = newest
        self.check = check
        self.refresh = refresh
        self.newest: dict[str, int] = {}                 # device -> newest issued seq, as last notified
        self._observers: dict[str, set] = {}            # device -> its ServerObservations
        self.looks = 0                                   # store looks made
        self.look_time = 0.0                             # seconds spent in them

    def get_link_description(self) -> dict:
        return {**super().get_link_description(), "ct": str(CONTENT_FORMAT_CBOR), "rt": "pledgewatch.commands.notices"}

    def _device(self, request) -> str:
        device = self._credentials.device_of(request) if self._credentials is not None else None
        if device is None:
            raise error.Unauthorized("command notices are observed under the device's own OSCORE context only")
        return device

    async def add_observation(self, request, serverobservation) -> None:
        device = self._credentials.device_of(request) if self._credentials is not None else None
        if device is None:
            return  # not accepted: render answers 4.01, which ends it
        observers = self._observers.setdefault(device, set())
        for older in list(observers):   # one agent per device: a new registration ends the older ones
            observers.discard(older)   # (a client that re-registers cannot cancel them under OSCORE in aiocoap)
            older.trigger(is_last=True)
        observers.add(serverobservation)

        def cancelled() -> None:
            observers.discard(serverobservation)
            if not observers and self._observers.get(device) is observers:
                del self._observers[device]
                self.newest.pop(device, None)

        serverobservation.accept(cancelled)

    async def render_get(self, request) -> aiocoap.Message:
        device = self._device(request)
        if device not in self._observers:   # a plain GET: the store's answer now, nothing kept
            return self._notice(self._look(device))
        if device not in self.newest:       # the device's first observation: looked up once, then kept by poke()
            self.newest[device] = self._look(device)
        return self._notice(self.newest[device])

    def _notice(self, newest: int) -> aiocoap.Message:
        return aiocoap.Message(code=codes.CONTENT, payload=encode_fetch(newest), max_age=int(self.refresh),
                               content_format=ContentFormat(CONTENT_FORMAT_CBOR))

    def _look(self, device: str) -> int:
        try:
            self.looks += 1
            return self._newest_of(self._view, device)
        except StoreError as exc:
            raise error.ServiceUnavailable("the command store cannot be read now") from exc

    def observed(self) -> list[str]:
        return list(self._observers)

    async def poke(self) -> list[str]:
        """Look at the store for every observed device; notify those with a newer command. Returns them.

        The event loop serves requests between two devices' looks (each a
        blocking read: a PostgreSQL round trip, or ~0.05 ms on SQLite).
        """
        changed = []
        for device in self.observed():
            began = time.perf_counter()
            try:
                self.looks += 1
                newest = self._newest_of(self._view, device)
            except StoreError as exc:
                log.error("cannot look for new commands (observers are told at the next look): %s", exc)
                return changed
            finally:
                self.look_time += time.perf_counter() - began
            if newest != self.newest.get(device) and device in self._observers:
                self.newest[device] = newest
                changed.append(device)
                for observation in list(self._observers[device]):
                    observation.trigger()
            await asyncio.sleep(0)
        return changed

    async def watch(self) -> None:
        """Forever: `poke()` every `check` s, or less often when one took over `LOOK_SHARE` of that (so many
        observers, about 0.05 ms each on SQLite: bench/commands.py, never hold the event loop); every observer is
        notified every `refresh` s (its Max-Age)."""
        loop = asyncio.get_running_loop()
        refreshed, took = loop.time(), 0.0
        while True:
            await asyncio.sleep(max(self.check, took / LOOK_SHARE))
            before = self.look_time
            try:
                await self.poke()
            except Exception:  # a bug must not end the notices: observers would hear nothing until they re-register
                log.exception("looking for new commands failed; trying again")
            took = self.look_time - before
            if loop.time() - refreshed >= self.refresh:
                refreshed = loop.time()
                for observers in list(self._observers.values()):
                    for observation in list(observers):
                        observation.trigger()
