"""The agent's uplink: spooled envelopes to the lender in CoAP batches, protected by OSCORE.

One exchange is one confirmable POST to ``<lender>/t`` (Content-Format 60,
application/cbor) whose body is a CBOR array of byte strings, each the exact
bytes of one spooled envelope, alarms first, then in seq order, at most
`max_batch_bytes` long (aiocoap splits a body over 1024 bytes into Block1
blocks, RFC 7959, each its own OSCORE request). The lender answers 2.04 with an
ack map {1: stored seqs, 2: already-present seqs, 3: [[index, reason, text]]};
the agent deletes exactly stored ∪ already-present and nothing on a timeout or
error. A fresh lender token in the ack (key 4) goes to the agent's
`LenderTokens` with the exchange's round trip (agent.freshness): envelopes
signed after carry it, and the trusted clock takes its time. Routine batches
go at least every `heartbeat_s` (the lender calls a device silent after a few
heartbeats without an envelope), however long `batch_interval` is. A
receipt in the ack (key 5, the lender logged the batch's newest envelope)
goes with that envelope's bytes to a `ReceiptSink` (agent.state keeps the
latest beside the chain head): with the lender's public key it proves
delivery even if the lender's store is lost. The lender's signed commands are fetched
from ``<lender>/c`` (`fetch_commands`); `watch_commands` observes
``<lender>/c/o`` (RFC 7641, under the same OSCORE context), whose every
notification names the newest command issued to the device, and registers
again when the observation is lost. ``docs/transport.md`` is the
normative description.

On a bad link the uplink measures and adapts (`agent.link` holds the
measurements; ``docs/transport.md``, "Lossy links", the decision): a batch that
fits one datagram goes as *attempts* -- NON requests, each its own token
(`agent.datagram`), resent on the uplink's own schedule from the measured
round trip -- and while the link loses datagrams every batch fits one
datagram and up to `max_in_flight` batches are in flight at once. A larger
batch on a clean link goes as one confirmable block-wise exchange, as
before. Alarms always go at once as their own small exchange, resent every
round trip until answered, never behind a batch in flight or a backoff wait.
A failed exchange backs off only when the lender has not been heard from
since it began (unreachable); while other exchanges still get answers (lossy
but alive) the uplink keeps going.

Pure policy (the backoff, batch fitting, ack parsing, what to do with each
answer) is plain code; `Uplink` is the asyncio edge that talks aiocoap. The
clock, the sleep and the random source are injectable so tests drive time
(the attempts' own timers run on the event loop's clock, like aiocoap's
retransmission timers).
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import random as random_module
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers import codes
from aiocoap.numbers.constants import TransportTuning

from agent.datagram import DatagramChannel
from agent.exc import SecurityContextError, SecurityContextPermissionError, UplinkConfigError
from agent.link import LinkModel
from durable.exc import OscoreContextError, OscoreContextPermissionError
from durable.oscore import DurableSecurityContext, close_context, open_context
from telemetry import cbor
from telemetry.exc import AckFormatError
from telemetry.ack import MAX_REASON_TEXT, Ack, Reason, Refusal
from telemetry.command import decode_commands, decode_fetch, encode_fetch
from telemetry.exc import CommandError
from telemetry.manifest import DEFAULT_HEARTBEAT_S
from telemetry.receipt import DeliveryReceipt
from telemetry.numbers import CONTENT_FORMAT_CBOR, PATH_COMMAND_NOTICES, PATH_COMMANDS, PATH_TELEMETRY

log = logging.getLogger(__name__)

MIN_BATCH_BYTES = 256          # a 4.13 never shrinks the cap below this
NOTICE_MAX_AGE = 60.0          # a notification without Max-Age is fresh this long (RFC 7252's default)
WATCH_BACKOFF_CAP = 60.0       # the longest wait before registering again after a failed registration
DATAGRAM_BYTES = 1024          # the largest body that goes without Block1 (aiocoap's 1 KiB blocks)


# --- configuration -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """The ``[uplink]`` settings, checked when built."""

    lender: str = "coap://127.0.0.1:5683"
    security_context: Path | None = None   # the device's OSCORE context directory
    insecure: bool = False                 # plain CoAP; must be said explicitly
    batch_interval: float = 60.0           # seconds between routine batches
    max_batch_bytes: int = 16 * 1024       # CBOR body of one POST
    max_batch_count: int = 500
    backoff_initial: float = 1.0
    backoff_cap: float = 300.0
    ack_timeout: float = 2.0               # CoAP ACK_TIMEOUT (RFC 7252 §4.8)
    max_retransmit: int = 4                # CoAP MAX_RETRANSMIT
    exchange_deadline: float = 600.0       # give up on one batch (all its blocks, all its attempts) after this
    heartbeat_s: float = DEFAULT_HEARTBEAT_S  # the longest the agent stays silent (signed in its manifest)
    max_in_flight: int = 4                 # batches in flight at once on a lossy link (alarms come on top)

    def __post_init__(self) -> None:
        parts = urlsplit(self.lender) if isinstance(self.lender, str) else None
        if parts is None or parts.scheme != "coap" or not parts.hostname or parts.query or parts.fragment:
            raise UplinkConfigError(
                f"uplink lender must be a coap:// URI with a host, like coap://lender.example:5683, got {self.lender!r}"
            )
        if self.security_context is not None and not isinstance(self.security_context, Path):
            if not isinstance(self.security_context, (str, os.PathLike)):
                raise UplinkConfigError(f"uplink security_context must be a directory path, got {self.security_context!r}")
            object.__setattr__(self, "security_context", Path(self.security_context))
        if self.security_context is None and not self.insecure:
            raise UplinkConfigError(
                "uplink needs security_context (the device's OSCORE context directory); "
                "plain CoAP only with an explicit insecure = true"
            )
        if self.security_context is not None and self.insecure:
            raise UplinkConfigError("uplink: set either security_context or insecure = true, not both")
        for name in ("batch_interval", "backoff_initial", "backoff_cap", "ack_timeout", "exchange_deadline",
                     "heartbeat_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UplinkConfigError(f"uplink {name} must be a positive number of seconds, got {value!r}")
        for name, least in (("max_batch_bytes", MIN_BATCH_BYTES), ("max_batch_count", 1), ("max_retransmit", 0),
                            ("max_in_flight", 1)):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise UplinkConfigError(f"uplink {name} must be an integer >= {least}, got {value!r}")
        if self.backoff_cap < self.backoff_initial:
            raise UplinkConfigError("uplink backoff_cap must not be below backoff_initial")

    @classmethod
    def from_mapping(cls, table: Mapping[str, object]) -> UplinkConfig:
        """Build from a parsed ``[uplink]`` TOML table; unknown keys are an error, not ignored."""
        known = set(cls.__dataclass_fields__)
        unknown = set(table) - known
        if unknown:
            raise UplinkConfigError(f"unknown [uplink] settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(table)
        if "security_context" in values and values["security_context"] is not None:
            values["security_context"] = Path(str(values["security_context"]))
        if "insecure" in values and not isinstance(values["insecure"], bool):
            raise UplinkConfigError(f"uplink insecure must be true or false, got {values['insecure']!r}")
        return cls(**values)

    @property
    def telemetry_uri(self) -> str:
        return self.uri(PATH_TELEMETRY)

    def uri(self, path: tuple[str, ...]) -> str:
        """The lender's resource at `path` (telemetry.numbers)."""
        return self.lender.rstrip("/") + "/" + "/".join(path)

    @property
    def send_interval(self) -> float:
        """Seconds between routine batches: `batch_interval`, but never longer than `heartbeat_s`."""
        return min(self.batch_interval, self.heartbeat_s)


