"""The lender's CoAP server over real UDP on 127.0.0.1: acks, refusals, block-wise caps, floods, OSCORE."""
from __future__ import annotations

import asyncio
import random
import socket

import aiocoap
import pytest
from aiocoap.numbers import codes
from aiocoap.optiontypes import BlockOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.kit.lender import Device, LenderThread, RawCoap, ack_of, batch, enroll, oscore_post

from lender.evidence import registry
from lender.coap.blocks import BlockAssembly, Continue
from lender.server import parse_bind
from lender.exc import ServeError
from telemetry import cbor
from telemetry.envelope import Reason, seal, verify

Block = BlockOption.BlockwiseTuple


@pytest.fixture
def gateway(store, data_dir) -> Device:
    device = Device("gw-1")
    enroll(store, data_dir, device)
    return device


def test_a_gateway_batch_is_acked_with_the_seqs_stored(lender, raw_client, gateway, store):
    answer = raw_client.post(batch(gateway.chain(3)))
    assert answer.code == codes.CHANGED and answer.opt.content_format == 60
    assert ack_of(answer.payload) == {1: [1, 2, 3], 2: [], 3: []}
    assert store.counts().envelopes == 3


def test_forged_replayed_and_truncated_envelopes_each_get_the_right_answer(lender, raw_client, gateway, store):
    first, second = gateway.chain(2)
    raw_client.post(batch([first]))
    forger = Device("gw-1")  # valid CBOR, valid COSE, signed with a key the lender does not know
    forged = seal(forger.identity, device="gw-1", boot=1, seq=2, prev=first.digest)
    answer = raw_client.post(batch([forged]))
    assert answer.code == codes.CHANGED
    assert ack_of(answer.payload)[3][0][:2] == [0, int(Reason.UNKNOWN_KEY)]
    replayed = raw_client.post(batch([first]))
    assert ack_of(replayed.payload) == {1: [], 2: [1], 3: []}
    truncated = raw_client.post(batch([second.raw[:-10]]))
    assert ack_of(truncated.payload)[3][0][:2] == [0, int(Reason.MALFORMED)]
    truncated_body = raw_client.post(batch([second])[:-10])
    assert truncated_body.code == codes.BAD_REQUEST and b"truncated" in truncated_body.payload
    assert store.counts().envelopes == 1
    assert {q.reason for q in store.quarantined()} == {Reason.UNKNOWN_KEY, Reason.MALFORMED}


def test_a_revoked_device_is_answered_forbidden_and_an_unknown_one_unauthorized(lender, raw_client, gateway, store):
    stranger = Device("gw-stranger")
    assert raw_client.post(batch(stranger.chain(2))).code == codes.UNAUTHORIZED
    registry.revoke(store, "gw-1")
    answer = raw_client.post(batch(gateway.chain(2)))
    assert answer.code == codes.FORBIDDEN and b"revoked" in answer.payload


def test_a_storage_failure_is_answered_5_03_and_nothing_is_acked(lender, raw_client, gateway, store):
    envelopes = gateway.chain(4)
    # a real SQLite failure inside the lender's write transaction, on its third envelope
    store._conn.execute("CREATE TRIGGER fail_at_three BEFORE INSERT ON records WHEN NEW.seq = 3"
                        " BEGIN SELECT RAISE(ABORT, 'disk trouble'); END")
    answer = raw_client.post(batch(envelopes))
    assert answer.code == codes.SERVICE_UNAVAILABLE and answer.opt.max_age == 30
    assert store.counts().envelopes == 0
    store._conn.execute("DROP TRIGGER fail_at_three")
    assert ack_of(raw_client.post(batch(envelopes)).payload) == {1: [1, 2, 3, 4], 2: [], 3: []}


def test_only_post_with_cbor_is_accepted_on_t(lender, raw_client, gateway):
    assert raw_client.request(code=codes.GET).code == codes.METHOD_NOT_ALLOWED
    assert raw_client.post(batch(gateway.chain(1)), content_format=0).code == codes.UNSUPPORTED_CONTENT_FORMAT
    assert raw_client.post(batch([]), path=("nothing",)).code == codes.NOT_FOUND


def test_a_long_batch_goes_block_wise_and_is_stored_whole(lender, gateway, store):
    envelopes = gateway.chain(100)  # ~16 KiB: 16 Block1 blocks

    async def post():
        client = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=codes.POST, uri=lender.uri, payload=batch(envelopes), content_format=60)
            return await client.request(request).response
        finally:
            await client.shutdown()

    answer = asyncio.run(post())
    assert answer.code == codes.CHANGED and ack_of(answer.payload)[1] == list(range(1, 101))
    assert store.counts().envelopes == 100


