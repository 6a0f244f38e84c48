"""The firmware's OSCORE against aiocoap's, in both directions, under real MicroPython (the RFC 8613 Appendix C vectors
are the independent reference: firmware/tests/test_oscore.py, and tests.kit.oscore on `cryptography` too).

* a request the firmware protects is opened by aiocoap's server-side context (the lender's), and the request
  aiocoap's client-side context (the node's) protects at the same sequence number is the same bytes;
* the answers aiocoap's server-side context protects — with the request's nonce, and with a Partial IV of its own
  (as it answers an Echo challenge) — are opened by the firmware.

libcoap's coap-client (Debian's libcoap3-bin 4.3.1, installed here) was checked for a third peer: its usage lists no -E
(OSCORE configuration), it is built without OSCORE; no other OSCORE implementation is in the package lists here.
"""
from __future__ import annotations

import json
import textwrap

import aiocoap
import pytest
from aiocoap.message import Direction
from aiocoap.numbers.codes import Code

from durable.oscore import ContextParameters, close_context, open_context, write_context
from provisioning.node import node_context_file

ENVELOPE = bytes.fromhex("d28443a10127a0") + bytes(range(200))  # any bytes: OSCORE does not look inside
SEQUENCE = 300


@pytest.fixture
def contexts(tmp_path):
    """(lender side opened by aiocoap, node side opened by aiocoap, node.oscore path, node parameters)."""
    lender = ContextParameters.generate(b"", b"\x07")
    node = lender.for_peer()
    write_context(tmp_path / "lender", lender)
    write_context(tmp_path / "node", node)
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "node.oscore").write_bytes(node_context_file(node))
    lender_side, node_side = open_context(tmp_path / "lender"), open_context(tmp_path / "node")
    yield lender_side, node_side, tmp_path / "board" / "node.oscore", node
    close_context(lender_side)
    close_context(node_side)


FIRMWARE_REQUEST = """
import binascii, json, sys, coap, oscore, oscorekeys
path, seq, echo, payload = json.loads(sys.stdin.read())
context = oscore.Context(path, oscorekeys.load(path))
context.next_seq = context.limit = seq
inner = coap.request(coap.POST, 0, b"", "n", binascii.unhexlify(payload), coap.CBOR)
if echo:
    inner.options.append((252, binascii.unhexlify(echo)))
plain = coap.encode(inner)
plain[3] = coap.POST
option, ciphertext, request = context.protect(memoryview(plain)[3:])
datagram = coap.encode(coap.Message(coap.CON, coap.POST, 0x1234, b"\\xaa\\xbb\\xcc\\xdd", [(9, option)], ciphertext))
h = lambda b: binascii.hexlify(bytes(b)).decode()
print(json.dumps({"datagram": h(datagram), "request": [h(part) for part in request]}))
"""

FIRMWARE_RESPONSE = """
import binascii, json, sys, coap, oscore, oscorekeys
path, request, answers = json.loads(sys.stdin.read())
request = tuple(binascii.unhexlify(part) for part in request)
context = oscore.Context(path, oscorekeys.load(path))
out = []
for answer in answers:
    message = coap.decode(binascii.unhexlify(answer))
    plain = context.unprotect(message.option(9), message.payload, request)
    inner = coap.decode(bytes([0x40, plain[0], 0, 0]) + plain[1:])
    out.append([inner.code, [[n, binascii.hexlify(v).decode()] for n, v in inner.options],
                binascii.hexlify(inner.payload).decode()])
print(json.dumps(out))
"""


