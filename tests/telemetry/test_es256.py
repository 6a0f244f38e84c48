"""ES256 (COSE -7) beside EdDSA (-8): a TPM gateway's P-256 envelopes verify, and no key vouches for the other algorithm."""
import pytest
from hypothesis import given, settings, strategies as st

from telemetry import cbor
from telemetry.ack import Reason
from telemetry.cbor import Tag
from telemetry.cose import open_sign1, parse_sign1, sign1
from telemetry.envelope import GENESIS, Counters, seal, verify
from telemetry.exc import IdentityError, SignatureError
from telemetry.identity import (
    P256_ORDER,
    DeviceKey,
    Identity,
    P256Identity,
    algorithm_name,
    algorithm_of,
    kid_of,
)
from telemetry.numbers import ALG_EDDSA, ALG_ES256
from telemetry.senml import Record

TPM_KEY = P256Identity(bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"))
SEED_KEY = Identity(bytes(range(32)))


def tpm_envelope(**fields):
    defaults = dict(device="gw-tpm-1", boot=1, seq=1, prev=GENESIS, records=[Record("temp", value=4.5, time=1.0)],
                    counters=Counters(0, 0))
    return seal(TPM_KEY, **{**defaults, **fields})


def test_a_public_keys_encoding_names_its_algorithm_and_its_kid_is_the_same_hash_for_both():
    assert len(TPM_KEY.public_key) == 65 and TPM_KEY.public_key[0] == 4
    assert algorithm_of(TPM_KEY.public_key) == ALG_ES256 and algorithm_of(SEED_KEY.public_key) == ALG_EDDSA
    assert TPM_KEY.kid == kid_of(TPM_KEY.public_key) and DeviceKey("gw", TPM_KEY.public_key).kid == TPM_KEY.kid
    assert (algorithm_name(ALG_ES256), algorithm_name(ALG_EDDSA)) == ("ES256", "EdDSA")


def test_a_key_that_is_neither_or_not_on_the_curve_or_of_another_algorithm_is_refused():
    for bad in (b"\x04" * 64, b"\x03" + bytes(64), bytes(33), b"\x04" + bytes(64)):
        with pytest.raises(IdentityError):
            DeviceKey("gw", bad)
    with pytest.raises(IdentityError, match="cannot verify"):
        DeviceKey("gw", TPM_KEY.public_key, ALG_EDDSA)


def test_an_es256_envelope_names_alg_minus_7_and_verifies_with_its_p256_key():
    envelope = tpm_envelope()
    assert cbor.decode(envelope.protected) == {1: -7, 4: TPM_KEY.kid} and len(envelope.signature) == 64
    verdict = verify(envelope.raw, {TPM_KEY.kid: TPM_KEY.device_key("gw-tpm-1")})
    assert verdict.ok, verdict.detail
    assert verdict.envelope.algorithm == ALG_ES256 and verdict.envelope.payload == envelope.payload


def test_an_eddsa_envelope_is_byte_identical_whichever_algorithms_the_contract_knows():
    envelope = seal(SEED_KEY, device="gw-1", boot=1, seq=1, prev=GENESIS)
    assert envelope.protected == bytes.fromhex("a201270448") + SEED_KEY.kid and envelope.algorithm == ALG_EDDSA


def test_an_envelope_whose_header_names_the_other_algorithm_than_its_key_is_a_bad_signature():
    envelope = tpm_envelope()
    parts = cbor.decode(envelope.raw).value
    relabelled = cbor.encode(Tag(18, [cbor.encode({1: -8, 4: TPM_KEY.kid}), {}, parts[2], parts[3]]))
    verdict = verify(relabelled, {TPM_KEY.kid: TPM_KEY.device_key("gw-tpm-1")})
    assert verdict.reason is Reason.BAD_SIGNATURE and "ES256 key" in verdict.detail


def test_an_es256_signature_with_r_or_s_out_of_range_never_verifies():
    key = TPM_KEY.device_key("gw")
    message = b"reading"
    signature = TPM_KEY.sign(message)
    assert key.verifies(message, signature)
    r, s = signature[:32], signature[32:]
    twin = r + (P256_ORDER - int.from_bytes(s, "big")).to_bytes(32, "big")  # valid ECDSA, but high S
    for forged in (bytes(32) + s, r + bytes(32), P256_ORDER.to_bytes(32, "big") + s, r + P256_ORDER.to_bytes(32, "big"),
                   signature[:63], twin):
        assert not key.verifies(message, forged)


def test_every_es256_signature_a_signer_makes_is_low_s():
    for index in range(40):
        assert int.from_bytes(TPM_KEY.sign(b"reading %d" % index)[32:], "big") <= P256_ORDER // 2


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 168), st.integers(1, 255))
def test_any_flipped_byte_of_an_es256_envelope_is_refused_never_raised(position, flip):
    raw = bytearray(tpm_envelope().raw)
    raw[position % len(raw)] ^= flip
    verdict = verify(bytes(raw), {TPM_KEY.kid: TPM_KEY.device_key("gw-tpm-1")})
    assert not verdict.ok


def test_a_cose_sign1_by_a_p256_key_opens_with_that_key_only():
    message = sign1(TPM_KEY, b"statement", b"aad")
    assert parse_sign1(message).algorithm == ALG_ES256
    assert open_sign1(message, TPM_KEY.public_key, b"aad") == b"statement"
    with pytest.raises(SignatureError):
        open_sign1(message, P256Identity(bytes([1] * 32)).public_key, b"aad")
    with pytest.raises(SignatureError):
        open_sign1(message, TPM_KEY.public_key, b"other aad")
