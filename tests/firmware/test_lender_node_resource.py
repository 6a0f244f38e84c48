"""The lender's node resource /n over real CoAP on 127.0.0.1: plain CoAP for nodes without a context (node keys only,
the gateway path's verification, de-duplication, quarantine and acks, nothing else opened to plain CoAP), and under
OSCORE for nodes with one (a node's compact ack; its own envelopes only)."""
from __future__ import annotations

import os
import socket

import aiocoap
import pytest
from aiocoap.numbers import codes
from aiocoap.optiontypes import BlockOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lender.enrollment import registration
from lender.evidence import registry
from lender.coap.node import MAX_NODE_BODY
from telemetry import cbor
from telemetry.envelope import GENESIS, Reason, seal
from telemetry.identity import Identity
from telemetry.receipt import CheckpointReference
from telemetry.senml import Record

T0 = 1767225600


class PlainCoap:
    """A confirmable-request client over one UDP socket, no OSCORE: what a node's modem sends."""

    def __init__(self, port: int) -> None:
        self.address = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.mid = int.from_bytes(os.urandom(2), "big")

    def post(self, payload: bytes, *, path=("n",), code=codes.POST, content_format: int | None = 60,
             block1: BlockOption.BlockwiseTuple | None = None) -> aiocoap.Message:
        self.mid = (self.mid + 1) & 0xFFFF
        message = aiocoap.Message(code=code, payload=payload, uri_path=path)
        message.mtype, message.mid, message.token = aiocoap.CON, self.mid, os.urandom(4)
        if content_format is not None:
            message.opt.content_format = content_format
        if block1 is not None:
            message.opt.block1 = block1
        for _ in range(4):
            self.sock.sendto(message.encode(), self.address)
            self.sock.settimeout(3)
            try:
                while True:
                    answer = aiocoap.Message.decode(self.sock.recvfrom(65536)[0])
                    if answer.mtype == aiocoap.ACK and answer.code == codes.EMPTY:
                        continue  # a separate response follows
                    if answer.token == message.token:
                        if answer.mtype == aiocoap.CON:
                            empty = aiocoap.Message(code=codes.EMPTY)
                            empty.mtype, empty.mid = aiocoap.ACK, answer.mid
                            self.sock.sendto(empty.encode(), self.address)
                        return answer
            except TimeoutError:
                continue
        raise AssertionError("the lender did not answer")

    def close(self) -> None:
        self.sock.close()


class Signer:
    def __init__(self, name: str) -> None:
        self.name, self.identity, self.seq, self.prev = name, Identity.generate(), 0, GENESIS

    def next(self) -> bytes:
        self.seq += 1
        envelope = seal(self.identity, device=self.name, boot=1, seq=self.seq, prev=self.prev,
                        records=[Record("temp", value=4.5, unit="Cel", time=T0 + self.seq)])
        self.prev = envelope.digest
        return envelope.raw


@pytest.fixture
def client(lender):
    plain = PlainCoap(lender.port)
    yield plain
    plain.close()


def ack_map(payload: bytes) -> dict:
    """The ack map without its lender token (key 4), which must be 12 bytes when the lender sends one, and
    without the checkpoint reference (key 6) a node's ack carries: never the full receipt (key 5)."""
    ack = cbor.decode(payload)
    token = ack.pop(4, None)
    assert token is None or (isinstance(token, bytes) and len(token) == 12), token
    assert 5 not in ack, "a node's ack carries a checkpoint reference, not a whole receipt"
    if 6 in ack:
        CheckpointReference.from_cbor(ack.pop(6))
    return ack


def enroll(lender, signer: Signer, *, oscore: bool = False) -> None:
    with lender.store() as store:
        registration.register(store, lender.data_dir, signer.name, signer.identity.public_key, with_oscore=oscore)