def _firmware(run_micropython, tmp_path, code: str, *args):
    """Run code under MicroPython with args as JSON on stdin (the unix port dies on an argument over 255 bytes)."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code))
    result = run_micropython(str(script), stdin=json.dumps(args))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _incoming(datagram: bytes) -> aiocoap.Message:
    message = aiocoap.Message.decode(datagram)
    message.direction = Direction.INCOMING
    return message


def test_a_request_the_firmware_protects_is_opened_by_aiocoap_and_is_the_request_aiocoap_would_send(
        contexts, run_micropython, tmp_path):
    lender_side, node_side, path, _ = contexts
    made = _firmware(run_micropython, tmp_path, FIRMWARE_REQUEST, str(path), SEQUENCE, "", ENVELOPE.hex())
    datagram = bytes.fromhex(made["datagram"])

    # aiocoap, the lender's side: the inner request is the node's POST /n with the envelope
    inner, request_id = lender_side.unprotect(_incoming(datagram))
    assert inner.code == Code.POST and inner.opt.uri_path == ("n",) and inner.opt.content_format == 60
    assert inner.payload == ENVELOPE and request_id.partial_iv == SEQUENCE.to_bytes(2, "big")

    # aiocoap, the node's side, protecting the same request at the same sequence number: the same ciphertext
    node_side.sender_sequence_number = SEQUENCE
    node_side.sequence_number_persisted = SEQUENCE + 100  # as if aiocoap had reserved past it (Appendix B.1.1)
    plain = aiocoap.Message(code=Code.POST, uri_path=("n",), content_format=60, payload=ENVELOPE)
    plain.direction = Direction.OUTGOING
    outer, _ = node_side.protect(plain)
    assert outer.payload == aiocoap.Message.decode(datagram).payload
    assert outer.opt.oscore == aiocoap.Message.decode(datagram).opt.oscore


def test_an_echo_retry_the_firmware_protects_carries_the_echo_value_inside(contexts, run_micropython, tmp_path):
    lender_side, _, path, _ = contexts
    made = _firmware(run_micropython, tmp_path, FIRMWARE_REQUEST, str(path), SEQUENCE + 1, "0102030405060708",
                     ENVELOPE.hex())
    datagram = bytes.fromhex(made["datagram"])
    assert b"\x01\x02\x03\x04\x05\x06\x07\x08" not in datagram, "the Echo value travels encrypted (class E)"
    inner, _ = lender_side.unprotect(_incoming(datagram))
    assert inner.opt.echo == bytes.fromhex("0102030405060708")


def test_answers_aiocoap_protects_with_and_without_a_partial_iv_are_opened_by_the_firmware(
        contexts, run_micropython, tmp_path):
    lender_side, _, path, _ = contexts
    made = _firmware(run_micropython, tmp_path, FIRMWARE_REQUEST, str(path), SEQUENCE, "", ENVELOPE.hex())
    datagram = bytes.fromhex(made["datagram"])
    answers = []
    _, request_id = lender_side.unprotect(_incoming(datagram))
    for own_nonce in (False, True):
        if own_nonce:
            request_id.can_reuse_nonce = False  # as aiocoap answers when it cannot trust the request's freshness
        response = aiocoap.Message(code=Code.UNAUTHORIZED if own_nonce else Code.CHANGED,
                                   payload=b"" if own_nonce else b"\xa1\x01\x81\x05",
                                   echo=b"\x09" * 8 if own_nonce else None)
        response.direction = Direction.OUTGOING
        outer, _ = lender_side.protect(response, request_id)
        outer.mid, outer.token = 0x1234, b"\xaa\xbb\xcc\xdd"
        outer.mtype = aiocoap.ACK
        answers.append(outer.encode().hex())
    assert aiocoap.Message.decode(bytes.fromhex(answers[0])).opt.oscore == b""
    assert aiocoap.Message.decode(bytes.fromhex(answers[1])).opt.oscore != b"", "a Partial IV of its own"
    opened = _firmware(run_micropython, tmp_path, FIRMWARE_RESPONSE, str(path), made["request"], answers)
    assert opened[0] == [int(Code.CHANGED), [], "a1018105"]
    assert opened[1] == [int(Code.UNAUTHORIZED), [[252, "09" * 8]], ""]
