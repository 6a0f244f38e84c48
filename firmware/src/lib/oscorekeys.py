"""The node's OSCORE context, read from node.oscore: its header, and the keys HKDF derives from it (RFC 8613 §3.2).

Loaded once per cycle before the first request and forgotten after (the
message layer, `oscore`, keeps only the derived keys), so its code costs the
send phase no heap. The header, which provisioning writes and the firmware
never rewrites, is 512 bytes: magic "PWO1", the length (u16) of the CBOR map
{1: sender id, 2: recipient id, 3: master secret, 4: master salt, 5:
"AES-CCM-16-64-128", 6: "sha256"} (telemetry.enrollment.ContextKeys), the map,
the first 4 bytes of SHA-256 over all of that, zeros.

HKDF (RFC 5869) is HMAC-SHA256 (RFC 2104) over hashlib: extract once, then one
expand block each for the sender key, the recipient key (16 bytes) and the
common IV (13), with the `info` array [id, null, 10, "Key"/"IV", L].
"""

import hashlib
import struct

from errors import StorageError

ALGORITHM = "AES-CCM-16-64-128"
KDF = "sha256"
HEADER_BYTES = 512
KEY_BYTES = 16
NONCE_BYTES = 13
MAX_ID_BYTES = NONCE_BYTES - 6
_MAGIC = b"PWO1"


def hmac_sha256(key, message):
    """HMAC-SHA256 (RFC 2104); a key shorter than the 64-byte block is zero-padded, an empty one is all zeros."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    inner = bytearray(64)
    outer = bytearray(64)
    for index in range(64):
        byte = key[index] if index < len(key) else 0
        inner[index] = byte ^ 0x36
        outer[index] = byte ^ 0x5C
    digest = hashlib.sha256(inner)
    digest.update(message)
    result = hashlib.sha256(outer)
    result.update(digest.digest())
    return result.digest()


def _info(identifier, kind, length):
    """The HKDF info of RFC 8613 §3.2.1: [id, id_context null, alg_aead 10, type, L] in CBOR."""
    return b"\x85" + _bstr(identifier) + b"\xf6\x0a" + (b"\x63Key" if kind == "Key" else b"\x62IV") + bytes([length])


def derive(master_secret, master_salt, sender_id, recipient_id):
    """(sender key, recipient key, common IV): HKDF-SHA256 extract once, expand three times (one block each)."""
    key = hmac_sha256(master_salt, master_secret)  # HKDF-Extract (RFC 5869 §2.2)
    sender = hmac_sha256(key, _info(sender_id, "Key", KEY_BYTES) + b"\x01")[:KEY_BYTES]
    recipient = hmac_sha256(key, _info(recipient_id, "Key", KEY_BYTES) + b"\x01")[:KEY_BYTES]
    common_iv = hmac_sha256(key, _info(b"", "IV", NONCE_BYTES) + b"\x01")[:NONCE_BYTES]
    return sender, recipient, common_iv


def _bstr(data):
    return bytes([0x40 + len(data)]) + data  # ids: at most 7 bytes


def _parse_header(header):
    import cbordecode

    if len(header) < 10 or header[:4] != _MAGIC:
        raise StorageError("node.oscore does not start with an OSCORE context header (PWO1)")
    length = struct.unpack(">H", header[4:6])[0]
    if 6 + length + 4 > len(header) or hashlib.sha256(header[: 6 + length]).digest()[:4] != header[6 + length : 10 + length]:
        raise StorageError("node.oscore's context header is damaged (its check does not match)")
    try:
        keys = cbordecode.decode(bytes(header[6 : 6 + length]), max_bytes=512, max_depth=2, max_items=16)
    except ValueError as error:
        raise StorageError("node.oscore's context is not CBOR: %s" % error)
    if not isinstance(keys, dict) or keys.get(5) != ALGORITHM or keys.get(6) != KDF:
        raise StorageError("node.oscore is not an %s / HKDF-%s context" % (ALGORITHM, KDF.upper()))
    for number in (1, 2, 3, 4):
        if not isinstance(keys.get(number), bytes):
            raise StorageError("node.oscore: context key %d must be a byte string" % number)
    if len(keys[1]) > MAX_ID_BYTES or len(keys[2]) > MAX_ID_BYTES or keys[1] == keys[2] or len(keys[3]) < 16:
        raise StorageError("node.oscore: ids of at most %d bytes that differ, and a master secret of 16 bytes or more"
                           % MAX_ID_BYTES)
    return keys


def load(path):
    """(sender id, recipient id, sender key, recipient key, common IV) of the context in path; None when there is no
    such file; StorageError when it is there but unusable."""
    try:
        file = open(path, "rb")
    except OSError:
        return None
    try:
        with file:
            header = file.read(HEADER_BYTES)
    except OSError as error:
        raise StorageError("cannot read %s: %s" % (path, error))
    keys = _parse_header(header)
    return (keys[1], keys[2]) + derive(keys[3], keys[4], keys[1], keys[2])
