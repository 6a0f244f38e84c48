"""The lender's fuzzer: generated hostile inputs at every entry point, the server checked after each batch.

    fuzz = LenderFuzz(directory, seed=19)
    report = fuzz.run(inputs=100_000)        # what `make test` runs (tests/lender/test_fuzz.py)
    assert report.crashes == []

A real `LenderServer` (tests.kit.lender.LenderThread, `--insecure`, so that
plain and OSCORE requests both reach every resource) over a store on tmpfs
when there is one (the lender's fsyncs cost nothing there; the fuzzer tests
decisions, not the disk). Each input goes to one entry point:

* ``decoders`` — the wire contract's decoders for what arrives from outside:
  envelopes (mutated from real signed ones, bit by bit and field by field:
  NaN, ±inf, ids with escapes, huge integers), CBOR, enrollment requests,
  site requests, installation reports. Only `WireFormatError` may come out,
  and whatever an envelope decoder accepts must be storable (finite numbers,
  an id of the registry's pattern);
* ``gate`` — the datagram gate, with any source address;
* ``datagram`` — a CoAP message built from random parts (method, type,
  token, Uri-Path among the lender's routes or not, Content-Format, Block1
  with sizes true or false, Size1, an OSCORE option of noise, unknown
  critical options) with a body of any kind (noise, CBOR, batches, mutated
  envelopes, enrollment and site requests), through `LenderServer.answer`: the
  datagram parser, the routes, the lanes, the resources, the store;
* ``blockwise`` — a body in Block1 blocks, in order, out of order, with a
  wrong size or a lying Size1;
* ``oscore`` — a gateway's and a node's real OSCORE contexts protecting
  mutated batches and envelopes: the authenticated path, down to the ack;
* ``udp`` — datagrams through the real socket (a smaller share): the gate's
  reader and aiocoap's message layer, with an honest device between them.

After every batch of inputs: an honest node and an honest gateway each
deliver their next envelope and must get it acked, and nothing may have
crashed: an exception out of a decoder that is no `WireFormatError`, a
5.00 from the server (aiocoap answers that to an exception outside the
refusal tree), an ERROR logged by the lender, or an answer that never came.
Each crash is kept with its entry point and input (a repr, cut).

`python -m tests.kit.fuzz --inputs 10000000` is the nightly run (`make fuzz`).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import socket
import struct
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
import nacl.public
from aiocoap.message import Direction
from aiocoap.numbers import codes

from durable import oscore
from lender.coap.gate import DatagramGate
from lender.enrollment import registration
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence.stores import open_store
from telemetry import cbor
from telemetry.cbor import Tag
from telemetry.enrollment import (
    REPORT_LIMITS,
    AssetBinding,
    CheckResult,
    EnrollmentBody,
    EnrollmentRequest,
    InstallationReport,
    SiteRequest,
    parse_sign,
    valid_id,
)
from telemetry.envelope import Counters, Gap, seal, verify
from telemetry.exc import WireFormatError
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.lender import BASE_TIME, ONE_BUSY_HOST, Device, LenderThread, RawCoap, ack_of, batch

ASSET = "asset-fuzz"
BATCH = 500                       # inputs between two liveness checks
UDP_SHARE = 0.05                  # of the inputs, sent through the real socket
WEIGHTS = {"decoders": 0.34, "gate": 0.1, "datagram": 0.36, "blockwise": 0.04, "oscore": 0.11}
PATHS = [("t",), ("n",), ("enroll",), ("installations",), ("enroll", "sites"), ("enroll", "sites", ASSET),
         (".well-known", "core"), ("t", "x"), ("x",), ("n", "n"), ("enroll", "sites", "../../etc")]
METHODS = [1, 2, 2, 2, 2, 3, 4, 5, 6, 7, 0x1F]     # GET, POST (mostly), PUT, DELETE, FETCH, PATCH, iPATCH, junk
ANSWER_TIMEOUT = 20.0


@dataclass
class Crash:
    entry: str
    what: str
    input: str


@dataclass
class FuzzReport:
    inputs: int = 0
    by_entry: dict[str, int] = field(default_factory=dict)
    crashes: list[Crash] = field(default_factory=list)
    liveness_checks: int = 0
    seconds: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        entries = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_entry.items()))
        return (f"lender fuzzer: {self.inputs:,} inputs in {self.seconds:.1f} s ({entries}); "
                f"{self.liveness_checks} liveness checks; {len(self.crashes)} crash(es)")


REPORTS: list[tuple[int, FuzzReport]] = []   # (seed, report) of the runs in this process, for the run's summary


class ErrorLog(logging.Handler):
    """Keeps every ERROR the lender (or aiocoap, rendering for it) logs: each is a crash."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Mutator:
    """Random bytes and structure, seeded: the same seed makes the same inputs."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def bytes_(self, most: int = 200) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 2, 5, 16, most]) if self.rng.random() < 0.3
                                  else self.rng.randrange(most + 1))

    def mutate(self, raw: bytes) -> bytes:
        rng = self.rng
        data = bytearray(raw)
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            op = rng.randrange(7)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1 and data:
                data[min(at, len(data) - 1)] = rng.choice([0, 0x7F, 0x80, 0xFF, 0x18, 0x1B, 0x5B, 0xF9, 0xFB])
            elif op == 2:
                del data[at:at + rng.randrange(1, 16)]
            elif op == 3:
                data[at:at] = rng.randbytes(rng.randrange(1, 16))
            elif op == 4 and data:
                size = rng.randrange(1, min(32, len(data)) + 1)
                start = rng.randrange(len(data) - size + 1)
                data[at:at] = data[start:start + size]
            elif op == 5:
                del data[at:]
            else:
                data[at:at] = bytes([rng.choice([0x9F, 0xBF, 0x5F, 0x7F, 0xFF, 0xD8, 0xC2, 0x1B])])
        return bytes(data)

    def cbor_value(self, depth: int = 0) -> object:
        rng = self.rng
        kind = rng.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return rng.choice([0, 1, -1, 23, 24, 255, 65535, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**64)])
        if kind == 1:
            return rng.choice([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, 1.5])
        if kind == 2:
            return rng.choice(["", "gw-1", "a" * 70, "gw\n\x1b[31mINFO", "\u202egw", "..", "ñ", "\x00"])
        if kind == 3:
            return self.bytes_(40)
        if kind in (4, 5):
            return rng.choice([True, False, None])
        if kind in (6, 7):
            return rng.randrange(-100, 100)
        if kind in (8, 9):
            return [self.cbor_value(depth + 1) for _ in range(rng.randrange(5))]
        if kind == 10:
            return {rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1, "k", 0]): self.cbor_value(depth + 1)
                    for _ in range(rng.randrange(5))}
        return Tag(rng.choice([18, 98, 1, 2, 24, 55799]), self.cbor_value(depth + 1))

    def cbor(self) -> bytes:
        try:
            return cbor.encode(self.cbor_value())
        except (TypeError, ValueError):
            return b"\xa0"


class Material:
    """What real devices and technicians send, for the mutator to start from."""

    def __init__(self, rng: random.Random, node: Device, gateway: Device, technician: Identity) -> None:
        self.rng = rng
        # the honest devices' keys, far from the seqs they deliver (what the fuzzer stores never touches their chain)
        self.node = Device(node.name, identity=node.identity, seq=10**9)
        self.gateway = Device(gateway.name, identity=gateway.identity, seq=10**9)
        self.technician = technician
        stranger = Device(gateway.name)  # a key nobody registered, naming a registered device
        self.envelopes = [self._envelope(d) for d in (self.node, self.gateway, stranger) for _ in range(8)]
        self.requests = []
        for n in range(4):
            key = Identity.generate()
            body = EnrollmentBody(f"fz-{n}", "gateway", key.public_key, "tech-fuzz", {"imei": "867698040123450"},
                                  AssetBinding(ASSET, "Fuzz yard"), int(time.time()), os.urandom(16),
                                  bytes(nacl.public.PrivateKey.generate().public_key))
            self.requests.append(EnrollmentRequest.create(body, key.sign).countersign(technician).encode())
        self.site_requests = [SiteRequest("tech-fuzz", ASSET, int(time.time()), os.urandom(32)).sign(technician),
                              SiteRequest("tech-nobody", ASSET, int(time.time()), os.urandom(32)).sign(technician)]
        device = Identity.generate()
        self.reports = [InstallationReport("node-fuzz", "tech-fuzz", int(time.time()),
                                           (CheckResult("probe", True, "ok"),)).sign(device, device.kid, technician)]

    def _envelope(self, device: Device) -> bytes:
        rng = self.rng
        device.seq += rng.choice([1, 1, 1, 5, 1000])
        records = [Record("temp", value=rng.uniform(-40, 60), unit="Cel", time=BASE_TIME + device.seq),
                   Record("alarm.tamper", boolean=True, time=BASE_TIME + device.seq)][: rng.randrange(1, 3)]
        kind = rng.randrange(3)
        counters = Counters(1, 1) if rng.random() < 0.5 else None
        envelope = seal(device.identity, device=device.name, boot=1, seq=device.seq, prev=device.prev,
                        records=records if kind else [], gap=None if kind else Gap("overflow", 1, 2, 2),
                        counters=counters, compact=device is self.node and counters is not None)
        return envelope.raw

    def envelope(self, mutator: Mutator) -> bytes:
        """A mutated envelope: bytes, or fields (a NaN, an id with escapes, ...) signed by its real key."""
        rng = self.rng
        if rng.random() < 0.35:
            device = rng.choice([self.node, self.gateway])
            value = rng.choice([math.nan, math.inf, -math.inf, 1e308, -(2**63), 2**64 - 1, 0])
            label = rng.choice(["value", "time", "sum"])
            fields = {label: value}
            if label != "value":
                fields["value"] = 1.0
            try:
                return seal(device.identity, device=device.name, boot=rng.choice([0, 1, 2**64 - 1]),
                            seq=rng.choice([device.seq, device.seq + 1, 2**63, 2**64 - 1]), prev=os.urandom(16),
                            records=[Record("temp", **fields)]).raw
            except (ValueError, WireFormatError):
                pass
        raw = rng.choice(self.envelopes)
        if rng.random() < 0.3:  # a field of the payload replaced, the rest re-encoded (the signature then fails)
            try:
                parts = cbor.decode(raw).value
                payload = cbor.decode(parts[2])
                payload[rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])] = mutator.cbor_value()
                parts[2] = cbor.encode(payload)
                return cbor.encode(Tag(18, parts))
            except (WireFormatError, TypeError, ValueError, AttributeError):
                return raw
        return mutator.mutate(raw) if rng.random() < 0.8 else raw

    def body(self, mutator: Mutator, path: tuple[str, ...]) -> bytes:
        rng = self.rng
        pick = rng.randrange(10)
        if pick == 0:
            return mutator.bytes_(rng.choice([40, 300, 1500]))
        if pick == 1:
            return mutator.cbor()
        if path == ("t",) or pick == 2:
            items = [self.envelope(mutator) for _ in range(rng.randrange(0, 5))]
            if rng.random() < 0.2:
                items.append(mutator.cbor_value())
            try:
                return cbor.encode(items)
            except (TypeError, ValueError):
                return b"\x80"
        if path == ("n",) or pick == 3:
            return self.envelope(mutator)
        if path == ("enroll",) or pick == 4:
            return mutator.mutate(rng.choice(self.requests)) if rng.random() < 0.8 else rng.choice(self.requests)
        if path == ("enroll", "sites") or pick == 5:
            return mutator.mutate(rng.choice(self.site_requests)) if rng.random() < 0.7 \
                else rng.choice(self.site_requests)
        if path == ("installations",) or pick == 6:
            return mutator.mutate(rng.choice(self.reports))
        return mutator.bytes_(100)


def coap_request(rng: random.Random, *, code: int, path: tuple[str, ...], payload: bytes, options: list) -> bytes:
    """A CoAP message's bytes with the given options (number, value), sorted and delta-encoded by hand (so that
    any value fits, true to its option's format or not)."""
    token = rng.randbytes(rng.choice([0, 1, 4, 8]))
    mtype = rng.choice([0, 0, 0, 1])  # CON mostly, some NON
    out = bytearray([0x40 | mtype << 4 | len(token), code]) + struct.pack(">H", rng.randrange(0x10000)) + token
    entries = [(11, segment.encode()) for segment in path] + options
    last = 0
    for number, value in sorted(entries, key=lambda e: e[0]):
        delta, length = number - last, len(value)
        last = number
        head, extra = bytearray(1), bytearray()
        for shift, part in ((4, delta), (0, length)):
            if part < 13:
                head[0] |= part << shift
            elif part < 269:
                head[0] |= 13 << shift
                extra.append(part - 13)
            else:
                head[0] |= 14 << shift
                extra += struct.pack(">H", part - 269)
        out += head + extra + value
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def _uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def random_options(rng: random.Random) -> list:
    options = []
    if rng.random() < 0.85:
        options.append((12, _uint(rng.choice([60, 60, 60, 0, 42, 50, 65535]))))
    if rng.random() < 0.1:
        options.append((27, _uint(rng.randrange(1 << 20))))                 # Block1, any
    if rng.random() < 0.05:
        options.append((23, _uint(rng.randrange(1 << 20))))                 # Block2, any
    if rng.random() < 0.05:
        options.append((60, _uint(rng.choice([0, 1024, 65536, 2**32 - 1]))))  # Size1
    if rng.random() < 0.05:
        options.append((9, rng.randbytes(rng.randrange(0, 20))))            # OSCORE, noise
    if rng.random() < 0.03:
        options.append((rng.choice([13, 25, 99, 2049, 65001]), rng.randbytes(rng.randrange(0, 8))))  # unknown
    if rng.random() < 0.03:
        options.append((252, rng.randbytes(8)))                             # Echo
    return options


