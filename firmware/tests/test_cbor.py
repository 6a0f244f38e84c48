"""The node's CBOR is RFC 8949 deterministic encoding, and its decoder turns any hostile bytes into a CBORError."""

import random

import cbor
from check import equal, raises, tohex, unhex
from cbor import CBORError, Tag

# RFC 8949 Appendix A: value and its encoding (the deterministic ones; 2**64 and
# beyond need bignum tags, which a node never sends).
APPENDIX_A = (
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.1, "fb3ff199999999999a"), (1.5, "f93e00"),
    (65504.0, "f97bff"), (100000.0, "fa47c35000"), (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"), (5.960464477539063e-8, "f90001"), (0.00006103515625, "f90400"),
    (-4.0, "f9c400"), (-4.1, "fbc010666666666666"),
    (float("inf"), "f97c00"), (float("nan"), "f97e00"), (float("-inf"), "f9fc00"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (Tag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (Tag(1, 1363896240), "c11a514b67b0"), (Tag(1, 1363896240.5), "c1fb41d452d9ec200000"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"), (Tag(24, b"dIETF"), "d818456449455446"),
    (Tag(32, "http://www.example.com"), "d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"),
    ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
)


def test_rfc8949_appendix_a_examples_encode_byte_for_byte():
    for value, expected in APPENDIX_A:
        equal(tohex(cbor.encode(value)), expected, "encoding of %r" % (value,))


def test_rfc8949_appendix_a_examples_decode_back_to_their_values():
    for value, encoded in APPENDIX_A:
        decoded = cbor.decode(unhex(encoded))
        if value != value:  # NaN
            assert decoded != decoded
        else:
            equal(decoded, value, "decoding of " + encoded)
            equal(cbor.encode(decoded), unhex(encoded))


def test_map_keys_sort_by_their_encoded_bytes_not_by_value_or_length():
    # 10 < 23 < 100 (1864) < 256 (190100) < -1 (20) < -24 (37) < "a" (6161) < "aa"
    value = {"aa": 0, -24: 0, 256: 0, "a": 0, -1: 0, 100: 0, 23: 0, 10: 0}
    equal(tohex(cbor.encode(value)), "a80a0017001864001901000020003700616100626161" + "00")


def test_floats_take_the_shortest_width_that_holds_them_exactly():
    for value, expected in (
        (4.5, "f94480"), (21.25, "f94d50"), (-40.0, "f9d100"), (3.6, "fb400ccccccccccccd"),
        (0.5, "f93800"), (65536.0, "fa47800000"), (1.0 / 3, "fb3fd5555555555555"),
        (2.0**-24 * 3, "f90003"), (2.0**-25, "fa33000000"), (2.0**-149, "fa00000001"), (2.0**-150, "fb3690000000000000"),
        (65520.0, "fa477ff000"), (2.0**128, "fb47f0000000000000"),
    ):
        equal(tohex(cbor.encode(value)), expected, "encoding of %r" % value)


def test_values_cbor_cannot_carry_are_refused_with_a_clear_error():
    for value, words in ((2**64, "64 bits"), (-(2**64) - 1, "64 bits"), (set(), "set"), (object(), "object")):
        error = raises(CBORError, cbor.encode, value)
        assert words in str(error), str(error)
    raises(CBORError, Tag, -1, 0)


def _bad(encoded, words):
    error = raises(CBORError, cbor.decode, unhex(encoded))
    assert words in str(error), "%s: %s" % (encoded, error)


def test_the_decoder_refuses_what_deterministic_cbor_forbids():
    _bad("1817", "shortest")  # 23 in a one-byte head
    _bad("190017", "shortest")
    _bad("5f4101ff", "indefinite")
    _bad("9fff", "indefinite")
    _bad("a201020103", "repeats key")
    _bad("0101", "trailing")
    _bad("1c", "reserved")
    _bad("ff", "break")
    _bad("f820", "simple value")


def test_the_decoder_refuses_truncated_and_lying_lengths_without_allocating_them():
    _bad("", "truncated")
    _bad("1a0000", "truncated")
    _bad("5a00100000", "truncated")  # a 1 MiB byte string in a 5-byte message
    _bad("9a00100000", "only 0 bytes left")
    _bad("bb000000010000000001", "bytes left")
    _bad("62c3", "truncated")
    _bad("62c328", "UTF-8")


def test_the_decoder_caps_size_depth_and_item_count():
    raises(CBORError, cbor.decode, bytes(2000))
    equal(cbor.decode(cbor.encode([[[[1]]]]), max_depth=4), [[[[1]]]])
    error = raises(CBORError, cbor.decode, b"\x81" * 9 + b"\x00")
    assert "deep" in str(error), str(error)
    error = raises(CBORError, cbor.decode, cbor.encode(list(range(300))), max_bytes=4096)
    assert "too many items" in str(error), str(error)
    raises(CBORError, cbor.decode, "not bytes")


def test_map_keys_that_are_not_int_text_or_bytes_are_refused():
    _bad("a18000", "map key")
    _bad("a1f600", "map key")


def _bits(rng, count):
    # MicroPython's getrandbits gives at most 32 bits at a time
    value = 0
    while count > 0:
        step = min(count, 32)
        value = (value << step) | rng.getrandbits(step)
        count -= step
    return value


def _random_value(rng, depth=0):
    kind = rng.getrandbits(4) % (10 if depth < 3 else 7)
    if kind == 0:
        return _bits(rng, rng.getrandbits(6) + 1)
    if kind == 1:
        return -1 - _bits(rng, rng.getrandbits(6) + 1)
    if kind == 2:
        return bytes(rng.getrandbits(8) for _ in range(rng.getrandbits(5)))
    if kind == 3:
        return "".join(chr(0x20 + rng.getrandbits(7) % 95) for _ in range(rng.getrandbits(4))) + ("\u00e9" if rng.getrandbits(1) else "")
    if kind == 4:
        return (rng.getrandbits(24) - (1 << 23)) / (1 << rng.getrandbits(5))
    if kind == 5:
        return rng.getrandbits(1) == 1
    if kind == 6:
        return None
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.getrandbits(3))]
    if kind == 8:
        return {rng.getrandbits(6) - 24: _random_value(rng, depth + 1) for _ in range(rng.getrandbits(3))}
    return Tag(rng.getrandbits(5), _random_value(rng, depth + 1))


def test_random_values_survive_encode_then_decode_and_encode_again_byte_for_byte():
    rng = random
    rng.seed(8949)
    for _ in range(400):
        value = _random_value(rng)
        encoded = cbor.encode(value)
        decoded = cbor.decode(encoded, max_bytes=65536, max_items=4096, max_depth=16)
        equal(decoded, value, "round trip")
        equal(cbor.encode(decoded), encoded, "re-encoding of %s" % tohex(encoded))


def test_random_and_mutated_bytes_only_ever_raise_cbor_error():
    random.seed(7252)
    seeds = [cbor.encode(_random_value(random)) for _ in range(40)]
    decoded = rejected = 0
    for index in range(3000):
        if index % 2:
            data = bytearray(random.getrandbits(8) for _ in range(random.getrandbits(5)))
        else:
            data = bytearray(seeds[index % len(seeds)])
            if data:
                data[random.getrandbits(16) % len(data)] = random.getrandbits(8)
            if random.getrandbits(1) and data:
                data = data[: random.getrandbits(16) % len(data)]
        try:
            cbor.decode(bytes(data))
            decoded += 1
        except CBORError:
            rejected += 1
    assert decoded > 100 and rejected > 100, (decoded, rejected)
