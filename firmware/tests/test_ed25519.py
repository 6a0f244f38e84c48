"""The node's Ed25519 signs exactly as RFC 8032 says, verifies honestly, and makes keys only from a hardware RNG."""

import ed25519
import ed25519_comb
from check import equal, raises, tohex, unhex
from ed25519_table import COMB

# RFC 8032 §7.1: TEST 1, TEST 2 and TEST 3 (seed, public key, message, signature).
RFC8032_TESTS = (
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
)


def test_rfc8032_test_1_2_3_keys_and_signatures_are_reproduced():
    for seed, public_key, message, signature in RFC8032_TESTS:
        key = ed25519.SigningKey(unhex(seed))
        equal(tohex(key.public_key), public_key, "public key of seed " + seed)
        equal(tohex(key.sign(unhex(message))), signature, "signature of message " + repr(message))


def test_rfc8032_signatures_verify_under_their_public_keys():
    for _, public_key, message, signature in RFC8032_TESTS:
        assert ed25519.verify(unhex(public_key), unhex(message), unhex(signature))


def _flip(data, index, bit=1):
    data = bytearray(data)
    data[index] ^= bit
    return bytes(data)


def test_a_tampered_message_signature_or_key_never_verifies():
    key = ed25519.SigningKey(bytes(range(32)))
    message = b"temp=4.5 tamper=false batt=3.6"
    signature = key.sign(message)
    assert ed25519.verify(key.public_key, message, signature)
    for index in (0, len(message) - 1):
        assert not ed25519.verify(key.public_key, _flip(message, index), signature)
    for index in (0, 31, 32, 63):
        assert not ed25519.verify(key.public_key, message, _flip(signature, index))
    assert not ed25519.verify(_flip(key.public_key, 5), message, signature)
    assert not ed25519.verify(key.public_key, message + b"!", signature)
    assert not ed25519.verify(key.public_key, message, signature[:63])
    other = ed25519.SigningKey(bytes(32))
    assert not ed25519.verify(other.public_key, message, signature)


def test_a_signature_whose_s_is_not_reduced_is_rejected():
    # S + L signs the same equation but is a second encoding: RFC 8032 §5.1.7 requires S < L.
    key = ed25519.SigningKey(bytes(range(32)))
    signature = key.sign(b"x")
    s = int.from_bytes(signature[32:], "little") + ed25519._L
    assert not ed25519.verify(key.public_key, b"x", signature[:32] + s.to_bytes(32, "little"))


def test_curve_constants_are_those_of_edwards25519():
    p = ed25519._P
    equal(p, 2**255 - 19)
    equal(ed25519._L, 2**252 + 27742317777372353535851937790883648493)
    equal(ed25519._D * 121666 % p, (-121665) % p)
    equal(ed25519._D2, 2 * ed25519._D % p)
    equal(ed25519._SQRT_M1 * ed25519._SQRT_M1 % p, p - 1)
    x, y, z, t = ed25519._BASE
    equal((y * y - x * x) % p, (1 + ed25519._D * x * x * y * y) % p, "base point on the curve")
    equal(t, x * y % p)
    equal(tohex(ed25519._encode(ed25519._BASE)), "58" + "66" * 31)
    equal(ed25519._encode(ed25519._multiple(ed25519._L, ed25519._BASE)), ed25519._encode(ed25519._IDENTITY))


def test_the_shipped_comb_table_is_the_base_point_combinations_it_claims():
    equal(len(COMB), 32 * 96)
    index = -1
    for index, entry in enumerate(ed25519_comb.comb_entries()):
        assert COMB[96 * index : 96 * index + 96] == entry, "ed25519_table.COMB entry %d differs from the derived one" % index
    equal(index, 31)


def test_comb_multiplication_agrees_with_double_and_add():
    for scalar in (0, 1, 2, 2**64 - 1, 2**64, 2**192 + 2**32 + 7, ed25519._L - 1, 2**256 - 1):
        equal(
            ed25519._encode(ed25519._base_multiple(scalar)),
            ed25519._encode(ed25519._multiple(scalar, ed25519._BASE)),
            "scalar %d" % scalar,
        )


def test_decoding_refuses_encodings_that_name_no_point():
    p = ed25519._P
    assert ed25519._decode((p).to_bytes(32, "little")) is None  # y not reduced
    assert ed25519._decode((2).to_bytes(32, "little")) is None  # y = 2: x*x would need to be a non-square
    assert ed25519._decode((1 | 1 << 255).to_bytes(32, "little")) is None  # x = 0 with the sign bit set
    assert ed25519._decode(b"\x00" * 31) is None
    equal(ed25519._decode(ed25519._encode(ed25519._BASE))[:2], ed25519._BASE[:2])


def test_generated_keys_come_from_os_urandom_and_sign_verifiably():
    seed, key = ed25519.generate()
    equal(len(seed), 32)
    equal(key.public_key, ed25519.SigningKey(seed).public_key)
    assert ed25519.verify(key.public_key, b"first report", key.sign(b"first report"))
    other_seed, _ = ed25519.generate()
    assert other_seed != seed


class _BoardWithoutRNG:
    pass


class _BrokenRNG:
    @staticmethod
    def urandom(count):
        return bytes(count - 1)


def test_a_board_without_a_hardware_rng_gets_no_key():
    real_os = ed25519.os
    try:
        ed25519.os = _BoardWithoutRNG()
        error = raises(RuntimeError, ed25519.generate)
        assert "urandom" in str(error), str(error)
        ed25519.os = _BrokenRNG()
        raises(RuntimeError, ed25519.generate)
    finally:
        ed25519.os = real_os


def test_a_seed_that_is_not_32_bytes_is_refused():
    for seed in (b"", bytes(31), bytes(33), "x" * 32, None):
        error = raises(ValueError, ed25519.SigningKey, seed)
        assert "32 bytes" in str(error), str(error)