def test_a_long_ack_comes_back_block_wise_and_whole(lender, gateway, store):
    strangers = [seal(Device("gw-1").identity, device="gw-1", boot=1, seq=n, prev=bytes(16)) for n in range(2, 42)]
    body = batch([gateway.next()] + strangers)  # 40 refusals with their texts: an ack of several KiB

    async def post():
        client = await aiocoap.Context.create_client_context()
        try:
            request = aiocoap.Message(code=codes.POST, uri=lender.uri, payload=body, content_format=60)
            return await client.request(request).response
        finally:
            await client.shutdown()

    answer = asyncio.run(post())
    assert answer.code == codes.CHANGED and len(answer.payload) > 2048
    ack = ack_of(answer.payload)
    assert ack[1] == [1] and [entry[:2] for entry in ack[3]] == [[n, int(Reason.UNKNOWN_KEY)] for n in range(1, 41)]


def test_a_body_announced_over_the_cap_is_refused_at_its_first_block(data_dir, store):
    with LenderThread(data_dir, insecure=True, max_body=4096) as small:
        client = RawCoap(small.port)
        answer = client.post(b"\x00" * 1024, block1=Block(0, True, 6), size1=10_000)
        assert answer.code == codes.REQUEST_ENTITY_TOO_LARGE and answer.opt.size1 == 4096
        client.close()
    (entry,) = store.quarantined()
    assert entry.reason is Reason.OVERSIZE and entry.size == 10_000


def test_block_wise_reassembly_stops_at_the_cap_without_a_size_indication(data_dir, store):
    with LenderThread(data_dir, insecure=True, max_body=4096) as small:
        client = RawCoap(small.port)
        answers = [client.post(b"\x41" * 1024, block1=Block(n, True, 6)) for n in range(5)]
        assert [a.code for a in answers] == [codes.CONTINUE] * 4 + [codes.REQUEST_ENTITY_TOO_LARGE]
        assert answers[0].opt.block1.block_number == 0
        # the upload was dropped: its next block has nothing to join
        assert client.post(b"\x41" * 10, block1=Block(5, False, 6)).code == codes.REQUEST_ENTITY_INCOMPLETE
        client.close()


def test_a_block_out_of_order_or_of_the_wrong_size_is_refused(lender, raw_client):
    assert raw_client.post(b"x" * 16, block1=Block(3, False, 6)).code == codes.REQUEST_ENTITY_INCOMPLETE
    assert raw_client.post(b"x" * 1024, block1=Block(0, True, 6)).code == codes.CONTINUE
    assert raw_client.post(b"x" * 100, block1=Block(1, True, 6)).code == codes.BAD_REQUEST
    assert raw_client.post(b"x" * 1024, block1=Block(0, True, 6)).code == codes.CONTINUE
    assert raw_client.post(b"x" * 1024, block1=Block(2, True, 6)).code == codes.REQUEST_ENTITY_INCOMPLETE


def test_block_assembly_holds_a_bounded_number_of_uploads():
    class Remote:
        def __init__(self, n):
            self.blockwise_key = ("peer", n)

    assembly = BlockAssembly(2048, max_uploads=8)
    for n in range(100):
        request = aiocoap.Message(code=codes.POST, payload=b"y" * 1024, uri_path=("t",))
        request.opt.block1 = Block(0, True, 6)
        request.remote = Remote(n)
        with pytest.raises(Continue):
            assembly.feed(request)
    assert len(assembly) == 8
    request = aiocoap.Message(code=codes.POST, payload=b"z", uri_path=("t",))
    request.remote = Remote(0)
    assert assembly.feed(request) == b"z"


def test_a_large_single_datagram_is_read_whole(lender, raw_client, gateway, store):
    envelopes = gateway.chain(40)  # ~6.5 KiB in one datagram, beyond aiocoap's 4096-byte read
    body = batch(envelopes)
    assert len(body) > 4096
    answer = raw_client.post(body)
    assert answer.code == codes.CHANGED and ack_of(answer.payload)[1] == list(range(1, 41))


def test_a_single_datagram_over_the_cap_gets_4_13_not_a_truncated_read(data_dir, store, gateway):
    with LenderThread(data_dir, insecure=True, max_body=4096) as small:
        client = RawCoap(small.port)
        answer = client.post(batch(gateway.chain(40)))
        assert answer.code == codes.REQUEST_ENTITY_TOO_LARGE and answer.opt.size1 == 4096
        client.close()


