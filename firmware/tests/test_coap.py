"""The node's CoAP codec (RFC 7252 §3) and the lender's ack: what goes out is exact, what comes in is checked (tests only)."""

import os

import coap
import uplink
from ack import parse_ack
from check import equal, raises, unhex
from errors import AckError, CoapError


def test_a_confirmable_post_is_encoded_exactly_as_rfc_7252_lays_it_out():
    message = coap.request(coap.POST, 0x1234, b"\xaa\xbb\xcc\xdd", "n", b"\xd2\x84", coap.CBOR)
    # ver 1, CON, TKL 4 | 0.02 | MID | token | Uri-Path (delta 11, len 1) "n" | Content-Format (delta 1, len 1) 60 | FF payload
    equal(coap.encode(message), unhex("44 02 1234 aabbccdd b1 6e 11 3c ff d284"))


def test_long_options_and_large_deltas_use_the_extended_nibbles():
    message = coap.Message(coap.CON, coap.POST, 1, b"", [(11, b"x" * 20), (2048, b"y" * 300)])
    decoded = coap.decode(coap.encode(message))
    equal(decoded.options, [(11, b"x" * 20), (2048, b"y" * 300)])


def test_a_piggybacked_answer_decodes_with_its_token_code_and_payload():
    datagram = unhex("64 44 1234 aabbccdd c1 3c ff a3 01 81 01 02 80 03 80")
    message = coap.decode(datagram)
    equal((message.type, message.code, message.message_id, message.token), (coap.ACK, coap.CHANGED, 0x1234, b"\xaa\xbb\xcc\xdd"))
    equal(message.option(coap.CONTENT_FORMAT), b"\x3c")
    equal(parse_ack(message.payload).settled(), [1])


def test_every_format_error_of_rfc_7252_section_3_is_refused():
    for bad in (
        b"\x44\x02",                          # shorter than the header
        unhex("84 02 0001 aabbccdd"),         # version 2
        unhex("49 02 0001") + bytes(9),       # token length 9 is reserved
        unhex("44 02 0001 aabb"),             # token runs past the end
        unhex("40 02 0001 f1 00"),            # option delta nibble 15 without a payload marker
        unhex("40 02 0001 1f"),               # option length nibble 15
        unhex("40 02 0001 d1"),               # extended delta missing
        unhex("40 02 0001 b5 6e"),            # option value runs past the end
        unhex("40 02 0001 ff"),               # payload marker with no payload
        unhex("40 20 0001"),                  # code class 1 is reserved
        unhex("60 00 0001 ff 00"),            # an empty message with a payload
    ):
        raises(CoapError, coap.decode, bad)


def test_random_datagrams_are_either_decoded_or_refused_never_a_crash():
    for _ in range(2000):
        datagram = os.urandom(os.urandom(1)[0] % 48)
        try:
            coap.decode(datagram)
        except CoapError:
            pass


def test_the_ack_map_is_checked_before_the_node_deletes_anything():
    equal(parse_ack(unhex("a3 01 82 01 02 02 81 03 03 81 83 00 07 63 626164")).refused, [(0, 7, "bad")])
    for bad in (
        unhex("83 01 02 03"),           # an array, not a map
        unhex("a1 01 81 20"),           # a negative seq
        unhex("a1 01 81 f5"),           # true is not a seq
        unhex("a1 01 01"),              # stored is not a list
        unhex("a1 03 81 82 00 07"),     # a refusal without its text
        unhex("a1 01 9f ff"),           # indefinite length
        b"\xff",                          # not CBOR
        unhex("a1 01 81 01 00"),        # trailing bytes
        unhex("a1 04 4b") + bytes(11),  # a token of 11 bytes
        unhex("a1 04 4d") + bytes(13),  # a token of 13 bytes
        unhex("a1 04 6c") + b"a" * 12,  # a token as text
    ):
        raises(AckError, parse_ack, bad)


def test_the_ack_brings_the_lender_token_when_it_has_one():
    token = unhex("6955b9c8682c98cf055b8413")
    equal(parse_ack(unhex("a4 01 81 05 02 80 03 80 04 4c") + token).token, token)
    equal(parse_ack(unhex("a1 01 81 05")).token, None)


def test_retransmission_timing_follows_rfc_7252_section_4_8():
    timing = uplink.Timing()
    equal((timing.ack_timeout_ms, timing.max_retransmit), (2000, 4))
    equal((timing.first_timeout_ms(0), timing.first_timeout_ms(255)), (2000, 3000))
    equal(timing.response_timeout_ms, 93000, "MAX_TRANSMIT_WAIT")
    raises(ValueError, uplink.Timing, 0)
