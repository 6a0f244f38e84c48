"""Test rig for the uplink: a stand-in lender on real UDP, a recording UDP relay, a driven clock, real envelopes.

`AckLender` plays the lender's side of docs/transport.md (decode the batch,
store by seq, answer the ack map) until lender/ingest.py lands; knobs make it
answer with an error code, reject chosen seqs, or refuse bodies over a size.
`UdpTap` sits between agent and lender on 127.0.0.1 and records every datagram
both ways; it can drop requests or responses to make a real timeout.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
from aiocoap.numbers import codes

from hil.processes import free_udp_port
from lender.enrollment.contexts import LenderCredentials, protected_site
from telemetry import GENESIS, Envelope, Identity, Record, cbor, seal
from telemetry.envelope import decode as decode_envelope

GATEWAY = Identity(bytes(range(1, 33)))  # a test key, never a real device's
DEVICE = "gw-0042"
T0 = 1767225600  # 2026-01-01T00:00:00Z


def chain(count: int, *, first_seq: int = 1, alarms: frozenset[int] = frozenset(), prev: bytes = GENESIS) -> list[Envelope]:
    """`count` signed envelopes of a warehouse gateway, chained; seqs in `alarms` carry a tamper alarm."""
    out = []
    for seq in range(first_seq, first_seq + count):
        records = [
            Record("warehouse-7/temp", value=21.5 + seq % 7, unit="Cel", time=T0 + seq),
            Record("warehouse-7/humidity", value=48.25, unit="%RH", time=T0 + seq),
        ]
        if seq in alarms:
            records.append(Record("alarm.tamper", string="case opened", time=T0 + seq))
        envelope = seal(GATEWAY, device=DEVICE, boot=1, seq=seq, prev=prev, records=records)
        out.append(envelope)
        prev = envelope.digest
    return out


@dataclass
class Batch:
    """One POST the stand-in lender received: its envelopes' bytes and who sent it (OSCORE device or None)."""

    envelopes: list[bytes]
    device: str | None
    size: int


@dataclass
class AckLender:
    """The lender's ack role on real CoAP: stores envelopes by seq, answers {1: stored, 2: already, 3: rejected}."""

    credentials: LenderCredentials | None = None
    insecure: bool = False
    max_body: int | None = None                       # answer 4.13 (with Size1) above this
    reject: dict[int, tuple[int, str]] = field(default_factory=dict)   # seq -> (reason code, text)
    answers: deque = field(default_factory=deque)     # queued whole-batch answers: a Code, a Message, or 2.04 body bytes
    refuse_seqs: set[int] = field(default_factory=set)  # a batch holding one of these gets 4.00
    pad_ack: Callable[[list[int]], bytes] | None = None   # extra bytes under ack key 99 (ignored by the agent): long acks
    stored: dict[int, bytes] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)
    port: int = 0
    context: aiocoap.Context | None = None

    def __post_init__(self) -> None:
        self.received = asyncio.Event()

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def start(self, port: int | None = None) -> AckLender:
        self.port = port or self.port or free_udp_port()
        site = resource.Site()
        site.add_resource(["t"], _Telemetry(self))
        root = site if self.credentials is None else protected_site(site, self.credentials, insecure=self.insecure)
        self.context = await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", self.port))
        return self

    async def stop(self) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    async def wait_for_batches(self, count: int, timeout: float = 20.0) -> None:
        """Wait until `count` batches arrived in total (a guard against hangs, not a timing assertion)."""
        async def arrived() -> None:
            while len(self.batches) < count:
                self.received.clear()
                await self.received.wait()
        await asyncio.wait_for(arrived(), timeout)

    def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        body = request.payload
        if self.max_body is not None and len(body) > self.max_body:
            response = aiocoap.Message(code=codes.REQUEST_ENTITY_TOO_LARGE)
            response.opt.size1 = self.max_body
            return response
        items = cbor.decode(body, cbor.Limits(max_bytes=1 << 20, max_items=1 << 16))
        assert isinstance(items, list) and all(isinstance(i, bytes) for i in items)
        device = self.credentials.device_of(request) if self.credentials is not None else None
        self.batches.append(Batch(items, device, len(body)))
        self.received.set()
        if self.answers:
            answer = self.answers.popleft()
            if isinstance(answer, bytes):
                return aiocoap.Message(code=codes.CHANGED, payload=answer, content_format=60)
            if isinstance(answer, aiocoap.Message):
                return answer
            return aiocoap.Message(code=answer)
        if any(decode_envelope(raw).seq in self.refuse_seqs for raw in items):
            return aiocoap.Message(code=codes.BAD_REQUEST, payload=b"garbage in batch")
        stored, already, rejected = [], [], []
        for index, raw in enumerate(items):
            seq = decode_envelope(raw).seq
            if seq in self.reject:
                reason, text = self.reject[seq]
                rejected.append([index, reason, text])
            elif seq in self.stored:
                if self.stored[seq] == raw:
                    already.append(seq)
                else:
                    rejected.append([index, 6, "conflicting duplicate"])
            else:
                self.stored[seq] = raw
                stored.append(seq)
        ack = {1: stored, 2: already, 3: rejected}
        if self.pad_ack is not None:
            ack[99] = self.pad_ack([decode_envelope(raw).seq for raw in items])
        return aiocoap.Message(code=codes.CHANGED, payload=cbor.encode(ack), content_format=60)