def test_concurrent_retries_of_one_batch_store_it_exactly_once(lender, gateway, store):
    body = batch(gateway.chain(30))  # ~5 KiB: each retry is a block-wise upload of its own

    async def storm():
        clients = [await aiocoap.Context.create_client_context() for _ in range(12)]
        try:
            requests = [c.request(aiocoap.Message(code=codes.POST, uri=lender.uri, payload=body, content_format=60))
                        for c in clients]
            return await asyncio.gather(*(r.response for r in requests))
        finally:
            for c in clients:
                await c.shutdown()

    answers = asyncio.run(storm())
    assert [a.code for a in answers] == [codes.CHANGED] * 12, [a.payload for a in answers]
    acks = [ack_of(a.payload) for a in answers]
    stored_now = sorted(seq for ack in acks for seq in ack[1])
    assert stored_now == list(range(1, 31))  # each seq stored by exactly one of the 12 requests
    assert all(sorted(ack[1] + ack[2]) == list(range(1, 31)) for ack in acks)
    assert store.counts().envelopes == 30


def test_interleaved_uploads_from_one_endpoint_are_told_to_restart_never_mixed(lender, gateway, store):
    body = batch(gateway.chain(30))

    async def interleaved():
        client = await aiocoap.Context.create_client_context()  # one socket: RFC 7959 cannot tell them apart
        try:
            requests = [client.request(aiocoap.Message(code=codes.POST, uri=lender.uri, payload=body,
                                                       content_format=60)) for _ in range(6)]
            return await asyncio.gather(*(r.response for r in requests))
        finally:
            await client.shutdown()

    answers = asyncio.run(interleaved())
    assert {a.code for a in answers} <= {codes.CHANGED, codes.REQUEST_ENTITY_INCOMPLETE}, [a.payload for a in answers]
    assert codes.CHANGED in {a.code for a in answers}
    assert store.counts().envelopes == 30 and not store.quarantined()


# --- hostile input while a real device is served ----------------------------------------------

def _mutated(raw: bytes, data) -> bytes:
    operation = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if operation == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
    if operation == "truncate":
        return raw[:data.draw(st.integers(0, len(raw) - 1))]
    if operation == "extend":
        return raw + data.draw(st.binary(min_size=1, max_size=20))
    at = data.draw(st.integers(0, len(raw)))
    return raw[:at] + data.draw(st.binary(min_size=1, max_size=20)) + raw[at:]


def _body_category(body: bytes) -> str:
    """What the wire contract says a body is: 'batch' (array of byte strings) or 'bad'."""
    try:
        decoded = cbor.decode(body, cbor.Limits(max_bytes=64 * 1024, max_depth=1, max_items=4096))
    except ValueError:
        return "bad"
    return "batch" if isinstance(decoded, list) and all(isinstance(i, bytes) for i in decoded) else "bad"


def test_a_thousand_malformed_payloads_are_answered_rightly_while_a_real_device_keeps_getting_acks(
        lender, gateway, store):
    client = RawCoap(lender.port)
    template = gateway.next()
    assert ack_of(client.post(batch([template])).payload)[1] == [1]
    keys = {gateway.identity.kid: gateway.identity.device_key("gw-1")}
    seen = {"bad": 0, "batch": 0, "valid": 0}

    @settings(max_examples=1100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def hostile(data):
        kind = data.draw(st.sampled_from(["bytes", "cbor", "items", "mutated"]))
        if kind == "bytes":
            body = data.draw(st.binary(max_size=200))
        elif kind == "cbor":
            leaf = st.none() | st.booleans() | st.integers(-(1 << 64), (1 << 64) - 1) | st.text(max_size=8) | st.binary(max_size=8)
            body = cbor.encode(data.draw(st.recursive(
                leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 9), inner, max_size=3),
                max_leaves=12)))
        elif kind == "items":
            body = cbor.encode(data.draw(st.lists(st.binary(max_size=120), min_size=1, max_size=4)))
        else:
            body = cbor.encode([_mutated(template.raw, data)])
        answer = client.post(body)
        category = _body_category(body)
        seen[category] += 1
        if category == "bad":
            assert answer.code == codes.BAD_REQUEST, (body, answer)
            assert answer.payload, "a 4.00 carries a diagnostic"
            return
        items = cbor.decode(body)
        expected = []
        for index, item in enumerate(items):
            verdict = verify(item, keys)
            if verdict.ok:
                assert item == template.raw  # no mutation of a signed envelope can stay valid otherwise
                continue
            expected.append([index, int(verdict.reason)])
        if expected and all(r in (Reason.UNKNOWN_KEY,) for _, r in expected) and len(expected) == len(items) and \
                len({verify(i, keys).envelope.device for i in items}) == 1 and \
                store.device(verify(items[0], keys).envelope.device) is None:
            assert answer.code == codes.UNAUTHORIZED
            return
        assert answer.code == codes.CHANGED, (body, answer, answer.payload)
        ack = ack_of(answer.payload)
        assert [entry[:2] for entry in ack[3]] == expected
        # between hostile requests, the real device posts its next reading and is acked
        if data.draw(st.integers(0, 9)) == 0:
            envelope = gateway.next()
            assert ack_of(client.post(batch([envelope])).payload) == {1: [envelope.seq], 2: [], 3: []}
            seen["valid"] += 1

    hostile()
    client.close()
    assert seen["bad"] + seen["batch"] >= 1000
    assert seen["bad"] > 100 and seen["batch"] > 100 and seen["valid"] > 20
    assert store.counts().envelopes == gateway.seq
    assert store.missing_ranges("gw-1") == []


