"""The node's signed envelope: COSE_Sign1 (RFC 9052 §4.2) over a payload map, byte for byte as telemetry.envelope builds it.

    18([ bstr .cbor {1: -8, 4: kid}, {}, bstr .cbor {1: device, 2: boot,
         3: seq, 4: prev, 5: SenML pack, ?6: gap, ?7: clock}, bstr .size 64 ])

kid is the first 8 bytes of SHA-256 of the Ed25519 public key, prev the first
16 bytes of SHA-256 of the device's previous envelope (16 zero bytes for its
first), and the signature covers ["Signature1", protected, h'', payload].
The caller owns the chain state (seq, prev); this module only builds bytes.
"""

import hashlib

import cbor
import senml

ALG_EDDSA = -8
HDR_ALG, HDR_KID = 1, 4
DEVICE, BOOT, SEQ, PREV, PACK, GAP, CLOCK = 1, 2, 3, 4, 5, 6, 7
GAP_REASON, GAP_FIRST, GAP_LAST, GAP_COUNT = 1, 2, 3, 4
DIGEST_BYTES = 16
GENESIS = bytes(DIGEST_BYTES)
MAX_DEVICE_ID = 64

_MAX_UINT = 0xFFFFFFFFFFFFFFFF
_SIG1_CONTEXT = cbor.encode("Signature1")


def kid_of(public_key):
    """The key id of an Ed25519 public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8]


def digest(raw):
    """The chain link of an envelope: the first 16 bytes of SHA-256 of its exact bytes."""
    return hashlib.sha256(raw).digest()[:DIGEST_BYTES]


def sig_structure(protected, payload, external_aad=b""):
    """The RFC 9052 §4.4 Sig_structure ["Signature1", protected, external_aad, payload] as bytes."""
    return b"".join(
        (
            b"\x84",
            _SIG1_CONTEXT,
            cbor.bstr_head(len(protected)),
            protected,
            cbor.bstr_head(len(external_aad)),
            external_aad,
            cbor.bstr_head(len(payload)),
            payload,
        )
    )


def cose_sign1(key, protected, unprotected, payload):
    """A tagged COSE_Sign1 message (bytes) over payload (bytes), signed by key (an ed25519.SigningKey)."""
    protected_bytes = cbor.encode(protected) if protected else b""
    signature = key.sign(sig_structure(protected_bytes, payload))
    return cbor.encode(cbor.Tag(18, [protected_bytes, unprotected, payload, signature]))


def _is_uint(value):
    return type(value) is int and 0 <= value <= _MAX_UINT


def gap_map(gap):
    """The payload's gap map {1: reason, ?2: first, ?3: last, ?4: count} from a dict with those names."""
    reason = gap.get("reason")
    if not isinstance(reason, str) or not reason:
        raise ValueError("a gap record needs a text reason, got %r" % (gap,))
    item = {GAP_REASON: reason}
    for name, label in (("first", GAP_FIRST), ("last", GAP_LAST), ("count", GAP_COUNT)):
        value = gap.get(name)
        if value is not None:
            if not _is_uint(value):
                raise ValueError("gap %s must be an unsigned 64-bit integer, got %r" % (name, value))
            item[label] = value
    return item


def seal(key, device, boot, seq, prev, records=(), gap=None, clock=None):
    """Build and sign one envelope; returns its bytes. records are senml record dicts, gap a dict (see gap_map)."""
    if not isinstance(device, str) or not 0 < len(device) <= MAX_DEVICE_ID:
        raise ValueError("device id must be 1..%d characters, got %r" % (MAX_DEVICE_ID, device))
    if not (_is_uint(boot) and _is_uint(seq)):
        raise ValueError("boot and seq must be unsigned 64-bit integers, got %r and %r" % (boot, seq))
    if not isinstance(prev, (bytes, bytearray)) or len(prev) != DIGEST_BYTES:
        raise ValueError("prev must be %d bytes, got %r" % (DIGEST_BYTES, prev))
    body = {DEVICE: device, BOOT: boot, SEQ: seq, PREV: bytes(prev), PACK: senml.pack(records)}
    if gap is not None:
        body[GAP] = gap_map(gap)
    if clock is not None:
        body[CLOCK] = clock
    protected = cbor.encode({HDR_ALG: ALG_EDDSA, HDR_KID: kid_of(key.public_key)})
    payload = cbor.encode(body)
    signature = key.sign(sig_structure(protected, payload))
    # == cbor.encode(Tag(18, [protected, {}, payload, signature])), framed directly
    return b"".join(
        (b"\xd2\x84", cbor.bstr_head(len(protected)), protected, b"\xa0", cbor.bstr_head(len(payload)), payload, b"\x58\x40", signature)
    )