# --- the device's OSCORE context -------------------------------------------

def open_security_context(directory: str | os.PathLike) -> DurableSecurityContext:
    """Load the device's OSCORE context (`durable.oscore.open_context`), its errors as the agent's.

    A context that group or others could read is refused
    (`SecurityContextPermissionError`); a missing, malformed or busy one is a
    `SecurityContextError`.
    """
    try:
        return open_context(directory)
    except OscoreContextPermissionError as exc:
        raise SecurityContextPermissionError(f"{exc}: the agent refuses keys others can read") from exc
    except OscoreContextError as exc:
        raise SecurityContextError(str(exc)) from exc


# --- pure policy ---------------------------------------------------------------

class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in [0, min(cap, initial * 2**n)]."""

    def __init__(self, initial: float, cap: float, random: Callable[[], float]) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0
        self._random = random

    @property
    def ceiling(self) -> float:
        """The largest delay the next failure may draw."""
        if self.failures >= 64:
            return self.cap
        return min(self.cap, self.initial * 2 ** self.failures)

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        delay = self._random() * self.ceiling
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A successful exchange: the next failure starts from `initial` again."""
        self.failures = 0


class Queued(Protocol):
    """What the uplink needs from a spooled envelope (agent.spool.SpooledEnvelope has it)."""

    @property
    def seq(self) -> int: ...

    @property
    def raw(self) -> bytes: ...

    @property
    def alarm(self) -> bool: ...


class SpoolLike(Protocol):
    """The spool's side of the contract: a batch alarms-first, and deletion of exactly the acked seqs."""

    def peek(self, max_count: int, max_bytes: int) -> Sequence[Queued]: ...

    def ack(self, seqs: Iterable[int]) -> int: ...

    def set_aside(self, rejections: Iterable[Refusal]) -> int: ...


class TokenSink(Protocol):
    """Where the lender's fresh tokens go (agent.freshness.LenderTokens)."""

    def offer(self, token: bytes, *, round_trip: float) -> bool: ...


class ReceiptSink(Protocol):
    """Where the lender's receipts go, with the bytes of the envelope each proves (agent.state.AgentState)."""

    def keep_receipt(self, receipt: DeliveryReceipt, envelope: bytes) -> bool: ...


def _bstr_overhead(length: int) -> int:
    return 1 if length < 24 else 2 if length < 0x100 else 3 if length < 0x10000 else 5


def encode_batch(envelopes: Sequence[bytes]) -> bytes:
    """The POST body: a CBOR array of byte strings, each one envelope's exact bytes."""
    return cbor.encode(list(envelopes))


def fit_batch(items: Sequence[Queued], max_bytes: int) -> list[Queued]:
    """The longest prefix whose encoded body fits `max_bytes`; always at least one item."""
    chosen: list[Queued] = []
    size = 5  # the array head, at most
    for item in items:
        size += _bstr_overhead(len(item.raw)) + len(item.raw)
        if chosen and size > max_bytes:
            break
        chosen.append(item)
    return chosen


