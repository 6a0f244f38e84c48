"""The signed envelope: what it says, who can verify it, and what a forgery looks like."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from telemetry import cbor
from telemetry.cbor import Tag
from telemetry.cose import sig_structure
from telemetry.envelope import GENESIS, Gap, Reason, decode, seal, verify
from telemetry.identity import Identity
from telemetry.senml import Record

GATEWAY = Identity(bytes([7]) * 32)
OTHER = Identity(bytes([9]) * 32)
KEYS = {GATEWAY.kid: GATEWAY.device_key("gw-1"), OTHER.kid: OTHER.device_key("gw-2")}
T0 = 1767225600


def sample(seq=1, prev=GENESIS, identity=GATEWAY, device="gw-1", **extra):
    return seal(identity, device=device, boot=1, seq=seq, prev=prev, records=[Record("temp", value=20.5, unit="Cel", time=T0)], **extra)


def test_a_sealed_envelope_verifies_and_decodes_to_what_was_signed():
    envelope = sample(seq=5)
    verdict = verify(envelope.raw, KEYS)
    assert verdict.ok and verdict.reason is Reason.OK
    assert verdict.envelope == envelope
    assert (verdict.envelope.device, verdict.envelope.seq, verdict.envelope.records[0].value) == ("gw-1", 5, 20.5)


def test_an_envelope_signed_by_an_unknown_key_is_reported_as_such():
    stranger = Identity(bytes([1]) * 32)
    verdict = verify(sample(identity=stranger).raw, KEYS)
    assert verdict.reason is Reason.UNKNOWN_KEY and stranger.kid.hex() in verdict.detail


def test_a_forged_envelope_with_a_valid_structure_fails_its_signature():
    genuine = sample()
    # re-sign the same payload with another key but keep the genuine kid: a forger without the key
    forged_signature = OTHER.sign(sig_structure(genuine.protected, genuine.payload))
    forged = cbor.encode(Tag(18, [genuine.protected, {}, genuine.payload, forged_signature]))
    assert verify(forged, KEYS).reason is Reason.BAD_SIGNATURE


def test_a_device_cannot_sign_readings_for_another_device():
    verdict = verify(sample(identity=OTHER, device="gw-1").raw, KEYS)
    assert verdict.reason is Reason.BAD_SIGNATURE and "belongs to device 'gw-2'" in verdict.detail


def test_verification_uses_the_received_bytes_not_a_re_encoding():
    # a payload from another encoder (map keys in length-first order, as cbor2 canonical emits) still verifies
    body = bytearray(cbor.encode({1: "gw-1", 2: 1, 3: 9, 4: GENESIS, 5: [{0: "x", 2: 1}]}))
    protected = cbor.encode({1: -8, 4: GATEWAY.kid})
    payload = bytes(body)
    envelope = cbor.encode(Tag(18, [protected, {}, payload, GATEWAY.sign(sig_structure(protected, payload))]))
    verdict = verify(envelope, KEYS)
    assert verdict.ok and verdict.envelope.payload == payload


def test_a_truncated_envelope_is_malformed_with_a_clear_reason():
    raw = sample().raw
    for cut in (1, 10, len(raw) // 2, len(raw) - 1):
        verdict = verify(raw[:cut], KEYS)
        assert verdict.reason is Reason.MALFORMED and verdict.detail


@pytest.mark.parametrize("mangle, message", [
    (lambda p: [p[0], {1: 2}, p[2], p[3]], "unprotected"),
    (lambda p: [p[0], {}, p[2], p[3][:10]], "64 bytes"),
    (lambda p: [cbor.encode({1: -35, 4: b"12345678"}), {}, p[2], p[3]], "EdDSA"),  # ES384: not ours
    (lambda p: [cbor.encode({1: -8}), {}, p[2], p[3]], "key id"),
    (lambda p: [p[0], {}, cbor.encode([1, 2]), p[3]], "payload must be a map"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw", 2: 1, 3: -1, 4: GENESIS, 5: []}), p[3]], "unsigned"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw", 2: 1, 3: 1, 4: b"short", 5: []}), p[3]], "prev"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw", 2: 1, 3: 1, 4: GENESIS}), p[3]], "no SenML pack"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw", 2: 1, 3: 1, 4: GENESIS, 5: [], 99: 0}), p[3]], "unknown keys"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw", 2: 1, 3: 1, 4: GENESIS, 5: [{0: "bad name!", 2: 1}]}), p[3]], "name"),
    (lambda p: [p[0], {}, cbor.encode({1: "gw\n\x1b[32mINFO", 2: 1, 3: 1, 4: GENESIS, 5: []}), p[3]], "not an id"),
    (lambda p: [p[0], {}, cbor.encode({1: "-gw", 2: 1, 3: 1, 4: GENESIS, 5: []}), p[3]], "not an id"),
    (lambda p: [p[0], {}, cbor.encode({1: "g" * 65, 2: 1, 3: 1, 4: GENESIS, 5: []}), p[3]], "not an id"),
])
def test_structural_defects_are_named(mangle, message):
    parts = cbor.decode(sample().raw).value
    verdict = verify(cbor.encode(Tag(18, mangle(parts))), KEYS)
    assert verdict.reason is Reason.MALFORMED
    assert message in verdict.detail


def test_gap_records_are_signed_envelopes_and_count_as_alarms():
    gap = seal(GATEWAY, device="gw-1", boot=2, seq=300, prev=GENESIS, gap=Gap("overflow", first=10, last=99, count=90))
    decoded = verify(gap.raw, KEYS).envelope
    assert decoded.gap == Gap("overflow", 10, 99, 90)
    assert decoded.alarm and not sample().alarm


def test_alarm_records_make_the_envelope_an_alarm():
    envelope = seal(GATEWAY, device="gw-1", boot=1, seq=3, prev=GENESIS, records=[Record("alarm.door", string="raised", time=T0)])
    assert envelope.alarm


def test_seal_refuses_arguments_that_would_make_a_bad_envelope():
    for device in ("", "gw 1", "gw\n1", "." + "g" * 10, "g" * 65):
        with pytest.raises(ValueError):
            seal(GATEWAY, device=device, boot=1, seq=1, prev=GENESIS)
    with pytest.raises(ValueError):
        seal(GATEWAY, device="gw", boot=1, seq=-1, prev=GENESIS)
    with pytest.raises(ValueError):
        seal(GATEWAY, device="gw", boot=1, seq=1, prev=b"x")


@settings(max_examples=1000)
@given(
    seq=st.integers(0, 2**64 - 1), boot=st.integers(0, 2**64 - 1), prev=st.binary(min_size=16, max_size=16),
    device=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"),
    value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**63),
)
def test_any_sealed_envelope_verifies_and_round_trips(seq, boot, prev, device, value):
    keys = {GATEWAY.kid: GATEWAY.device_key(device)}
    envelope = seal(GATEWAY, device=device, boot=boot, seq=seq, prev=prev, records=[Record("v", value=value, time=T0)])
    verdict = verify(envelope.raw, keys)
    assert verdict.ok and verdict.envelope == envelope
    assert decode(envelope.raw).digest == envelope.digest


@given(st.dictionaries(st.integers(0, 23), st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=8),
                                                     st.binary(max_size=8), st.lists(st.integers(-2**63, 2**64 - 1), max_size=3)),
                       max_size=12))
def test_the_payload_fast_path_encodes_exactly_as_the_general_encoder(mapping):
    assert cbor.encode_labelled(sorted(mapping.items())) == cbor.encode(mapping)


@settings(max_examples=300)
@given(device=st.text(min_size=1, max_size=70))
def test_a_device_id_off_the_registry_pattern_is_malformed_at_decode_and_its_text_comes_back_escaped(device):
    parts = cbor.decode(sample().raw).value
    parts[2] = cbor.encode({1: device, 2: 1, 3: 1, 4: GENESIS, 5: []})
    verdict = verify(cbor.encode(Tag(18, parts)), KEYS)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", device):
        assert verdict.reason is not Reason.MALFORMED
    else:
        assert verdict.reason is Reason.MALFORMED and "not an id" in verdict.detail
        assert verdict.detail.isprintable(), verdict.detail  # no newline, no escape sequence reaches a log line