class LenderFuzz:
    """A lender under fuzz in `directory` (see the module docstring)."""

    def __init__(self, directory: Path, *, seed: int = 19) -> None:
        self.directory = Path(directory)
        self.rng = random.Random(seed)
        self.mutator = Mutator(self.rng)
        self.report = FuzzReport()

    def run(self, inputs: int) -> FuzzReport:
        data = self.directory / "lender"
        errors = ErrorLog()
        loggers = [logging.getLogger(name) for name in ("lender", "aiocoap", "coap-server")]
        with ExitStack() as stack:
            for logger in loggers:
                logger.addHandler(errors)
                stack.callback(logger.removeHandler, errors)
            store = stack.enter_context(open_store(data))
            node, gateway, oscore_node = Device("node-fuzz"), Device("gw-fuzz"), Device("node-oscore-fuzz")
            registration.register(store, data, node.name, node.identity.public_key, with_oscore=False, asset=ASSET)
            gw_context = registration.register(store, data, gateway.name, gateway.identity.public_key,
                                               asset=ASSET).device_context
            node_context = registration.register(store, data, oscore_node.name, oscore_node.identity.public_key,
                                                 asset=ASSET).device_context
            technician = Identity.generate()
            TechnicianRegistry(data).add("tech-fuzz", technician.public_key)
            (data / "enroll" / "sites").mkdir(parents=True, exist_ok=True)
            (data / "enroll" / "sites" / f"{ASSET}.toml").write_text(f'[asset]\nid = "{ASSET}"\nsite = "Fuzz yard"\n')
            material = Material(self.rng, node, gateway, technician)
            lender = stack.enter_context(LenderThread(data, insecure=True, gate_policy=ONE_BUSY_HOST))
            honest = stack.enter_context(_HonestDevices(lender, node, gateway, oscore_node, gw_context, node_context))
            started = time.perf_counter()
            udp_due = 0.0
            while self.report.inputs < inputs:
                count = min(BATCH, inputs - self.report.inputs)
                udp = int(udp_due + count * UDP_SHARE)
                udp_due = udp_due + count * UDP_SHARE - udp
                lender.run(self._batch(lender, material, honest, count - udp), timeout=600)
                if udp:
                    self._udp(lender, material, udp)
                self._check(lender, honest, errors)
            self.report.seconds = time.perf_counter() - started
        return self.report

    # --- the entry points ---

    def _count(self, entry: str) -> None:
        self.report.inputs += 1
        self.report.by_entry[entry] = self.report.by_entry.get(entry, 0) + 1

    def _crash(self, entry: str, what: str, data: object) -> None:
        self.report.crashes.append(Crash(entry, what, repr(data)[:300]))

    async def _batch(self, lender: LenderThread, material: Material, honest: _HonestDevices, count: int) -> None:
        entries, weights = list(WEIGHTS), list(WEIGHTS.values())
        gate = DatagramGate()
        for entry in self.rng.choices(entries, weights, k=count):
            if entry == "decoders":
                self._decoders(material)
            elif entry == "gate":
                self._gate(gate)
            elif entry == "datagram":
                await self._datagram(lender, material)
            elif entry == "blockwise":
                await self._blockwise(lender, material)
            else:
                await self._oscore(lender, material, honest)

    def _decoders(self, material: Material) -> None:
        rng, mutator = self.rng, self.mutator
        pick = rng.randrange(5)
        data = material.envelope(mutator) if pick < 2 else mutator.cbor() if pick == 2 else \
            mutator.mutate(rng.choice(material.requests + material.site_requests + material.reports))
        self._count("decoders")
        try:
            if pick < 2:
                verdict = verify(data, honest_keys(material))
                envelope = verdict.envelope
                if envelope is not None and not _storable(envelope):
                    self._crash("decoders", "an envelope the decoder accepted cannot be stored", data)
            elif pick == 2:
                cbor.decode(data)
            else:
                EnrollmentRequest.decode(data)
                SiteRequest.parse(data)
                InstallationReport.decode(parse_sign(data, REPORT_LIMITS)[0])
        except WireFormatError:
            pass
        except Exception as exc:  # outside the wire contract's one exception family
            self._crash("decoders", f"{type(exc).__name__}: {exc}", data)

    def _gate(self, gate: DatagramGate) -> None:
        rng = self.rng
        host = rng.choice([f"::ffff:10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
                           f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}", "::1", "fe80::1%lo",
                           "not an address", "", "::ffff:", "1.2.3.4"])
        self._count("gate")
        try:
            gate.admit(host)
            if rng.random() < 0.1:
                gate.trust(host)
        except Exception as exc:
            self._crash("gate", f"{type(exc).__name__}: {exc}", host)

    async def _answer(self, lender: LenderThread, entry: str, datagram: bytes) -> aiocoap.Message | None:
        source = (f"127.0.0.{self.rng.randrange(1, 60)}", self.rng.randrange(1024, 65536))
        try:
            response = await asyncio.wait_for(lender.server.answer(datagram, source), ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            self._crash(entry, f"no answer within {ANSWER_TIMEOUT} s", datagram)
            return None
        except Exception as exc:
            self._crash(entry, f"{type(exc).__name__}: {exc}", datagram)
            return None
        if response is not None:
            self.report.answers[response.code.dotted] = self.report.answers.get(response.code.dotted, 0) + 1
            if response.code == codes.INTERNAL_SERVER_ERROR:
                self._crash(entry, "5.00 Internal Server Error", datagram)
        return response

    async def _datagram(self, lender: LenderThread, material: Material) -> None:
        rng = self.rng
        self._count("datagram")
        if rng.random() < 0.05:  # not CoAP at all
            await self._answer(lender, "datagram", self.mutator.bytes_(300))
            return
        path = rng.choice(PATHS) if rng.random() < 0.95 else tuple(
            self.mutator.bytes_(8).decode("latin-1") for _ in range(rng.randrange(4)))
        payload = material.body(self.mutator, path)
        datagram = coap_request(rng, code=rng.choice(METHODS), path=path, payload=payload,
                                options=random_options(rng))
        if rng.random() < 0.05:
            datagram = self.mutator.mutate(datagram)
        await self._answer(lender, "datagram", datagram)

    async def _blockwise(self, lender: LenderThread, material: Material) -> None:
        rng = self.rng
        self._count("blockwise")
        path = rng.choice([("t",), ("enroll",), ("installations",), ("enroll", "sites"), ("n",)])
        body = material.body(self.mutator, path) + self.mutator.bytes_(rng.choice([0, 100, 3000]))
        szx = rng.randrange(7)
        size = 16 << szx
        blocks = [body[i:i + size] for i in range(0, max(len(body), 1), size)]
        order = list(range(len(blocks)))
        if rng.random() < 0.3:
            rng.shuffle(order)
        for index in order[: rng.randrange(1, len(order) + 1) if rng.random() < 0.3 else len(order)]:
            more = index < len(blocks) - 1
            block = blocks[index] if rng.random() < 0.9 else blocks[index][:-1]
            options = [(12, _uint(60)), (27, _uint(index << 4 | more << 3 | szx))]
            if index == 0 and rng.random() < 0.3:
                options.append((60, _uint(rng.choice([len(body), 10**9, 0]))))
            token = rng.randbytes(4)
            datagram = coap_request(random.Random(token), code=2, path=path, payload=block, options=options)
            response = await self._answer(lender, "blockwise", datagram)
            if response is None or response.code != codes.CONTINUE:
                break

    async def _oscore(self, lender: LenderThread, material: Material, honest: _HonestDevices) -> None:
        rng = self.rng
        self._count("oscore")
        gateway = rng.random() < 0.6
        path = ("t",) if gateway else ("n",)
        body = material.body(self.mutator, path)
        request = aiocoap.Message(code=rng.choice([codes.POST] * 8 + [codes.GET, codes.PUT]), uri_path=path,
                                  payload=body, content_format=rng.choice([60] * 9 + [0]))
        context = honest.gw_security if gateway else honest.node_security
        response = await honest.protected(context, request)
        if response is None:
            self._crash("oscore", "no answer to a protected request", body)
        elif response.code == codes.INTERNAL_SERVER_ERROR:
            self._crash("oscore", "5.00 Internal Server Error", body)

    def _udp(self, lender: LenderThread, material: Material, count: int) -> None:
        """`count` datagrams through the real socket from 127.0.0.2, CON requests answered or not: then the
        honest device must still be served over the same socket layer."""
        rng = self.rng
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))
            for _ in range(count):
                self._count("udp")
                if rng.random() < 0.2:
                    datagram = self.mutator.bytes_(rng.choice([40, 1400, 60000]))
                else:
                    path = rng.choice(PATHS)
                    datagram = coap_request(rng, code=rng.choice(METHODS + [0, 64, 69]), path=path,
                                            payload=material.body(self.mutator, path), options=random_options(rng))
                sock.sendto(datagram, ("127.0.0.1", lender.port))

    # --- after each batch ---

    def _check(self, lender: LenderThread, honest: _HonestDevices, errors: ErrorLog) -> None:
        self.report.liveness_checks += 1
        for problem in honest.deliver():
            self._crash("liveness", problem, "")
        for record in errors.records:
            self._crash(record.name, f"logged an error: {record.getMessage()[:200]}", record.exc_text or "")
        errors.records.clear()