class Result(enum.Enum):
    """How one exchange ended."""

    IDLE = "idle"                  # nothing queued
    DELIVERED = "delivered"        # 2.04, and something left the queue
    NO_PROGRESS = "no-progress"    # 2.04, but every envelope is to be retried later
    TOO_LARGE = "too-large"        # 4.13: batch cap halved
    REFUSED = "refused"            # 4.00 for the batch: batch count halved to isolate the cause
    FAILED = "failed"              # timeout, network error, 4.01/4.03/5.xx, malformed ack


@dataclass(frozen=True, slots=True)
class Exchange:
    """The outcome of one `Uplink.send_once`, for the scheduler, health checks and tests."""

    result: Result
    sent: tuple[int, ...] = ()
    deleted: int = 0
    set_aside: tuple[Refusal, ...] = ()
    retry_later: tuple[Refusal, ...] = ()
    detail: str = ""
    full: bool = False             # the batch hit a cap: more is probably queued
    retry_after: float | None = None   # a 5.03's Max-Age (RFC 7252 §5.9.3.4): wait at least this long
    no_answer: bool = False        # nothing came back (timeouts, network errors): the link's fault, not the lender's
    started: float | None = None   # when it began, on the event loop's clock (agent.link's time)
    alarm: bool = False            # an alarm's own exchange
    attempts: int = 0              # datagram attempts sent (0 for a block-wise exchange: aiocoap retransmits those)


# --- the asyncio edge ------------------------------------------------------------

def _consume_outcome(future: asyncio.Future) -> None:
    # An exchange abandoned at its deadline or at shutdown still ends inside
    # aiocoap; fetch its exception so asyncio does not log it as never retrieved.
    if not future.cancelled():
        future.exception()


def _request_tag(number: int) -> bytes:
    """A batch's Request-Tag (RFC 9175): its number, 1 to 8 bytes."""
    return (number % (1 << 64)).to_bytes(8, "big").lstrip(b"\0") or b"\0"


