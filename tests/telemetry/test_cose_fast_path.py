"""`cose.parse_sign1`'s fast path (the fixed framing of the common COSE_Sign1) against the generic decoder's path:
the same Sign1 for every input either accepts, the same exception type and message for every input they refuse."""
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from telemetry import cose
from telemetry.cbor import DEFAULT_LIMITS, Limits
from telemetry.cose import parse_sign1, parse_sign1_generic
from telemetry.envelope import GENESIS, seal
from telemetry.identity import Identity
from telemetry.senml import Record

VECTORS = [path.read_bytes() for path in sorted((Path(__file__).parent.parent / "vectors").glob("*.cbor"))]
ENVELOPE = seal(Identity(bytes(range(32))), device="gw-fast", boot=1, seq=3, prev=GENESIS,
                records=[Record("temp", value=21.5, unit="Cel", time=1767225600)]).raw
LIMITS = [DEFAULT_LIMITS, Limits(max_bytes=84), Limits(max_bytes=83), Limits(max_bytes=200), Limits(max_depth=1),
          Limits(max_depth=2), Limits(max_items=5), Limits(max_items=6), Limits(max_depth=0), Limits(max_bytes=1 << 20)]


def outcome(parse, data, limits):
    try:
        message = parse(data, limits)
    except Exception as exc:  # noqa: BLE001 - the type and message are what is compared
        return "refused", type(exc), str(exc)
    fields = (message.kid, message.protected, message.payload, message.signature, message.algorithm)
    return "parsed", fields, tuple(type(field) for field in fields)


def assert_same(data, limits):
    assert outcome(parse_sign1, data, limits) == outcome(parse_sign1_generic, data, limits)


def head(length: int, width: int) -> bytes:
    """A byte string's head of `length` in `width` extra bytes (0: in the initial byte), shortest or not."""
    return bytes((0x40 + length,)) if width == 0 else bytes((0x57 + width.bit_length(),)) + length.to_bytes(width, "big")


@st.composite
def framed(draw):
    """Bytes near the fast path's framing: each part right or wrong in the ways that matter, heads shortest or not."""
    kid = draw(st.binary(min_size=8, max_size=8))
    protected = draw(st.sampled_from([
        b"\xa2\x01\x27\x04\x48" + kid, b"\xa2\x01\x26\x04\x48" + kid, b"\xa2\x04\x48" + kid + b"\x01\x27",
        b"\xa2\x01\x25\x04\x48" + kid, b"\xa1\x01\x27", b"\xa2\x01\x27\x04\x47" + kid[:7], b""]))
    payload = draw(st.binary(max_size=300))
    shortest = 0 if len(payload) < 24 else 1 if len(payload) < 0x100 else 2
    payload_width = draw(st.sampled_from([shortest, shortest, shortest, max(shortest, 1), 2, 4]))
    signature = draw(st.sampled_from([b"\x58\x40"] * 4 + [b"\x58\x3f", b"\x58\x41", b"\x59\x00\x40", b"\x40", b"\x78\x40"]))
    signature_size = draw(st.sampled_from([64, 64, 64, 63, 65]) | st.integers(min_value=0, max_value=66))
    signature += draw(st.binary(min_size=signature_size, max_size=signature_size))
    data = (draw(st.sampled_from([b"\xd2\x84", b"\xd2\x84", b"\xd2\x85", b"\xd3\x84", b"\xd8\x12\x84", b"\xd2\x9f"]))
            + head(len(protected), draw(st.sampled_from([0, 0, 0, 1]))) + protected
            + draw(st.sampled_from([b"\xa0", b"\xa0", b"\xa1\x01\x02", b"\x80", b"\xf6"]))
            + head(len(payload), payload_width) + payload + signature
            + draw(st.sampled_from([b"", b"", b"", b"\x00", b"\xff"])))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        data = data[:draw(st.integers(min_value=0, max_value=len(data)))]
    return data


@st.composite
def mutated(draw):
    """A test vector (or a fresh envelope) with a few bytes overwritten, inserted, deleted, or cut off."""
    data = bytearray(draw(st.sampled_from(VECTORS + [ENVELOPE])))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["set", "set", "insert", "delete", "cut"]))
        byte = draw(st.integers(min_value=0, max_value=255) | st.sampled_from([0x18, 0x40, 0x4d, 0x58, 0x59, 0xa0, 0xa2]))
        if action == "set" and data:
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif action == "delete" and data:
            del data[at]
        elif action == "cut":
            del data[at:]
    return bytes(data)


