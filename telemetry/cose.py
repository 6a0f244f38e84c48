"""COSE, one copy: Sig_structures, COSE_Sign1 and COSE_Sign (RFC 9052), deterministically encoded.

A COSE_Sign1 signer is EdDSA (-8) or ES256 (-7, a TPM's P-256 key): its
protected header is {1: alg, 4: kid} and the key the kid names must be of that
algorithm (`telemetry.identity`). COSE_Sign (enrollment requests, installation
reports) is EdDSA only for now.

Every signed pledgewatch message is one of these two. Verification always uses
the protected header and payload bytes as received, never a re-encoding.
Parsing untrusted bytes raises `SchemaError` (a `WireFormatError`) with what
is wrong; the caller decides what that means for its message.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from telemetry import cbor
from telemetry.cbor import DEFAULT_LIMITS, Limits, Tag
from telemetry.exc import SchemaError, SignatureError
from telemetry.identity import DeviceKey, Signer, algorithm_name, kid_of
from telemetry.numbers import (
    ALG_EDDSA,
    ALG_ES256,
    HEADER_ALG,
    HEADER_KID,
    KID_BYTES,
    SIGNATURE_BYTES,
    TAG_COSE_SIGN,
    TAG_COSE_SIGN1,
)

_SIG1_CONTEXT = cbor.encode("Signature1")
_HEADER_LIMITS = Limits(max_bytes=64, max_depth=2, max_items=8)
MAX_SIGNERS = 4


SIGN1_ALGORITHMS = (ALG_EDDSA, ALG_ES256)


@functools.lru_cache(maxsize=64)
def signer_header(kid: bytes, algorithm: int = ALG_EDDSA) -> bytes:
    """A signer's protected header, encoded: {1: alg (-8 EdDSA or -7 ES256), 4: kid}."""
    return cbor.encode({HEADER_ALG: algorithm, HEADER_KID: kid})


def eddsa_header(kid: bytes) -> bytes:
    """An EdDSA signer's protected header, encoded: {1: -8, 4: kid}."""
    return signer_header(kid, ALG_EDDSA)


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The COSE_Sign1 Sig_structure (RFC 9052 §4.4): ["Signature1", protected, external_aad, payload]."""
    return b"".join((
        b"\x84", _SIG1_CONTEXT,
        cbor.bstr_head(len(protected)), protected,
        cbor.bstr_head(len(external_aad)), external_aad,
        cbor.bstr_head(len(payload)), payload,
    ))


def signer_structure(signer_protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The COSE_Sign Sig_structure one signer signs: ["Signature", h'' (body), signer_protected, aad, payload]."""
    return cbor.encode(["Signature", b"", signer_protected, external_aad, payload])


def cose_sign1(identity: Signer, protected: dict, unprotected: dict, payload: bytes) -> bytes:
    """A tagged COSE_Sign1 with any headers, signed by `identity` (the cose-wg conformance vector uses it)."""
    protected_bytes = cbor.encode(protected) if protected else b""
    signature = identity.sign(sig_structure(protected_bytes, payload))
    return cbor.encode(Tag(TAG_COSE_SIGN1, [protected_bytes, unprotected, payload, signature]))


def sign1(identity: Signer, payload: bytes, external_aad: bytes = b"") -> bytes:
    """COSE_Sign1 by `identity` with its signer header ({1: alg, 4: kid}) and an empty unprotected map."""
    protected = signer_header(identity.kid, identity.algorithm)
    signature = identity.sign(sig_structure(protected, payload, external_aad))
    return cbor.encode(Tag(TAG_COSE_SIGN1, [protected, {}, payload, signature]))


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed COSE_Sign1 with an EdDSA or ES256 signer: the key id and the exact bytes, signature not yet checked."""

    kid: bytes
    protected: bytes
    payload: bytes
    signature: bytes
    algorithm: int = ALG_EDDSA

    def signed_bytes(self, external_aad: bytes = b"") -> bytes:
        return sig_structure(self.protected, self.payload, external_aad)


def _signer_of_header(header: object, algorithms: tuple[int, ...] = SIGN1_ALGORITHMS) -> tuple[bytes, int]:
    """(kid, alg) of a signer's protected header map {1: alg, 4: kid}."""
    if not isinstance(header, dict) or header.get(HEADER_ALG) not in algorithms:
        names = " or ".join(f"{algorithm_name(a)} (1: {a})" for a in algorithms)
        raise SchemaError(f"protected header must name algorithm {names}")
    kid = header.get(HEADER_KID)
    if not isinstance(kid, bytes) or len(kid) != KID_BYTES:
        raise SchemaError(f"protected header must carry an {KID_BYTES}-byte key id (4)")
    if set(header) != {HEADER_ALG, HEADER_KID}:
        raise SchemaError(f"protected header has unexpected labels {sorted(set(header) - {HEADER_ALG, HEADER_KID}, key=repr)}")
    return kid, header[HEADER_ALG]