class Uplink:
    """Sends the spool to the lender: `run()` forever, `wake()` when an alarm was appended."""

    def __init__(
        self,
        config: UplinkConfig,
        spool: SpoolLike,
        *,
        tokens: TokenSink | None = None,
        receipts: ReceiptSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.config = config
        self.spool = spool
        self.tokens = tokens
        self.receipts = receipts
        self.backoff = Backoff(config.backoff_initial, config.backoff_cap, random)
        self.byte_cap = config.max_batch_bytes
        self.count_cap = config.max_batch_count
        self.last_exchange: Exchange | None = None
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._context: aiocoap.Context | None = None
        self._security: DurableSecurityContext | None = None
        self._lender_proven = False   # a batch was delivered since the last isolation step
        self._suspect: int | None = None  # refused alone before the lender was proven: skipped until it is
        # the lossy-link path (agent.link, agent.datagram): measurements, attempts, batches in flight
        self.link = LinkModel.for_timeout(config.ack_timeout)
        self._datagrams: aiocoap.Context | None = None   # the attempts' own client context (socket)
        self._channel: DatagramChannel | None = None
        self._busy: dict[int, Queued] = {}               # every envelope in flight, by seq
        self._flights: set[asyncio.Task] = set()         # routine exchanges in flight
        self._alarm_flights: set[asyncio.Task] = set()   # alarms' own exchanges in flight
        self._tags = itertools.count(1)
        self._due = 0.0                                  # the next routine batch not before this (unless full)
        self._hold_until: float | None = None           # backing off: no routine batch before this
        self._alarm_backoff = Backoff(config.backoff_initial, config.backoff_cap, random)
        self._alarm_hold_until: float | None = None     # the lender refused an alarm: the next not before this
        self._lossy_said = False                         # what the log last said about the link
        self._alarms_maybe = True                        # an alarm may be queued and not in flight: look
        self._observed_until: float | None = None        # the command notices' observation is live until then
        self.registrations = 0                           # observations of the command notices registered

    async def start(self) -> None:
        """Load the OSCORE context and open the CoAP client (warns on every start when insecure)."""
        if self._context is not None:
            return
        if self.config.insecure:
            log.warning(
                "uplink: insecure = true, telemetry goes to %s as plain CoAP without OSCORE; anyone on the path "
                "can read it, and acks can be forged to make the agent delete unsent readings",
                self.config.lender,
            )
        else:
            self._security = open_security_context(self.config.security_context)
        try:
            self._context = await aiocoap.Context.create_client_context()
            self._datagrams = await aiocoap.Context.create_client_context()
        except BaseException:
            if self._context is not None:
                await self._context.shutdown()
                self._context = None
            if self._security is not None:
                close_context(self._security)
                self._security = None
            raise
        if self._security is not None:
            self._context.client_credentials[self.config.lender.rstrip("/") + "/*"] = self._security
        self._channel = DatagramChannel(self._datagrams, self.config.telemetry_uri, self._security)

    async def close(self) -> None:
        """Stop the CoAP client and write the OSCORE sequence number back exactly."""
        flights = [*self._flights, *self._alarm_flights]
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        datagrams, self._datagrams, self._channel = self._datagrams, None, None
        if datagrams is not None:
            await datagrams.shutdown()
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
        security, self._security = self._security, None
        if security is not None:
            close_context(security)

    async def __aenter__(self) -> Uplink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def fetch_commands(self, last_applied: int) -> list[bytes]:
        """The lender's pending commands above `last_applied`: POST /c under this uplink's OSCORE context.

        Each is still to be verified (agent.commands.CommandInbox). A failed
        exchange (silence, an error answer, a malformed one) is logged and
        gives none: the next poll asks again, so nothing is missed in order.
        """
        if self._context is None:
            return []
        uri = self.config.uri(PATH_COMMANDS)
        request = aiocoap.Message(code=codes.POST, uri=uri, payload=encode_fetch(last_applied),
                                  content_format=CONTENT_FORMAT_CBOR)
        try:
            pending = self._context.request(request).response
            pending.add_done_callback(_consume_outcome)
            response = await self._answer_within(pending, max(self.config.ack_timeout * 4, 2.0))  # never cancels it
            if response is None:
                raise TimeoutError("no answer")
            if response.code != codes.CONTENT:
                log.warning("uplink: /c answered %s: %s", response.code, response.payload[:200].decode("utf-8", "replace"))
                return []
            return decode_commands(response.payload)
        except (TimeoutError, coap_error.Error, ValueError) as exc:
            log.warning("uplink: cannot fetch commands from %s: %s", uri, exc)
            return []

    @property
    def observing(self) -> bool:
        """Whether the lender's command notices are observed and a notification came within its Max-Age (and grace)."""
        return self._observed_until is not None and asyncio.get_running_loop().time() < self._observed_until

    async def watch_commands(self, notice: Callable[[int], object]) -> None:
        """Observe the lender's ``/c/o`` under this uplink's OSCORE context, forever: `notice(newest)` per notification.

        `newest` is the newest command seq the lender issued to this device; the
        caller fetches /c (`fetch_commands`) when it is above what it applied.
        The observation counts as lost when no notification comes within the
        last one's Max-Age (the lender notifies every observer at least that
        often) plus a grace of two ack timeouts, or when it ends or errs; then
        the uplink registers again at once if it lived at least one Max-Age,
        else, as after a failed registration (the lender down, refused), after a
        backoff (at most `WATCH_BACKOFF_CAP` s): two gateways with one context,
        each ending the other's observation, do not flood the lender.
        """
        backoff = Backoff(self.config.backoff_initial, min(self.config.backoff_cap, WATCH_BACKOFF_CAP), random_module.random)
        grace = max(1.0, 2 * self.config.ack_timeout)
        loop = asyncio.get_running_loop()
        while True:
            if self._context is None:
                await self._sleep(backoff.next_delay())
                continue
            uri = self.config.uri(PATH_COMMAND_NOTICES)  # lender.coap.commands.CommandNotices
            pending = self._context.request(aiocoap.Message(code=codes.GET, uri=uri, observe=0,
                                                            transport_tuning=self._tuning()))
            pending.response.add_done_callback(_consume_outcome)
            heard, waiting, stopping, lived = 0, None, False, NOTICE_MAX_AGE
            began = loop.time()
            try:
                message = await self._answer_within(pending.response, max(self.config.ack_timeout * 4, 2.0))
                if message is not None and (message.code != codes.CONTENT or message.opt.observe is None):
                    (log.info if backoff.failures else log.warning)(
                        "uplink: %s answered %s without an observation; polling /c only for now", uri, message.code)
                    message = None
                if message is None:
                    log.info("uplink: no answer to observing %s; trying again", uri)
                else:
                    self.registrations += 1
                    notices = aiter(pending.observation)
                while message is not None:
                    heard += 1
                    age = lived = message.opt.max_age if message.opt.max_age is not None else NOTICE_MAX_AGE
                    self._observed_until = loop.time() + age + grace
                    try:
                        notice(decode_fetch(message.payload))
                    except CommandError as exc:
                        log.warning("uplink: a malformed command notice (ignored): %s", exc)
                    waiting = asyncio.ensure_future(anext(notices))
                    message = await self._answer_within(waiting, age + grace)
                    if message is not None and not message.code.is_successful():
                        message = None
            except (coap_error.Error, OSError, StopAsyncIteration) as exc:
                log.info("uplink: the observation of %s ended: %s", uri, exc or type(exc).__name__)
            except Exception:  # a bug or an unexpected library state must not stop the observing (the poll goes on)
                log.exception("uplink: observing %s failed", uri)
            except asyncio.CancelledError:   # stopping: the client context's shutdown ends the observation
                stopping = True
                raise
            finally:
                self._observed_until = None
                if waiting is not None and stopping:   # it ends with the client's LibraryShutdown, taken here
                    waiting.add_done_callback(_consume_outcome)
                elif waiting is not None:
                    waiting.cancel()
                if not stopping and pending.observation is not None and not pending.observation.cancelled:
                    pending.observation.cancel()   # ends it here (aiocoap has ended one that erred already)
            if heard and loop.time() - began >= lived:
                backoff.reset()
                log.info("uplink: the observation of %s is over (lost, or ended by the lender); registering again",
                         uri)
            else:  # never made, or over within one Max-Age (a copy of this gateway registering too?): back off
                await self._sleep(backoff.next_delay())

    @staticmethod
    async def _answer_within(future: asyncio.Future, timeout: float) -> aiocoap.Message | None:
        """The answer or notification `future` brings, or None when none came within `timeout` s (then abandoned)."""
        done, _ = await asyncio.wait({future}, timeout=timeout)   # asyncio.wait: never cancels aiocoap's future
        return future.result() if done else None

    def wake(self) -> None:
        """An alarm was appended: send it at once as its own exchange, even during a backoff wait or a batch in flight."""
        self._alarms_maybe = True
        self._wake.set()

    # --- one exchange ---

    def _routine_cap(self) -> int:
        """The byte cap of the next routine batch: one datagram while the link is lossy, else `byte_cap`."""
        return min(self.byte_cap, DATAGRAM_BYTES) if self.link.lossy else self.byte_cap

    def _next_batch(self, *, alarms: bool = False, max_bytes: int | None = None) -> list[Queued]:
        """The next batch not already in flight: queued alarms only (`alarms`), or the spool's order (alarms first)."""
        cap = self.byte_cap if max_bytes is None else max_bytes
        suspect = self._suspect if not self._lender_proven else None
        busy = self._busy
        if alarms:   # alarms come first in the spool's order: skip only those in flight, read no further than needed
            if not self._alarms_maybe:
                return []
            busy = {seq: item for seq, item in busy.items() if item.alarm}
            count = min(self.count_cap, cap // 64 + 1)
        else:
            count = self.count_cap
        items = self.spool.peek(count + len(busy) + (suspect is not None),
                                cap + sum(len(item.raw) for item in busy.values()))
        items = [item for item in items if item.seq not in busy and item.seq != suspect]
        if alarms:
            items = list(itertools.takewhile(lambda item: item.alarm, items))
            self._alarms_maybe = bool(items)
        return fit_batch(items[: self.count_cap], cap)

    def _fills(self, batch: Sequence[Queued], cap: int) -> bool:
        """Whether `batch` hit a cap (count, or over 3/4 of `cap` bytes): more is probably queued."""
        return len(batch) >= self.count_cap or len(encode_batch([item.raw for item in batch])) > cap * 3 // 4

    def _tuning(self) -> TransportTuning:
        tuning = TransportTuning()
        tuning.ACK_TIMEOUT = self.link.rto   # the measured RTO (the configured ack_timeout until measured)
        tuning.MAX_RETRANSMIT = self.config.max_retransmit
        return tuning

    def _put_aside(self, rejections: Sequence[Refusal], batch: Sequence[Queued]) -> None:
        for rejection in rejections:
            log.error(
                "uplink: lender refused envelope seq %d for good (reason %d: %r); it is kept in the spool's "
                "refused table and no longer sent", rejection.seq, rejection.reason, rejection.text,
            )
        self.spool.set_aside(rejections)

    async def send_once(self) -> Exchange:
        """Send one batch -- the queued alarms if any, else routine envelopes -- and apply the lender's answer.

        A batch that fits one datagram goes as attempts (`_fly`); a larger one
        as one block-wise exchange (`_blockwise`). Never raises for network or
        lender trouble.
        """
        if self._context is None:
            raise RuntimeError("Uplink.start() must be awaited before sending")
        alarms = self._next_batch(alarms=True, max_bytes=min(self.byte_cap, DATAGRAM_BYTES))
        if alarms:
            return await self._exchange(alarms, alarm=True)
        batch = self._next_batch(max_bytes=self._routine_cap())
        if not batch:
            return self._finish(Exchange(Result.IDLE))
        return await self._exchange(batch)

    async def _exchange(self, batch: list[Queued], *, alarm: bool = False) -> Exchange:
        seqs = tuple(item.seq for item in batch)
        body = encode_batch([item.raw for item in batch])
        cap = DATAGRAM_BYTES if alarm else self._routine_cap()
        full = len(batch) >= self.count_cap or len(body) > cap * 3 // 4
        started = asyncio.get_running_loop().time()
        for item in batch:
            self._busy[item.seq] = item
        try:
            if len(body) <= DATAGRAM_BYTES:
                exchange = await self._fly(batch, seqs, body, full, alarm=alarm)
            else:
                exchange = await self._blockwise(batch, seqs, body, full)
        finally:
            for seq in seqs:
                self._busy.pop(seq, None)
        return self._finish(replace(exchange, started=started, alarm=alarm))

    async def _blockwise(self, batch: list[Queued], seqs: tuple[int, ...], body: bytes, full: bool) -> Exchange:
        """One confirmable exchange, Block1 when over one block: aiocoap retransmits each block (ACK_TIMEOUT = RTO)."""
        tuning = self._tuning()
        request = aiocoap.Message(
            code=codes.POST, uri=self.config.telemetry_uri, payload=body,
            content_format=CONTENT_FORMAT_CBOR, transport_tuning=tuning,
        )
        loop = asyncio.get_running_loop()
        sent_at, began = self._clock(), loop.time()
        try:
            pending = self._context.request(request).response
            pending.add_done_callback(_consume_outcome)
            # asyncio.wait, not wait_for: it never cancels aiocoap's future
            # (aiocoap then fails setting it), and on Python 3.11 wait_for can
            # swallow a cancellation that races with the answer, which would
            # leave the agent deaf to SIGTERM.
            done, _ = await asyncio.wait({pending}, timeout=self.config.exchange_deadline)
            if not done:
                self.link.timed_out()
                return Exchange(Result.FAILED, seqs, no_answer=True, detail=(
                    f"no answer within exchange_deadline = {self.config.exchange_deadline} s"))
            response = pending.result()
        except (coap_error.Error, OSError) as exc:
            self.link.timed_out()
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            return Exchange(Result.FAILED, seqs, no_answer=True, detail=f"no answer: {type(exc).__name__}: {exc}{cause}")
        except Exception as exc:  # a bug or an unexpected library state must not stop the uplink
            log.exception("uplink: unexpected error while sending seqs %d..%d", seqs[0], seqs[-1])
            return Exchange(Result.FAILED, seqs, detail=f"unexpected {type(exc).__name__}: {exc}")
        took, now = loop.time() - began, loop.time()
        blocks = -(-len(body) // DATAGRAM_BYTES)
        if took < tuning.ACK_TIMEOUT:         # sooner than one timeout: no block can have been retransmitted
            self.link.answered(took / blocks, now)
        else:
            self.link.heard(now)
            if self.link.srtt is not None and took > blocks * self.link.srtt + tuning.ACK_TIMEOUT:
                self.link.timed_out()         # slower than its round trips by a timeout: a block was resent
        return self._apply(response, batch, seqs, full, max(0.0, self._clock() - sent_at))

    async def _fly(self, batch: list[Queued], seqs: tuple[int, ...], body: bytes, full: bool, *,
                   alarm: bool) -> Exchange:
        """One batch in one datagram, as attempts on the uplink's own schedule (agent.datagram, agent.link).

        An attempt goes now; the next after one RTO (an alarm: after one
        smoothed round trip), or twice the last gap when nothing at all was
        heard from the lender since the previous attempt (the link may be down;
        an alarm's gap grows to `backoff_cap`, a batch's to the maximum RTO).
        Every attempt keeps listening until the exchange ends, so a late answer
        still counts. A batch makes 1 + `max_retransmit` attempts; an alarm
        keeps going until answered. Either ends unanswered at `exchange_deadline`.
        """
        loop = asyncio.get_running_loop()
        tag = _request_tag(next(self._tags))
        limit = None if alarm else 1 + self.config.max_retransmit
        began = loop.time()
        deadline = began + self.config.exchange_deadline
        ceiling = self.config.backoff_cap if alarm else self.link.max_rto
        pending: dict[asyncio.Future, float] = {}    # attempt -> when it was sent
        unexpired: dict[asyncio.Future, float] = {}  # attempt -> when its timeout passes (for the loss estimate)
        sent, gap, last_sent, next_send = 0, 0.0, began, began
        answer: tuple[aiocoap.Message, float] | None = None
        error: BaseException | None = None
        try:
            while answer is None:
                now = loop.time()
                for attempt, expires in list(unexpired.items()):
                    if now >= expires:
                        del unexpired[attempt]
                        self.link.timed_out()
                more = limit is None or sent < limit
                if now >= deadline or (not more and now >= next_send):
                    break
                if more and now >= next_send:
                    live = self.link.resend_spacing if alarm else self.link.rto
                    gap = live if sent == 0 or self.link.heard_since(last_sent) else min(ceiling, max(live, gap * 2))
                    attempt = asyncio.ensure_future(self._channel.post(
                        body, content_format=CONTENT_FORMAT_CBOR, tag=tag))
                    attempt.add_done_callback(_consume_outcome)
                    pending[attempt], unexpired[attempt] = now, now + self.link.rto
                    self.link.sent()
                    sent, last_sent, next_send = sent + 1, now, now + gap
                    continue
                wake_at = min(next_send, deadline, *unexpired.values())
                if not pending:
                    await asyncio.sleep(max(0.0, wake_at - now))
                    continue
                done, _ = await asyncio.wait(set(pending), timeout=max(0.0, wake_at - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                for attempt in done:
                    sent_at = pending.pop(attempt)
                    counted = unexpired.pop(attempt, None) is None
                    if attempt.exception() is None:
                        rtt = loop.time() - sent_at
                        self.link.answered(rtt, loop.time())
                        answer = (attempt.result(), rtt)
                        break
                    error = attempt.exception()   # a network error, or an answer that does not unprotect
                    if not counted:
                        self.link.timed_out()
        finally:
            for attempt in pending:
                attempt.cancel()
        if answer is None:
            detail = f"no answer to {sent} attempt(s) in {loop.time() - began:.1f} s"
            if error is not None:
                detail += f" (last error: {type(error).__name__}: {error})"
            return Exchange(Result.FAILED, seqs, no_answer=True, detail=detail, attempts=sent)
        response, rtt = answer
        return replace(self._apply(response, batch, seqs, full, rtt), attempts=sent)

    def _apply(self, response: aiocoap.Message, batch: list[Queued], seqs: tuple[int, ...], full: bool,
               round_trip: float) -> Exchange:
        code = response.code
        if code == codes.CHANGED:
            try:
                ack = Ack.decode(response.payload, seqs)
            except AckFormatError as exc:
                return Exchange(Result.FAILED, seqs, detail=f"malformed ack, nothing deleted: {exc}")
            if ack.token is not None and self.tokens is not None:
                self.tokens.offer(ack.token, round_trip=round_trip)
            if ack.receipt is not None and self.receipts is not None:
                proven = next((item.raw for item in batch if item.seq == ack.receipt.seq), None)
                if proven is not None:  # a receipt for a seq it was not sent proves nothing the agent can keep
                    self.receipts.keep_receipt(ack.receipt, proven)
            if ack.foreign:
                log.warning("uplink: lender acked seqs it was not sent (ignored): %s", sorted(ack.foreign)[:20])
            deleted = self.spool.ack(ack.delete) if ack.delete else 0
            permanent = tuple(r for r in ack.refused if r.permanent)
            later = tuple(r for r in ack.refused if not r.permanent)
            if permanent:
                self._put_aside(permanent, batch)
            for rejection in later:
                log.warning("uplink: lender deferred envelope seq %d (reason %d: %r); will retry",
                            rejection.seq, rejection.reason, rejection.text)
            progress = bool(ack.delete or permanent)
            return Exchange(Result.DELIVERED if progress else Result.NO_PROGRESS, seqs, deleted, permanent, later,
                            full=full and progress)
        detail = f"lender answered {code}" + (f": {response.payload[:MAX_REASON_TEXT]!r}" if response.payload else "")
        if code == codes.REQUEST_ENTITY_TOO_LARGE:
            return self._too_large(response, batch, seqs, detail)
        if code == codes.BAD_REQUEST:
            if len(batch) > 1:
                self.count_cap = max(1, len(batch) // 2)
                return Exchange(Result.REFUSED, seqs, detail=detail + f"; next batch at most {self.count_cap} envelopes")
            return self._isolated(batch, Reason.MALFORMED, "lender answered 4.00 to this envelope alone", seqs, detail)
        retry_after = response.opt.max_age if code == codes.SERVICE_UNAVAILABLE else None
        return Exchange(Result.FAILED, seqs, detail=detail, retry_after=retry_after)

    def _too_large(self, response: aiocoap.Message, batch: list[Queued], seqs: tuple[int, ...], detail: str) -> Exchange:
        limit = response.opt.size1  # RFC 7959 §2.9.3: the largest body the server will take
        new_cap = self.byte_cap // 2
        if isinstance(limit, int) and limit > 0:
            new_cap = min(new_cap, limit)
        new_cap = max(MIN_BATCH_BYTES, new_cap)
        if len(batch) == 1:
            return self._isolated(batch, Reason.OVERSIZE, "lender answered 4.13 to this envelope alone", seqs, detail)
        shrunk = new_cap < self.byte_cap
        self.byte_cap = new_cap
        return Exchange(Result.TOO_LARGE if shrunk else Result.FAILED, seqs,
                        detail=detail + f"; batch cap now {self.byte_cap} bytes")

    def _isolated(self, batch: list[Queued], reason: Reason, text: str, seqs: tuple[int, ...], detail: str) -> Exchange:
        # Set one envelope aside only when the lender has shown since the last
        # such step that it accepts other batches: a lender that refuses
        # everything must not make the agent stop sending its readings. Until
        # then the envelope is skipped, so the ones behind it can prove it.
        if not self._lender_proven:
            self._suspect = batch[0].seq
            return Exchange(Result.FAILED, seqs, detail=detail + "; kept queued, skipped until another batch gets through")
        rejection = Refusal(0, int(reason), text, batch[0].seq)
        self._put_aside((rejection,), batch)
        self._lender_proven = False
        self._suspect = None
        return Exchange(Result.DELIVERED, seqs, set_aside=(rejection,), detail=detail)

    def _finish(self, exchange: Exchange) -> Exchange:
        self.last_exchange = exchange
        if self.link.lossy != self._lossy_said:
            self._lossy_said = self.link.lossy
            figures = (f"round-trip loss {self.link.loss:.0%}, SRTT {self.link.srtt or 0:.2f} s, "
                       f"RTO {self.link.rto:.2f} s")
            if self.link.lossy:
                log.info("uplink: the link is lossy (%s): batches fit one datagram, up to %d in flight",
                         figures, self.config.max_in_flight)
            else:
                log.info("uplink: the link is clean again (%s): batches up to %d bytes", figures, self.byte_cap)
        if exchange.result is Result.DELIVERED and exchange.deleted:
            self._lender_proven = True
            self.count_cap = self.config.max_batch_count
        if exchange.result is Result.FAILED:
            what = "alarm" if exchange.alarm else "batch"
            if self._alive_after(exchange):
                log.info("uplink: %s of %d not answered on a lossy link, kept in the spool and sent again "
                         "(the lender answers other attempts): %s", what, len(exchange.sent), exchange.detail)
            else:
                log.warning("uplink: %s of %d not delivered, kept in the spool: %s", what, len(exchange.sent),
                            exchange.detail)
        elif exchange.result in (Result.TOO_LARGE, Result.REFUSED):
            log.warning("uplink: %s", exchange.detail)
        return exchange

    def _alive_after(self, exchange: Exchange) -> bool:
        """An exchange that got no answer while the lender answered others since it began: a lossy link, not a dead one."""
        return exchange.no_answer and exchange.started is not None and self.link.heard_since(exchange.started)

    # --- scheduling ---

    def delay_after(self, exchange: Exchange) -> float:
        """How long to wait after `exchange` before the next routine batch (advances or resets the backoff).

        No answer while the lender was heard from meanwhile (lossy but alive):
        no wait and no backoff step. No answer from a silent lender, or an
        answer that took nothing: the exponential backoff.
        """
        if exchange.result is Result.IDLE:
            return self.config.send_interval
        if exchange.result is Result.DELIVERED:
            self.backoff.reset()
            return 0.0 if exchange.full or exchange.set_aside and not exchange.deleted else self.config.send_interval
        if exchange.result is Result.TOO_LARGE:
            return 0.0
        if self._alive_after(exchange):
            return 0.0
        # NO_PROGRESS too: the lender answers but takes none of these yet
        # (device not enrolled): retry, but ever more slowly.
        delay = self.backoff.next_delay()
        if exchange.retry_after is not None:
            delay = max(delay, min(float(exchange.retry_after), self.config.backoff_cap))
        return delay

    def _window(self) -> int:
        """Routine batches allowed in flight: `max_in_flight` on a lossy link that answers; else one (NSTART = 1)."""
        return self.config.max_in_flight if self.link.lossy and not self.backoff.failures else 1

    def _holding(self, now: float) -> bool:
        return self._hold_until is not None and now < self._hold_until

    def _settle(self, exchange: Exchange) -> None:
        """After a routine exchange in `run`: when the next batch may go, and whether to hold off (backoff)."""
        now = self._clock()
        if exchange.result is not Result.DELIVERED and self._holding(now):
            return  # batches that were in flight together fail together: one backoff step per silent spell
        delay = self.delay_after(exchange)
        self._due = now + delay
        if exchange.result is Result.DELIVERED:
            self._hold_until = None
        elif delay > 0:
            self._hold_until = self._due

    def _settle_alarm(self, exchange: Exchange) -> None:
        """After an alarm's exchange: answered, the backlog resumes at once; refused, the next alarm waits a backoff."""
        now = self._clock()
        if exchange.result is Result.DELIVERED:
            self.backoff.reset()
            self._alarm_backoff.reset()
            self._hold_until = self._alarm_hold_until = None
            self._due = now
        elif not exchange.no_answer and exchange.result is not Result.TOO_LARGE:
            delay = self._alarm_backoff.next_delay()
            if exchange.retry_after is not None:
                delay = max(delay, min(float(exchange.retry_after), self.config.backoff_cap))
            self._alarm_hold_until = now + delay
        # no answer at all: the exchange itself already resent on its schedule; the next one goes at once

    def _launch(self, batch: list[Queued], *, alarm: bool = False) -> None:
        seqs = [item.seq for item in batch]
        for item in batch:
            self._busy[item.seq] = item
        flights = self._alarm_flights if alarm else self._flights
        task = asyncio.ensure_future(self._in_flight(batch, alarm=alarm))
        flights.add(task)

        def ended(task: asyncio.Task) -> None:
            flights.discard(task)
            for seq in seqs:
                self._busy.pop(seq, None)
            self._wake.set()

        task.add_done_callback(ended)

    async def _in_flight(self, batch: list[Queued], *, alarm: bool) -> None:
        try:
            exchange = await self._exchange(batch, alarm=alarm)
        except asyncio.CancelledError:
            raise
        except Exception:  # the spool failed under us: keep the uplink alive and try again later
            log.exception("uplink: sending failed")
            exchange = self._finish(Exchange(Result.FAILED, tuple(item.seq for item in batch), detail="spool error",
                                             alarm=alarm))
        if alarm:
            self._alarms_maybe = True   # not delivered, or more alarms came meanwhile: look again
            self._settle_alarm(exchange)
        else:
            self._settle(exchange)

    def _launch_alarms(self, now: float) -> float | None:
        """Every queued alarm not in flight goes now in its own exchange; returns when to look again, if held."""
        held = self._alarm_hold_until is not None and now < self._alarm_hold_until
        while len(self._alarm_flights) < self.config.max_in_flight:
            batch = self._next_batch(alarms=True, max_bytes=min(self.byte_cap, DATAGRAM_BYTES))
            if not batch:
                return None
            if held:
                return self._alarm_hold_until
            self._launch(batch, alarm=True)
        return None

    async def _wait(self, delay: float | None) -> None:
        """Until `delay` passes (None: no timer) or something changes (`wake()`, an exchange ended)."""
        if self._wake.is_set() or delay is not None and delay <= 0:
            return
        waiters = {asyncio.ensure_future(self._wake.wait())}
        if delay is not None:
            waiters.add(asyncio.ensure_future(self._sleep(delay)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiters:
                task.cancel()

    async def run(self) -> None:
        """Send forever: alarms at once, routine batches every `send_interval` (at once while full), backing off on failure.

        One routine exchange at a time on a clean link; up to `max_in_flight`
        on a lossy one that answers; alarms on top, each its own exchange.
        """
        await self.start()
        self._due = self._clock()
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                looks = [self._launch_alarms(now)]
                if self._holding(now):
                    looks.append(self._hold_until)
                elif len(self._flights) < self._window():
                    cap = self._routine_cap()
                    batch = self._next_batch(max_bytes=cap)
                    if batch and (now >= self._due or self._fills(batch, cap)):
                        if not self._fills(batch, cap):   # a partial batch: the next one an interval later
                            self._due = now + self.config.send_interval
                        self._launch(batch)
                        continue
                    if not batch and not self._flights and now >= self._due:  # idle: look again an interval later
                        self._finish(Exchange(Result.IDLE))
                        self._due = now + self.config.send_interval
                    if batch or not self._flights:  # else the next exchange to end looks again
                        looks.append(self._due)
                looks = [t for t in looks if t is not None]
                await self._wait(min(looks) - now if looks else None)
        finally:
            flights = [*self._flights, *self._alarm_flights]
            for task in flights:
                task.cancel()
            await asyncio.gather(*flights, return_exceptions=True)