inputs = framed() | framed() | mutated() | st.binary(max_size=120) | st.sampled_from(VECTORS + [ENVELOPE])
containers = st.sampled_from([bytes, bytes, bytes, bytes, bytearray, memoryview])


@settings(max_examples=1500)
@given(inputs, st.sampled_from(LIMITS), containers)
def test_the_fast_path_and_the_generic_path_agree(data, limits, container):
    assert_same(container(data), limits)


def test_the_common_envelope_takes_the_fast_path(monkeypatch):
    expected = parse_sign1_generic(ENVELOPE)

    def refuse(*_):
        raise AssertionError("the generic path was taken")
    monkeypatch.setattr(cose, "parse_sign1_generic", refuse)
    assert parse_sign1(ENVELOPE) == expected
    assert parse_sign1(ENVELOPE, Limits(max_depth=2, max_items=6)) == expected
    with pytest.raises(AssertionError, match="generic path"):  # a header in the other order is accepted, not by it
        parse_sign1(ENVELOPE[:3] + b"\xa2\x04" + ENVELOPE[7:16] + b"\x01" + ENVELOPE[5:6] + ENVELOPE[16:])


@pytest.mark.parametrize("vector", VECTORS + [ENVELOPE], ids=lambda raw: raw[:4].hex())
def test_every_vector_and_each_truncation_agree(vector):
    for stop in range(len(vector) + 1):
        assert_same(vector[:stop], DEFAULT_LIMITS)


def near_misses():
    """The fast path's framing with one part changed at a time: heads longer than needed, the wrong map, signature
    heads and sizes that add up to the same length, a payload length head that reads as the signature's head."""
    kid, sig = bytes(range(8)), bytes(range(64))
    protected = b"\xa2\x01\x27\x04\x48" + kid

    def framed(payload_head, payload=b"", unprotected=b"\xa0", signature=b"\x58\x40" + sig, start=b"\xd2\x84\x4d",
               header=protected):
        return start + header + unprotected + payload_head + payload + signature

    for size in (0, 1, 23, 24, 255, 256, 300):
        payload = bytes(size)
        for width in (0, 1, 2, 4):
            if width == 0 and size >= 24 or width == 1 and size >= 256:
                continue
            yield framed(head(size, width), payload)
            yield framed(head(size, width), payload, unprotected=b"\xa1\x01\x02")
    for signature in (b"\x58\x41" + sig, b"\x40" + sig + b"\x00", b"\x78\x40" + sig, b"\x58\x40" + sig[:63],
                      b"\x58\x40" + sig + b"\x00", b"\x59\x00\x40" + sig, b"\x58\x3f" + sig[:63] + b"\x00"):
        yield framed(b"\x41", b"\x00", signature=signature)
    yield framed(b"\x59\x00\x58", signature=b"\x40" + sig)       # a length of 88 in 2 bytes, then "58 40" + 64 bytes
    yield framed(b"\x58\x17", signature=b"\x58\x40" + sig)
    for unprotected in (b"", b"\x80", b"\xf6", b"\xbf\xff", b"\xa1\x01\x02"):
        yield framed(b"\x40", unprotected=unprotected)
    for header in (b"\xa2\x04\x48" + kid + b"\x01\x27", b"\xa2\x01\x25\x04\x48" + kid, b"\xa2\x01\x38\x07\x04\x48" + kid):
        yield framed(b"\x40", start=b"\xd2\x84" + head(len(header), 0), header=header)
    for start in (b"\xd3\x84\x4d", b"\xd8\x12\x84\x4d", b"\xd2\x85\x4d", b"\xd2\x84\x58\x0d", b"\xc0\xd2\x84\x4d"):
        yield framed(b"\x40", start=start)


@pytest.mark.parametrize("limits", LIMITS, ids=repr)
def test_near_misses_agree(limits):
    cases = list(near_misses())
    for data in cases + [data + b"\x00" for data in cases] + [data[:-1] for data in cases]:
        for container in (bytes, bytearray):
            assert_same(container(data), limits)