def _sign1_parts(data: bytes, limits: Limits) -> list:
    """The four items of a tagged COSE_Sign1, not yet checked."""
    outer = cbor.decode(data, limits)
    if not isinstance(outer, Tag) or outer.number != TAG_COSE_SIGN1:
        raise SchemaError("not a COSE_Sign1 message (expected CBOR tag 18)")
    parts = outer.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise SchemaError("COSE_Sign1 must be an array of 4 items")
    return parts


# The fast path's framing: tag 18, an array of 4, the 13-byte protected header {1: alg, 4: kid} in its deterministic
# encoding (so its first 8 bytes name the algorithm), then the unprotected map {} at byte 16, the payload's head at 17.
_SIGN1_PREFIXES = {
    b"\xd2\x84" + bstr_head + header[:-KID_BYTES]: algorithm
    for algorithm in SIGN1_ALGORITHMS
    for header in (cbor.encode({HEADER_ALG: algorithm, HEADER_KID: bytes(KID_BYTES)}),)
    for bstr_head in (cbor.bstr_head(len(header)),)
}
_SIGN1_KID_AT = 3 + 5            # tag, array, bstr head, then a2 01 alg 04 48
_SIGN1_PAYLOAD_AT = _SIGN1_KID_AT + KID_BYTES + 1   # after the kid and the empty unprotected map (a0)
_SIGNATURE_HEAD = cbor.bstr_head(SIGNATURE_BYTES)
_SIGN1_SHORTEST = _SIGN1_PAYLOAD_AT + 1 + len(_SIGNATURE_HEAD) + SIGNATURE_BYTES   # an empty payload
_PAYLOAD_HEAD_WIDTHS = {0x58: (1, 24), 0x59: (2, 0x100), 0x5A: (4, 0x10000)}  # head: (length bytes, shortest floor)


def _fast_limits(limits: object) -> bool:
    """Whether `limits` lets the generic decoder read the fast path's framing (6 items, 2 levels deep)."""
    return (type(limits) is Limits and type(limits.max_bytes) is int and type(limits.max_depth) is int
            and type(limits.max_items) is int and limits.max_depth >= 2 and limits.max_items >= 6)


