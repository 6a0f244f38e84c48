"""Untrusted bytes end in one exception family, in bounded time and memory — proven over many generated inputs."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from telemetry import cbor
from telemetry.cbor import Limits, Tag
from telemetry.envelope import GENESIS, Reason, decode as decode_envelope, seal, verify
from telemetry.exc import CBORError, DuplicateKeyError, LimitError, OversizeError, WireFormatError
from telemetry.identity import Identity
from telemetry.senml import Record

IDENTITY = Identity(bytes(range(32)))
KEYS = {IDENTITY.kid: IDENTITY.device_key("gw-fuzz")}
ENVELOPE = seal(
    IDENTITY, device="gw-fuzz", boot=2, seq=77, prev=GENESIS,
    records=[Record("temp", value=21.5, unit="Cel", time=1767225600), Record("door", boolean=True, time=1767225600)],
).raw

scalars = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(keys, inner, max_size=5)
    | st.builds(Tag, st.integers(min_value=0, max_value=2**64 - 1), inner),
    max_leaves=25,
)


@settings(max_examples=1500)
@given(values)
def test_every_value_round_trips_and_encodes_deterministically(value):
    encoded = cbor.encode(value)
    decoded = cbor.decode(encoded, Limits(max_bytes=1 << 20, max_items=100000))
    assert decoded == value
    assert cbor.encode(decoded) == encoded


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_wire_format_errors(data):
    try:
        cbor.decode(data)
    except WireFormatError:
        pass


def mutate(data: bytes, draw_ops) -> bytes:
    out = bytearray(data)
    for op, position, byte in draw_ops:
        position %= max(len(out), 1)
        if op == 0 and out:
            out[position] = byte
        elif op == 1:
            out.insert(position, byte)
        elif op == 2 and out:
            del out[position]
        elif op == 3:
            del out[position:]
    return bytes(out)


ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


@settings(max_examples=2000)
@given(ops)
def test_mutated_envelopes_never_verify_and_never_raise(mutation):
    data = mutate(ENVELOPE, mutation)
    verdict = verify(data, KEYS)  # must not raise
    if data != ENVELOPE:
        assert not verdict.ok, f"a mutated envelope verified: {data.hex()}"
    try:
        decode_envelope(data)
    except WireFormatError:
        pass


@settings(max_examples=1000)
@given(values)
def test_any_well_formed_cbor_that_is_not_an_envelope_is_rejected_as_malformed(value):
    verdict = verify(cbor.encode(value), KEYS)
    assert verdict.reason in (Reason.MALFORMED, Reason.OVERSIZE)


def test_size_cap_is_checked_before_decoding():
    with pytest.raises(OversizeError):
        cbor.decode(b"\x40" * 70000)
    assert verify(bytes(65537), KEYS).reason is Reason.OVERSIZE


def test_declared_lengths_larger_than_the_input_are_refused_without_allocating():
    for bomb in ("9bffffffffffffffff", "bbffffffffffffffff", "5bffffffffffffffff", "7a7fffffff", "9a7fffffff"):
        with pytest.raises(CBORError, match="declare|truncated"):
            cbor.decode(bytes.fromhex(bomb))


def test_nesting_and_item_count_are_bounded():
    with pytest.raises(LimitError):
        cbor.decode(b"\x81" * 40 + b"\x00")
    with pytest.raises(LimitError):
        cbor.decode(cbor.encode(list(range(5000))))
    with pytest.raises(LimitError):
        cbor.decode(b"\xd2" * 30 + b"\x00")  # tags nest too


def test_duplicate_map_keys_are_rejected():
    with pytest.raises(DuplicateKeyError, match="repeats key 1"):
        cbor.decode(bytes.fromhex("a201020103"))


@pytest.mark.parametrize("hexdata, why", [
    ("9f01ff", "indefinite"), ("5f4101ff", "indefinite"), ("ff", "break"), ("f7", "simple value 23"),
    ("f820", "simple value 24"), ("1c", "reserved"), ("62c328", "UTF-8"), ("0000", "trailing"), ("", "truncated"),
    ("a1f900000000", "map key of type float"),
])
def test_malformed_cbor_messages_say_what_was_wrong(hexdata, why):
    with pytest.raises(CBORError, match=why):
        cbor.decode(bytes.fromhex(hexdata))


def test_non_bytes_input_is_a_wire_format_error():
    with pytest.raises(WireFormatError):
        cbor.decode("not bytes")


def test_floats_take_the_shortest_exact_width():
    assert cbor.encode(21.5).hex() == "f94d60"
    assert len(cbor.encode(3.6)) == 9 and len(cbor.encode(0.15625)) == 3
    assert math.isclose(cbor.decode(cbor.encode(1e-8)), 1e-8)


def test_a_longer_than_needed_head_is_refused_so_an_envelope_has_one_encoding():
    # re-encode the protected header's length (13) as 0x58 0x0d: same content, other bytes, other digest
    stretched = ENVELOPE[:2] + b"\x58" + bytes([ENVELOPE[2] & 0x1F]) + ENVELOPE[3:]
    assert verify(stretched, KEYS).reason is Reason.MALFORMED
    for hexdata in ("1817", "190017", "1a000000ff", "1b00000000ffffffff", "5800"):
        with pytest.raises(CBORError, match="shortest"):
            cbor.decode(bytes.fromhex(hexdata))