def test_a_registered_node_posts_one_envelope_and_gets_the_gateway_paths_ack_exactly_once(lender, client):
    node = Signer("yard-3")
    enroll(lender, node)
    raw = node.next()
    answer = client.post(raw)
    assert answer.code == codes.CHANGED and answer.opt.content_format == 60
    assert ack_map(answer.payload) == {1: [1], 2: [], 3: []}
    again = client.post(raw)  # a retransmission whose ack was lost
    assert ack_map(again.payload) == {1: [], 2: [1], 3: []}
    with lender.store() as store:
        assert [e.seq for e in store.envelopes("yard-3")] == [1]


def test_a_gateway_key_is_refused_on_the_node_path_and_kept_in_quarantine(lender, client):
    gateway = Signer("gw-1")
    enroll(lender, gateway, oscore=True)
    answer = client.post(gateway.next())
    ack = cbor.decode(answer.payload)
    assert answer.code == codes.CHANGED and ack[1] == [] and ack[3][0][:2] == [0, Reason.UNKNOWN_KEY]
    assert "OSCORE" in ack[3][0][2]
    with lender.store() as store:
        assert [q.reason for q in store.quarantined()] == [Reason.UNKNOWN_KEY]
        assert list(store.envelopes("gw-1")) == []


def test_unknown_revoked_and_forged_nodes_are_refused_with_the_gateway_paths_codes(lender, client):
    stranger = Signer("nobody")
    assert client.post(stranger.next()).code == codes.UNAUTHORIZED
    revoked = Signer("yard-old")
    enroll(lender, revoked)
    with lender.store() as store:
        registry.revoke(store, "yard-old")
    assert client.post(revoked.next()).code == codes.FORBIDDEN
    node = Signer("yard-4")
    enroll(lender, node)
    forged = bytearray(node.next())
    forged[-1] ^= 0x01  # one bit of the signature
    ack = cbor.decode(client.post(bytes(forged)).payload)
    assert ack[1] == [] and ack[3][0][1] == Reason.BAD_SIGNATURE
    with lender.store() as store:
        assert {q.reason for q in store.quarantined()} == {Reason.UNKNOWN_KEY, Reason.REVOKED, Reason.BAD_SIGNATURE}


def test_bodies_that_are_not_one_small_envelope_are_refused_with_a_reason(lender, client):
    node = Signer("yard-5")
    enroll(lender, node)
    raw = node.next()
    assert client.post(cbor.encode([raw])).code == codes.BAD_REQUEST  # the gateway's array belongs on /t
    too_big = client.post(b"\xd2" + bytes(MAX_NODE_BODY))
    assert too_big.code == codes.REQUEST_ENTITY_TOO_LARGE and too_big.opt.size1 == MAX_NODE_BODY
    assert client.post(raw, content_format=0).code == codes.UNSUPPORTED_CONTENT_FORMAT
    assert client.post(raw, code=codes.GET).code == codes.METHOD_NOT_ALLOWED
    blockwise = client.post(raw[:64], block1=BlockOption.BlockwiseTuple(0, True, 2))
    assert blockwise.code == codes.REQUEST_ENTITY_TOO_LARGE and blockwise.opt.size1 == MAX_NODE_BODY
    assert cbor.decode(client.post(raw).payload)[1] == [1], "the node can still deliver"


def test_plain_coap_opens_only_the_node_path_the_gateway_path_still_requires_oscore(lender, client):
    node = Signer("yard-6")
    enroll(lender, node)
    assert client.post(cbor.encode([node.next()]), path=("t",)).code == codes.UNAUTHORIZED
    assert client.post(b"", path=(".well-known", "core"), code=codes.GET).code == codes.UNAUTHORIZED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\xd2\x84" + b)))
def test_any_body_gets_an_answer_and_the_lender_keeps_serving(lender, client, body):
    answer = client.post(body)
    assert answer.code in (codes.CHANGED, codes.BAD_REQUEST, codes.UNAUTHORIZED, codes.REQUEST_ENTITY_TOO_LARGE), answer
    if answer.code == codes.CHANGED:
        assert cbor.decode(answer.payload)[1] == []