def parse_sign1(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Sign1:
    """Parse untrusted bytes as a COSE_Sign1 {1: -8 or -7, 4: kid} with an empty unprotected map; SchemaError otherwise.

    The common message (exact bytes, deterministic signer header, empty unprotected map, shortest heads, nothing
    trailing) is read by its fixed framing; anything else, accepted or refused, goes through `parse_sign1_generic`,
    whose result the fast path reproduces exactly (tests/telemetry/test_cose_fast_path.py compares the two)."""
    if (type(data) is bytes and (limits is DEFAULT_LIMITS or _fast_limits(limits))
            and _SIGN1_SHORTEST <= len(data) <= limits.max_bytes):
        algorithm = _SIGN1_PREFIXES.get(data[:_SIGN1_KID_AT])
        if algorithm is not None and data[_SIGN1_PAYLOAD_AT - 1] == 0xA0:
            head = data[_SIGN1_PAYLOAD_AT]
            start = _SIGN1_PAYLOAD_AT + 1
            if 0x40 <= head < 0x58:
                length = head - 0x40
            elif head in _PAYLOAD_HEAD_WIDTHS:
                width, floor = _PAYLOAD_HEAD_WIDTHS[head]
                length = int.from_bytes(data[start:start + width], "big")
                start += width
                if length < floor:
                    length = -1
            else:
                length = -1
            stop = start + length
            if length >= 0 and stop + 2 + SIGNATURE_BYTES == len(data) and data[stop:stop + 2] == _SIGNATURE_HEAD:
                return Sign1(data[_SIGN1_KID_AT:_SIGN1_KID_AT + KID_BYTES], data[3:_SIGN1_KID_AT + KID_BYTES],
                             data[start:stop], data[stop + 2:], algorithm)
    return parse_sign1_generic(data, limits)


def parse_sign1_generic(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Sign1:
    """`parse_sign1` by the generic decoder: for every input the fast path does not take, and its test's reference."""
    protected, unprotected, payload, signature = _sign1_parts(data, limits)
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise SchemaError("COSE_Sign1 protected header, payload and signature must be byte strings")
    if unprotected != {}:
        raise SchemaError("COSE_Sign1 unprotected header must be an empty map")
    if len(signature) != SIGNATURE_BYTES:
        raise SchemaError(f"an Ed25519 or ES256 signature is {SIGNATURE_BYTES} bytes, got {len(signature)}")
    kid, algorithm = _signer_of_header(cbor.decode(protected, limits))
    return Sign1(kid, protected, payload, signature, algorithm)


def open_sign1(data: bytes, public_key: bytes, external_aad: bytes = b"", limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The payload of a COSE_Sign1 that `public_key` signed over `external_aad`; SchemaError / SignatureError otherwise."""
    message = parse_sign1(bytes(data), limits)
    if message.protected != signer_header(message.kid, message.algorithm):
        raise SchemaError("the protected header is not deterministically encoded")
    if message.kid != kid_of(public_key):
        raise SignatureError(f"signed by key {message.kid.hex()}, not by the expected key {kid_of(public_key).hex()}")
    key = DeviceKey("signer", public_key)
    if key.algorithm != message.algorithm:
        raise SignatureError(f"the header names {algorithm_name(message.algorithm)}, the key is {key.algorithm_name}")
    if not key.verifies(message.signed_bytes(external_aad), message.signature):
        raise SignatureError("the signature does not verify")
    return message.payload


def sign(payload: bytes, signatures: list[tuple]) -> bytes:
    """COSE_Sign: tag 98 around [h'', {}, payload, [[signer_header(kid, alg), {}, signature], ...]].

    Each entry is (kid, signature), an EdDSA signer, or (kid, signature, alg) (a version 2 enrollment request's
    ES256 device signer: `telemetry.enrollment`)."""
    return cbor.encode(Tag(TAG_COSE_SIGN, [b"", {}, payload, [
        [signer_header(entry[0], entry[2] if len(entry) > 2 else ALG_EDDSA), {}, entry[1]] for entry in signatures]]))


def parse_sign(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(payload, [(kid, signature), ...]) of a COSE_Sign with 1..4 EdDSA signers; SchemaError otherwise."""
    payload, signers = parse_sign_signers(data, limits, (ALG_EDDSA,))
    return payload, [(kid, signature) for kid, signature, _ in signers]


def parse_sign_signers(data: bytes, limits: Limits = DEFAULT_LIMITS, algorithms: tuple[int, ...] = SIGN1_ALGORITHMS
                       ) -> tuple[bytes, list[tuple[bytes, bytes, int]]]:
    """(payload, [(kid, signature, alg), ...]) of a COSE_Sign with 1..4 signers of `algorithms`; SchemaError otherwise."""
    item = cbor.decode(bytes(data), limits)
    if not isinstance(item, Tag) or item.number != TAG_COSE_SIGN:
        raise SchemaError("not a COSE_Sign (CBOR tag 98)")
    value = item.value
    if (not isinstance(value, list) or len(value) != 4 or value[0] != b"" or value[1] != {}
            or not isinstance(value[2], bytes) or not isinstance(value[3], list)
            or not 1 <= len(value[3]) <= MAX_SIGNERS):
        raise SchemaError(f"COSE_Sign must be [h'', {{}}, payload, [1..{MAX_SIGNERS} signatures]]")
    signatures = []
    for entry in value[3]:
        if not isinstance(entry, list) or len(entry) != 3 or entry[1] != {} or not isinstance(entry[0], bytes) \
                or not isinstance(entry[2], bytes) or len(entry[2]) != SIGNATURE_BYTES:
            raise SchemaError("each COSE_Signature must be [protected, {}, 64-byte signature]")
        kid, algorithm = _signer_of_header(cbor.decode(entry[0], _HEADER_LIMITS), algorithms)
        if entry[0] != signer_header(kid, algorithm):
            raise SchemaError("a signer's protected header is not deterministically encoded")
        signatures.append((kid, entry[2], algorithm))
    return value[2], signatures


@dataclass(frozen=True, slots=True)
class Sign1Message:
    """Any COSE_Sign1, parsed but not checked: the protected header (bytes and map), the unprotected map,
    the payload (None when detached, RFC 9052 §2) and the signature. Receipts (RFC 9942) are read with it."""

    protected: bytes
    header: dict
    unprotected: dict
    payload: bytes | None
    signature: bytes

    def signed_by(self, public_key: bytes, payload: bytes | None = None) -> bool:
        """Whether `public_key` signed this message over its payload, or over `payload` when detached."""
        content = self.payload if payload is None else payload
        if content is None:
            return False
        key = DeviceKey("signer", public_key)
        if self.header.get(HEADER_ALG, key.algorithm) != key.algorithm:
            return False  # an EdDSA key never vouches for a message whose header names another algorithm
        return key.verifies(sig_structure(self.protected, content), self.signature)


def decode_sign1(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Sign1Message:
    """Parse untrusted bytes as a tagged COSE_Sign1 with any headers and an attached or detached payload."""
    protected, unprotected, payload, signature = _sign1_parts(bytes(data), limits)
    if not isinstance(protected, bytes) or not isinstance(unprotected, dict) or not isinstance(signature, bytes) \
            or not (payload is None or isinstance(payload, bytes)):
        raise SchemaError("COSE_Sign1 must be [protected bstr, unprotected map, payload bstr or nil, signature bstr]")
    if len(signature) != SIGNATURE_BYTES:
        raise SchemaError(f"an Ed25519 or ES256 signature is {SIGNATURE_BYTES} bytes, got {len(signature)}")
    header = cbor.decode(protected, limits) if protected else {}
    if not isinstance(header, dict):
        raise SchemaError("the protected header must be a map")
    return Sign1Message(protected, header, unprotected, payload, signature)