def test_a_flood_of_garbage_datagrams_does_not_stop_a_device_being_served(lender, gateway, store):
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    device = RawCoap(lender.port, timeout=0.3, tries=30)  # a datagram lost to a full receive buffer is simply resent
    hostile_coap = RawCoap(lender.port, timeout=0.3, tries=30)
    rng = random.Random(7)
    try:
        for round_number in range(20):
            for _ in range(200):  # not CoAP at all: random bytes, empty datagrams, huge ones
                size = rng.choice([0, 1, 4, 40, 400, 4000, 60000])
                flood.sendto(rng.randbytes(size), ("127.0.0.1", lender.port))
            for _ in range(5):  # CoAP, but a garbage body
                assert hostile_coap.post(rng.randbytes(rng.randrange(1, 300))).code == codes.BAD_REQUEST
            envelopes = [gateway.next() for _ in range(3)]
            ack = ack_of(device.post(batch(envelopes)).payload)
            assert ack == {1: [e.seq for e in envelopes], 2: [], 3: []}, round_number
    finally:
        flood.close()
        device.close()
        hostile_coap.close()
    assert store.counts().envelopes == 60


# --- OSCORE -----------------------------------------------------------------------------------

def test_with_oscore_a_registered_device_is_served_and_plain_coap_is_refused(data_dir, store, tmp_path):
    gateway = Device("gw-secure")
    registration = enroll(store, data_dir, gateway, oscore=True, device_context=tmp_path / "gw-side")
    with LenderThread(data_dir, insecure=False) as secure:
        answer = asyncio.run(oscore_post(secure.uri, registration.device_context, batch(gateway.chain(30))))
        assert answer.code == codes.CHANGED and ack_of(answer.payload)[1] == list(range(1, 31))
        plain = RawCoap(secure.port)
        refused = plain.post(batch(gateway.chain(1)))
        plain.close()
        assert refused.code == codes.UNAUTHORIZED
        assert store.counts().envelopes == 30
        peer = store.envelope("gw-secure", 1).peer
        assert peer.startswith("127.0.0.1") and "OSCORE" in peer


def test_a_device_registered_while_the_lender_runs_is_served_without_a_restart(data_dir, store, tmp_path):
    with LenderThread(data_dir, insecure=False) as secure:
        late = Device("gw-late")
        registration = enroll(store, data_dir, late, oscore=True, device_context=tmp_path / "late-side")
        answer = asyncio.run(oscore_post(secure.uri, registration.device_context, batch(late.chain(2))))
        assert answer.code == codes.CHANGED and ack_of(answer.payload)[1] == [1, 2]
        registry.revoke(store, "gw-late")
        answer = asyncio.run(oscore_post(secure.uri, registration.device_context, batch(late.chain(1))))
        assert answer.code == codes.FORBIDDEN  # authenticated, and told plainly


def test_an_oscore_device_is_served_again_after_the_lender_restarts(data_dir, store, tmp_path):
    gateway = Device("gw-restart")
    side = enroll(store, data_dir, gateway, oscore=True, device_context=tmp_path / "side").device_context
    for round_number in range(3):
        with LenderThread(data_dir, insecure=False) as secure:
            answer = asyncio.run(oscore_post(secure.uri, side, batch(gateway.chain(5))))
            assert answer.code == codes.CHANGED, round_number
            assert ack_of(answer.payload)[1] == list(range(5 * round_number + 1, 5 * round_number + 6))
    assert store.counts().envelopes == 15


def test_bind_addresses_are_parsed_or_refused_clearly():
    assert parse_bind("127.0.0.1:5684") == ("127.0.0.1", 5684)
    assert parse_bind("[::1]:5683") == ("::1", 5683)
    assert parse_bind("0.0.0.0") == ("0.0.0.0", 5683)
    with pytest.raises(ServeError, match="HOST:PORT"):
        parse_bind("127.0.0.1:http")


def test_a_port_in_use_is_a_clear_error_even_though_aiocoap_reuses_ports(data_dir, store, lender, tmp_path):
    from lender.server import LenderServer

    async def start(directory, port):
        await LenderServer(directory, bind=("127.0.0.1", port), insecure=True).start()

    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{lender.port}"):
        asyncio.run(start(tmp_path / "other", lender.port))
    with pytest.raises(ServeError, match="another lender is serving"):
        asyncio.run(start(data_dir, 0))
    client = RawCoap(lender.port)
    assert client.post(batch([])).code == codes.CHANGED  # the first one is untouched
    client.close()