def oscore_post(lender, device: str, payload: bytes) -> aiocoap.Message:
    """POST payload to /n through `device`'s OSCORE context (its node side, as registration wrote it), with aiocoap."""
    import asyncio

    from durable.oscore import close_context, open_context

    async def post() -> aiocoap.Message:
        context = await aiocoap.Context.create_client_context()
        security = open_context(lender.data_dir / registration.DEVICE_CONTEXTS_DIR / device)
        context.client_credentials[f"coap://127.0.0.1:{lender.port}/*"] = security
        try:
            request = aiocoap.Message(code=codes.POST, uri=f"coap://127.0.0.1:{lender.port}/n", payload=payload,
                                      content_format=60)
            return await asyncio.wait_for(context.request(request).response, 10)
        finally:
            await context.shutdown()
            close_context(security)
    return asyncio.run(post())


def test_a_node_with_a_context_delivers_under_oscore_and_gets_a_nodes_compact_ack(lender):
    node = Signer("yard-7")
    enroll(lender, node, oscore=True)
    raw = node.next()
    answer = oscore_post(lender, "yard-7", raw)
    assert answer.code == codes.CHANGED and ack_map(answer.payload) == {1: [1], 2: [], 3: []}
    assert ack_map(oscore_post(lender, "yard-7", raw).payload) == {1: [], 2: [1], 3: []}
    with lender.store() as store:
        assert [e.seq for e in store.envelopes("yard-7")] == [1]


def test_the_node_path_stores_version_3_and_still_reads_version_2_on_one_chain(lender, client):
    # A node updated to the compact envelope (version 3) goes on from its version 2 chain: both are stored, under
    # OSCORE and over plain CoAP, as the same records, and the chain links across the change.
    from telemetry.envelope import Counters, decode

    def report(signer: Signer, *, compact: bool) -> bytes:
        signer.seq += 1
        records = [Record("temp", value=4.5, unit="Cel", time=T0 + signer.seq), Record("tamper", boolean=False,
                   time=T0 + signer.seq), Record("batt", value=3.6, unit="V", time=T0 + signer.seq)]
        envelope = seal(signer.identity, device=signer.name, boot=1, seq=signer.seq, prev=signer.prev, records=records,
                        counters=Counters(0, 0), token=bytes(12), compact=compact)
        signer.prev = envelope.digest
        return envelope.raw

    protected, plain = Signer("yard-10"), Signer("yard-11")
    enroll(lender, protected, oscore=True)
    enroll(lender, plain)
    for compact in (False, True, False, True):
        answer = oscore_post(lender, "yard-10", report(protected, compact=compact))
        assert answer.code == codes.CHANGED and ack_map(answer.payload)[1] == [protected.seq]
        answer = client.post(report(plain, compact=compact))
        assert answer.code == codes.CHANGED and ack_map(answer.payload)[1] == [plain.seq]
    with lender.store() as store:
        for device in ("yard-10", "yard-11"):
            stored = list(store.envelopes(device))
            assert [e.version for e in stored] == [2, 3, 2, 3]
            assert all(after.prev == before.digest for before, after in zip(stored, stored[1:]))
            assert len({tuple((r.name, r.value, r.boolean, r.unit) for r in decode(e.raw).records)
                        for e in stored}) == 1
            assert [len(e.raw) for e in stored][1] < [len(e.raw) for e in stored][0] - 25
        assert list(store.quarantined()) == []


def test_under_oscore_a_device_delivers_its_own_envelopes_only(lender):
    node, other = Signer("yard-8"), Signer("yard-9")
    enroll(lender, node, oscore=True)
    enroll(lender, other, oscore=True)
    answer = oscore_post(lender, "yard-8", other.next())  # yard-9's envelope through yard-8's context
    assert answer.code == codes.UNAUTHORIZED and b"its own envelopes" in answer.payload
    with lender.store() as store:
        assert list(store.envelopes("yard-9")) == [] and [q.reason for q in store.quarantined()] == [
            Reason.UNKNOWN_KEY]