def honest_keys(material: Material) -> dict:
    return {d.identity.kid: d.identity.device_key(d.name) for d in (material.node, material.gateway)}


def _storable(envelope) -> bool:
    """What the store needs of a decoded envelope: an id of the registry's pattern and finite numbers."""
    if not valid_id(envelope.device):
        return False
    for record in envelope.records:
        for number in (record.value, record.sum, record.time, record.update_time):
            if isinstance(number, float) and not math.isfinite(number):
                return False
    return True


class _HonestDevices:
    """A plain node, an OSCORE gateway and an OSCORE node that deliver between the fuzzer's batches."""

    def __init__(self, lender: LenderThread, node: Device, gateway: Device, oscore_node: Device,
                 gw_context: Path, node_context: Path) -> None:
        self.lender = lender
        self.node, self.gateway, self.oscore_node = node, gateway, oscore_node
        self.gw_security = oscore.open_context(gw_context)
        self.node_security = oscore.open_context(node_context)
        self.client = RawCoap(lender.port, timeout=1.0, tries=20)

    def __enter__(self) -> _HonestDevices:
        return self

    def __exit__(self, *exc_info) -> None:
        self.client.close()
        oscore.close_context(self.gw_security)
        oscore.close_context(self.node_security)

    async def protected(self, security, request: aiocoap.Message) -> aiocoap.Message | None:
        """`request` protected with a device's context, answered in-process, the answer unprotected."""
        outer, request_id = security.protect(request)
        outer.mtype, outer.mid, outer.token = aiocoap.CON, random.randrange(0x10000), os.urandom(4)
        response = await self.lender.server.answer(outer.encode(), ("127.0.0.1", 40000))
        if response is None:
            return None
        response.direction = Direction.INCOMING  # as it would arrive at the device
        try:
            inner, _ = security.unprotect(response, request_id)
        except Exception:  # an unprotected answer (a 4.01 of the OSCORE layer): the outer message is the answer
            return response
        return inner

    def deliver(self) -> list[str]:
        """Each honest device delivers its next envelope: a list of what went wrong (empty: all acked)."""
        problems = []
        envelope = self.node.next()
        answer = self.client.post(envelope.raw, path=("n",))
        if answer.code != codes.CHANGED or ack_of(answer.payload)[1] != [envelope.seq]:
            problems.append(f"the honest plain node's seq {envelope.seq} was answered {answer.code}: "
                            f"{answer.payload[:200]!r}")
        for device, security, path in ((self.gateway, self.gw_security, ("t",)),
                                       (self.oscore_node, self.node_security, ("n",))):
            envelope = device.next()
            body = batch([envelope]) if path == ("t",) else envelope.raw
            request = aiocoap.Message(code=codes.POST, uri_path=path, payload=body, content_format=60)
            response = self.lender.run(self.protected(security, request), timeout=60)
            if response is None or response.code != codes.CHANGED or ack_of(response.payload)[1] != [envelope.seq]:
                problems.append(f"the honest {device.name}'s seq {envelope.seq} over OSCORE was answered "
                                f"{None if response is None else response.code}")
        return problems


def fuzz_directory() -> tempfile.TemporaryDirectory:
    """A temporary directory on tmpfs when there is one (fsync costs nothing there)."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(prefix="lender-fuzz-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                       else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kit.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    with fuzz_directory() as directory:
        report = LenderFuzz(Path(directory), seed=args.seed).run(args.inputs)
    print(f"{report.line()} (seed {args.seed})")
    for crash in report.crashes[:50]:
        print(f"  {crash.entry}: {crash.what}\n    input {crash.input}")
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