class _Telemetry(resource.Resource):
    def __init__(self, lender: AckLender) -> None:
        super().__init__()
        self.lender = lender

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.lender.handle(request)


class UdpTap:
    """A UDP relay on 127.0.0.1 that records every datagram and can drop one direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.requests: list[bytes] = []
        self.request_times: list[float] = []   # when each request arrived (the event loop's clock)
        self.responses: list[bytes] = []
        self.drop_requests = False
        self.drop_responses = False
        self.drop_next_responses = 0            # drop this many responses, then pass them again
        self.port = 0
        self._front: asyncio.DatagramTransport | None = None
        self._backs: dict[tuple, asyncio.DatagramTransport] = {}

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def start(self) -> UdpTap:
        loop = asyncio.get_running_loop()
        tap = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                tap.requests.append(data)
                tap.request_times.append(loop.time())
                if not tap.drop_requests:
                    loop.create_task(tap._forward(data, addr))

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.port = self._front.get_extra_info("sockname")[1]
        return self

    async def _forward(self, data: bytes, client: tuple) -> None:
        back = self._backs.get(client)
        if back is None:
            tap = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    tap.responses.append(data)
                    if tap.drop_next_responses > 0:
                        tap.drop_next_responses -= 1
                    elif not tap.drop_responses and tap._front is not None:
                        tap._front.sendto(data, client)

            back, _ = await asyncio.get_running_loop().create_datagram_endpoint(Back, remote_addr=self.upstream)
            self._backs[client] = back
        back.sendto(data)

    def close(self) -> None:
        for transport in [self._front, *self._backs.values()]:
            if transport is not None:
                transport.close()
        self._front = None
        self._backs.clear()


def oscore_partial_iv(datagram: bytes) -> bytes | None:
    """The OSCORE Partial IV (the sender sequence number) of a request datagram, or None if it has none."""
    message = aiocoap.Message.decode(datagram)
    option = message.opt.oscore
    if not option:
        return None
    length = option[0] & 0x07
    return option[1:1 + length]


class DrivenClock:
    """A monotonic clock that moves only when the test says so; `sleep` waits for that."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        deadline = self.now + delay
        while self.now < deadline:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()

    async def wait_for_sleep(self, count: int, timeout: float = 20.0) -> float:
        """Wait until the code under test has asked to sleep `count` times in total; return the last delay."""
        async def asked() -> None:
            while len(self.sleeps) < count:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(asked(), timeout)
        return self.sleeps[count - 1]


def spool_at(path: Path):
    from agent.spool import Spool
    return Spool.open(path, synchronous="NORMAL")
