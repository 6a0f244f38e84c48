"""Helpers for the lender's tests: simulated devices, batches, a lender on 127.0.0.1, an independent CoAP client.

The lender runs for real: `LenderServer` on a UDP port of 127.0.0.1 (port 0,
the kernel picks), in its own event-loop thread. `RawCoap` is a deliberately
small, independent client over a plain UDP socket (aiocoap's Message codec,
no aiocoap client logic) so a test can send exactly the bytes it means to.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
from aiocoap.numbers import codes

from lender.coap.gate import GatePolicy
from lender.coap.limits import Rate
from lender.enrollment import registration
from lender.server import LenderServer
from lender.evidence.store import SQLiteStore
from telemetry import cbor
from telemetry.envelope import GENESIS, Envelope, Gap, seal
from telemetry.identity import Identity
from telemetry.receipt import CheckpointReference, DeliveryReceipt
from telemetry.senml import Record

PYTHON_BIN = Path(sys.executable).parent
BASE_TIME = 1767225600
# The functional tests send everything from 127.0.0.1, faster than the datagram gate lets one stranger
# (lender.coap.gate); the tests of floods and budgets use the lender's own policy.
ONE_BUSY_HOST = GatePolicy(stranger=Rate(per_s=20_000.0, burst=20_000.0), strangers=Rate(per_s=20_000.0, burst=20_000.0),
                           device=Rate(per_s=20_000.0, burst=20_000.0))


@dataclass
class Device:
    """A simulated device: an identity and its chain state, sealing envelopes like the agent does."""

    name: str
    identity: Identity = field(default_factory=Identity.generate)
    seq: int = 0
    boot: int = 1
    prev: bytes = GENESIS

    def next(self, value: float | None = None, *, alarm: bool = False, gap: Gap | None = None) -> Envelope:
        self.seq += 1
        name = "alarm.tamper" if alarm else "temp"
        records = [] if gap is not None else [
            Record(name, boolean=True, time=BASE_TIME + self.seq) if alarm
            else Record(name, value=20.0 + (self.seq % 50) / 4 if value is None else value, unit="Cel",
                        time=BASE_TIME + self.seq)
        ]
        envelope = seal(self.identity, device=self.name, boot=self.boot, seq=self.seq, prev=self.prev,
                        records=records, gap=gap)
        self.prev = envelope.digest
        return envelope

    def chain(self, count: int) -> list[Envelope]:
        return [self.next() for _ in range(count)]


def batch(envelopes) -> bytes:
    """The body of one POST to /t: a CBOR array of the envelopes' exact bytes."""
    return cbor.encode([e.raw if isinstance(e, Envelope) else e for e in envelopes])


def ack_of(payload: bytes) -> dict:
    """The ack's three lists (stored, already, refused); its lender token (key 4) and its receipt (5) or
    checkpoint reference (6) are checked for shape here, and for meaning where it matters."""
    ack = cbor.decode(payload)
    token = ack.pop(4, None)
    assert token is None or (isinstance(token, bytes) and len(token) == 12), f"malformed lender token {token!r}"
    if 5 in ack:
        DeliveryReceipt.from_cbor(ack.pop(5))
    if 6 in ack:
        CheckpointReference.from_cbor(ack.pop(6))
    return ack


def enroll(store: SQLiteStore, data_dir: Path, device: Device, *, oscore: bool = False, **extra):
    return registration.register(store, data_dir, device.name, device.identity.public_key, with_oscore=oscore, **extra)


class LenderThread:
    """A real `LenderServer` on 127.0.0.1 in an event-loop thread of its own."""

    def __init__(self, data_dir: Path, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lender-under-test", daemon=True)
        self.server = LenderServer(data_dir, bind=("127.0.0.1", 0), **options)

    def run(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> LenderThread:
        self.thread.start()
        self.run(self.server.start())
        self.port = self.server.address[1]
        self.uri = f"coap://127.0.0.1:{self.port}/t"
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def raw_message(mtype, mid: int, code, token: bytes = b"", **options) -> aiocoap.Message:
    """A message with the type, message ID and token a raw-socket client picks itself (set after construction:
    aiocoap deprecates passing them in, since its own transports manage them)."""
    message = aiocoap.Message(code=code, **options)
    message.mtype, message.mid, message.token = mtype, mid, token
    return message


class RawCoap:
    """A minimal confirmable-request client over one UDP socket (retransmits, handles separate responses)."""

    def __init__(self, port: int, *, timeout: float = 2.0, tries: int = 5) -> None:
        self.tries = tries
        self.address = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.timeout = timeout
        self.mid = random.randrange(0x10000)
        self.token = random.randrange(1 << 32)

    def close(self) -> None:
        self.sock.close()

    def request(self, payload: bytes = b"", *, code=codes.POST, path=("t",), content_format=60,
                block1=None, size1=None) -> aiocoap.Message:
        self.mid = (self.mid + 1) & 0xFFFF
        self.token = (self.token + 1) & 0xFFFFFFFF
        message = raw_message(aiocoap.CON, self.mid, code, self.token.to_bytes(4, "big"), payload=payload, uri_path=path)
        if content_format is not None:
            message.opt.content_format = content_format
        if block1 is not None:
            message.opt.block1 = block1
        if size1 is not None:
            message.opt.size1 = size1
        datagram = message.encode()
        for _ in range(self.tries):
            self.sock.sendto(datagram, self.address)
            self.sock.settimeout(self.timeout)
            try:
                while True:
                    data, _ = self.sock.recvfrom(65536)
                    answer = aiocoap.Message.decode(data)
                    if answer.mtype == aiocoap.ACK and answer.mid == self.mid and answer.code == codes.EMPTY:
                        self.sock.settimeout(30)  # a separate response follows (RFC 7252 §5.2.2)
                        continue
                    if answer.token != message.token:
                        continue
                    if answer.mtype == aiocoap.CON:
                        self.sock.sendto(raw_message(aiocoap.ACK, answer.mid, codes.EMPTY).encode(), self.address)
                    return answer
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer from the lender at {self.address} after {self.tries} tries")

    def post(self, payload: bytes, **options) -> aiocoap.Message:
        return self.request(payload, **options)


def free_environment() -> dict:
    """The environment for a subprocess: this venv first on PATH, a default data directory that does not exist."""
    env = dict(os.environ)
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PLEDGEWATCH_LENDER_DATA"] = "/nonexistent/pledgewatch-lender"  # never the machine's real store
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def oscore_post(uri: str, context_dir, body: bytes) -> aiocoap.Message:
    """POST `body` to `uri` as a device would: aiocoap client, OSCORE with the device's side of its context."""
    from durable import oscore  # the on-disk context format the lender writes at registration

    security = oscore.open_context(context_dir)
    client = await aiocoap.Context.create_client_context()
    client.client_credentials[uri.rsplit("/", 1)[0] + "/*"] = security
    try:
        request = aiocoap.Message(code=codes.POST, uri=uri, payload=body, content_format=60)
        return await client.request(request).response
    finally:
        await client.shutdown()
        oscore.close_context(security)
