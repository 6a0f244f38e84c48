"""Conformance with outside vectors: RFC 8032 Ed25519, the COSE WG's eddsa-sig-01, RFC 8949 Appendix A, RFC 8428 §6."""
import math

import pytest

from telemetry import cbor
from telemetry.cbor import Tag
from telemetry.cose import cose_sign1, sig_structure
from telemetry.envelope import decode as decode_envelope
from telemetry.exc import SchemaError
from telemetry.identity import DeviceKey, Identity
from telemetry.senml import records_from_cbor

RFC8032 = [
    (  # TEST 1
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize("seed, public, message, signature", RFC8032)
def test_ed25519_matches_rfc8032_section_7_1(seed, public, message, signature):
    identity = Identity(bytes.fromhex(seed))
    assert identity.public_key.hex() == public
    assert identity.sign(bytes.fromhex(message)).hex() == signature
    assert DeviceKey("d", identity.public_key).verifies(bytes.fromhex(message), bytes.fromhex(signature))


COSE_EDDSA_SIG_01 = bytes.fromhex(
    "D28445A201270300A10442313154546869732069732074686520636F6E74656E742E"
    "58407142FD2FF96D56DB85BEE905A76BA1D0B7321A95C8C4D3607C5781932B7AFB87"
    "11497DFA751BF40B58B3BCC32300B1487F3DB34085EEF013BF08F4A44D6FEF0D"
)


def test_cose_sign1_reproduces_cose_wg_eddsa_sig_01_exactly():
    identity = Identity(bytes.fromhex(RFC8032[0][0]))
    produced = cose_sign1(identity, {1: -8, 3: 0}, {4: b"11"}, b"This is the content.")
    assert produced == COSE_EDDSA_SIG_01
    tag = cbor.decode(produced)
    protected, _, payload, signature = tag.value
    assert DeviceKey("d", identity.public_key).verifies(sig_structure(protected, payload), signature)


def test_cose_example_is_not_a_pledgewatch_envelope():
    # it carries alg 1 and content type 3 but no 8-byte kid: the envelope decoder says so
    with pytest.raises(SchemaError):
        decode_envelope(COSE_EDDSA_SIG_01)


# RFC 8949 Appendix A, the entries whose preferred encoding is also deterministic (§4.2.1)
APPENDIX_A = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"), (1000, "1903e8"),
    (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"), (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"), (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.1, "fb3ff199999999999a"), (1.5, "f93e00"),
    (65504.0, "f97bff"), (100000.0, "fa47c35000"), (3.4028234663852886e38, "fa7f7fffff"), (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"), (0.00006103515625, "f90400"), (-4.0, "f9c400"), (-4.1, "fbc010666666666666"),
    (math.inf, "f97c00"), (-math.inf, "f9fc00"), (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"), ("", "60"), ("a", "6161"), ("IETF", "6449455446"),
    ('"\\', "62225c"), ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
    (Tag(1, 1363896240), "c11a514b67b0"), (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
]


@pytest.mark.parametrize("value, expected", APPENDIX_A, ids=[h for _, h in APPENDIX_A])
def test_cbor_matches_rfc8949_appendix_a(value, expected):
    assert cbor.encode(value).hex() == expected
    decoded = cbor.decode(bytes.fromhex(expected))
    assert decoded == value and type(decoded) is type(value)


def test_cbor_nan_is_the_one_deterministic_nan():
    assert cbor.encode(math.nan).hex() == "f97e00"
    assert math.isnan(cbor.decode(bytes.fromhex("f97e00")))


def test_map_keys_sort_bytewise_not_length_first():
    # RFC 8949 §4.2.1 orders by encoded bytes: 24 (0x1818) before -1 (0x20); RFC 7049 put -1 first
    assert cbor.encode({-1: 0, 24: 0, "a": 0, 1: 0}).hex() == "a40100181800200061610" + "0"


def test_senml_rfc8428_example_decodes_to_the_values_the_rfc_lists():
    raw = bytes.fromhex(
        "82a421781c75726e3a6465763a6f773a31306532303733613031303830303633"
        "3a0067766f6c7461676501615602fb405e066666666666a3006763757272656e74"
        "01614102fb3ff3333333333333"
    )
    voltage, current = records_from_cbor(cbor.decode(raw))
    assert (voltage.name, voltage.unit, voltage.value) == ("urn:dev:ow:10e2073a01080063:voltage", "V", 120.1)
    assert (current.name, current.unit, current.value) == ("urn:dev:ow:10e2073a01080063:current", "A", 1.2)
