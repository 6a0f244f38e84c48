"""OSCORE on the node against the independent references: RFC 8613 Appendix C, RFC 3610 and RFC 4231 (tests only)."""

import coap
import oscore
import oscorekeys
from check import equal, raises, tohex, unhex
from errors import OscoreError
from oscore_files import at_sequence, context_file

SECRET, SALT = unhex("0102030405060708090a0b0c0d0e0f10"), unhex("9e7ca92223786340")
KEY = unhex("C0C1C2C3C4C5C6C7C8C9CACBCCCDCECF")
HELLO = unhex("45ff48656c6c6f20576f726c6421")  # 2.05 Content, "Hello World!" (C.7 and C.8 plaintext)


# --- primitives -----------------------------------------------------------------

def test_hmac_sha256_matches_rfc_4231_test_case_1_and_2():
    equal(tohex(oscorekeys.hmac_sha256(b"\x0b" * 20, b"Hi There")),
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    equal(tohex(oscorekeys.hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_aes_ccm_matches_rfc_3610_packet_vectors_1_to_3():
    vectors = (
        ("00000003020100A0A1A2A3A4A5", "08090A0B0C0D0E0F101112131415161718191A1B1C1D1E",
         "588C979A61C663D2F066D0C2C0F989806D5F6B61DAC38417E8D12CFDF926E0"),
        ("00000004030201A0A1A2A3A4A5", "08090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
         "72C91A36E135F8CF291CA894085C87E3CC15C439C9E43A3BA091D56E10400916"),
        ("00000005040302A0A1A2A3A4A5", "08090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F20",
         "51B1E5F44A197D1DA46B0F8E2D282AE871E838BB64DA8596574ADAA76FBD9FB0C5"),
    )
    header = unhex("0001020304050607")
    for nonce, plain, sealed in vectors:
        equal(oscore.ccm_encrypt(KEY, unhex(nonce), unhex(plain), header), unhex(sealed), nonce)
        equal(oscore.ccm_decrypt(KEY, unhex(nonce), unhex(sealed), header), unhex(plain), nonce)


def test_aes_ccm_refuses_any_changed_byte_of_ciphertext_tag_or_aad():
    nonce, header = bytes(13), b"aad"
    sealed = oscore.ccm_encrypt(KEY, nonce, b"a plaintext of more than one block", header)
    for index in range(len(sealed)):
        changed = bytearray(sealed)
        changed[index] ^= 0x01
        raises(OscoreError, oscore.ccm_decrypt, KEY, nonce, bytes(changed), header)
    raises(OscoreError, oscore.ccm_decrypt, KEY, nonce, sealed, b"aae")
    raises(OscoreError, oscore.ccm_decrypt, KEY, nonce, sealed[:7], header)
    equal(oscore.ccm_decrypt(KEY, nonce, oscore.ccm_encrypt(KEY, nonce, b"", b""), b""), b"")


# --- RFC 8613 Appendix C ---------------------------------------------------------

def test_key_derivation_matches_c_1_and_c_2():
    equal([tohex(v) for v in oscorekeys.derive(SECRET, SALT, b"", b"\x01")],
          ["f0910ed7295e6ad4b54fc793154302ff", "ffb14e093c94c9cac9471648b4f98710", "4622d4dd6d944168eefb54987c"])
    equal([tohex(v) for v in oscorekeys.derive(SECRET, SALT, b"\x01", b"")],
          ["ffb14e093c94c9cac9471648b4f98710", "f0910ed7295e6ad4b54fc793154302ff", "4622d4dd6d944168eefb54987c"])
    equal([tohex(v) for v in oscorekeys.derive(SECRET, b"", b"\x00", b"\x01")],
          ["321b26943253c7ffb6003b0b64d74041", "e57b5635815177cd679ab4bcec9d7dda", "be35ae297d2dace910c52e99f9"])
    equal(oscorekeys._info(b"", "Key", 16), unhex("8540f60a634b657910"))
    equal(oscorekeys._info(b"\x01", "Key", 16), unhex("854101f60a634b657910"))
    equal(oscorekeys._info(b"", "IV", 13), unhex("8540f60a6249560d"))


def test_nonces_and_aad_match_c_1_c_2_c_4_and_c_5():
    iv = unhex("4622d4dd6d944168eefb54987c")
    equal(tohex(oscore.nonce(iv, b"", b"\x00")), "4622d4dd6d944168eefb54987c")
    equal(tohex(oscore.nonce(iv, b"\x01", b"\x00")), "4722d4dd6d944169eefb54987c")
    equal(tohex(oscore.nonce(iv, b"", b"\x14")), "4622d4dd6d944168eefb549868")
    iv2 = unhex("be35ae297d2dace910c52e99f9")
    equal(tohex(oscore.nonce(iv2, b"\x00", b"\x00")), "bf35ae297d2dace910c52e99f9")
    equal(tohex(oscore.nonce(iv2, b"\x00", b"\x14")), "bf35ae297d2dace910c52e99ed")
    equal(tohex(oscore.aad(b"", b"\x14")), "8368456e63727970743040488501810a40411440")
    equal(tohex(oscore.aad(b"\x00", b"\x14")), "8368456e63727970743040498501810a4100411440")


def _protected_request(context, message_id, token):
    """C.4 / C.5's request: GET coap://localhost/tv1, Uri-Host outside (class U), Uri-Path inside (class E)."""
    option, ciphertext, request = context.protect(unhex("01b3747631"))
    return coap.encode(coap.Message(coap.CON, coap.POST, message_id, token, [(3, b"localhost"), (9, option)],
                                    ciphertext)), request


def test_a_request_is_protected_byte_for_byte_as_c_4_and_c_5():
    c4, _ = _protected_request(at_sequence(context_file(b"", b"\x01"), 20), 0x5D1F, unhex("00003974"))
    equal(tohex(c4), "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e")
    c5, _ = _protected_request(at_sequence(context_file(b"\x00", b"\x01", salt=b""), 20), 0x71C3, unhex("0000b932"))
    equal(tohex(c5), "440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0")


def test_responses_without_and_with_a_partial_iv_verify_as_c_7_and_c_8():
    context = at_sequence(context_file(b"", b"\x01"), 20)
    _, request = _protected_request(context, 0x5D1F, unhex("00003974"))
    c7 = coap.decode(unhex("64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106"))
    equal((c7.type, c7.code, c7.option(9)), (coap.ACK, coap.CHANGED, b""))
    equal(context.unprotect(c7.option(9), c7.payload, request), HELLO)
    c8 = coap.decode(unhex("64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e"))
    equal(c8.option(9), unhex("0100"))
    equal(context.unprotect(c8.option(9), c8.payload, request), HELLO)
    error = raises(OscoreError, context.unprotect, c8.option(9), c8.payload, request)
    assert "replayed" in str(error), error


def test_a_response_to_another_request_or_from_another_context_does_not_verify():
    context = at_sequence(context_file(b"", b"\x01"), 20)
    _, first = _protected_request(context, 0x5D1F, unhex("00003974"))
    _, second = _protected_request(context, 0x5D20, unhex("00003975"))
    c7 = coap.decode(unhex("64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106"))
    raises(OscoreError, context.unprotect, b"", c7.payload, second)  # C.7 answers seq 20, not 21
    other = at_sequence(context_file(b"", b"\x01", secret=bytes(range(16))), 20)
    _, foreign = _protected_request(other, 0x5D1F, unhex("00003974"))
    raises(OscoreError, other.unprotect, b"", c7.payload, foreign)
    raises(OscoreError, context.unprotect, unhex("0902"), c7.payload, first)  # kid 02 is not the lender's
    raises(OscoreError, context.unprotect, unhex("1914"), c7.payload, first)  # a kid context


def test_the_replay_window_takes_each_lender_partial_iv_once_and_nothing_older_than_32_behind():
    context = at_sequence(context_file(b"\x01", b""), 0)
    for seq, fresh in ((5, True), (5, False), (3, True), (3, False), (40, True), (8, True), (7, False), (9, True),
                       (41, True), (40, False)):
        equal(context._fresh(seq), fresh, "Partial IV %d" % seq)
        if fresh:
            context._mark(seq)


def test_option_values_follow_section_6_1_and_malformed_ones_are_refused():
    equal(oscore.option_value(b"\x05", b"\x25"), unhex("090525"))
    equal(oscore.parse_option(unhex("090525")), (b"\x05", b"\x25"))
    equal(oscore.parse_option(b""), (None, None))
    equal(oscore.parse_option(unhex("0100")), (b"\x00", None))
    equal([tohex(oscore.partial_iv(n)) for n in (0, 20, 255, 256, 65536)], ["00", "14", "ff", "0100", "010000"])
    for bad in ("20", "0e", "06" + "00" * 6, "0201", "0114ff"):
        raises(OscoreError, oscore.parse_option, unhex(bad))


