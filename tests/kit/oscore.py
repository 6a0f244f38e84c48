"""An OSCORE (RFC 8613) of the tests' own, on `cryptography`, to read what a node sends and to forge what it receives.

Written from the RFC, independently of both the firmware's `oscore` module
and aiocoap's, so a test can: open a node's protected request (to check the
envelope inside), open the lender's protected answer (to read its ack), and
make answers as an attacker or a stranger would: a response protected with
another context, a replayed response rewritten onto a new request. Only the
suite pledgewatch uses: AES-CCM-16-64-128 with HKDF-SHA256, no ID Context.

A *context* here is a `durable.oscore.ContextParameters` seen from the node
(sender = the node, recipient = the lender).
"""
from __future__ import annotations

from dataclasses import dataclass

import aiocoap
from aiocoap.numbers.codes import Code
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from telemetry import cbor
from telemetry.enrollment import ContextKeys

OSCORE, ECHO = 9, 252
AEAD = 10


def _derive(keys: ContextKeys, identifier: bytes, kind: str, length: int) -> bytes:
    info = cbor.encode([identifier, None, AEAD, kind, length])
    return HKDF(hashes.SHA256(), length, keys.master_salt, info).derive(keys.master_secret)


@dataclass(frozen=True)
class Keys:
    """The derived keys of a node's context (RFC 8613 §3.2.1)."""

    node_id: bytes
    lender_id: bytes
    node_key: bytes
    lender_key: bytes
    common_iv: bytes

    @classmethod
    def of(cls, keys: ContextKeys) -> Keys:
        return cls(keys.sender_id, keys.recipient_id, _derive(keys, keys.sender_id, "Key", 16),
                   _derive(keys, keys.recipient_id, "Key", 16), _derive(keys, b"", "IV", 13))

    def nonce(self, identifier: bytes, piv: bytes) -> bytes:
        raw = bytes([len(identifier)]) + identifier.rjust(7, b"\0") + piv.rjust(5, b"\0")
        return bytes(a ^ b for a, b in zip(raw, self.common_iv))


def aad(kid: bytes, piv: bytes) -> bytes:
    return cbor.encode(["Encrypt0", b"", cbor.encode([1, [AEAD], kid, piv, b""])])


def parse_option(value: bytes) -> tuple[bytes | None, bytes | None]:
    """(Partial IV, kid) of an OSCORE option value (no kid context in pledgewatch)."""
    if not value:
        return None, None
    length = value[0] & 7
    piv = value[1:1 + length] or None
    kid = value[1 + length:] if value[0] & 8 else None
    return piv, kid


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def encode(kind: int, code: int, mid: int, token: bytes, options: list[tuple[int, bytes]], payload: bytes) -> bytes:
    """A CoAP message (RFC 7252 §3) as bytes: what a forger or a test writes on the air by hand."""
    out = bytearray([0x40 | kind << 4 | len(token), int(code)]) + mid.to_bytes(2, "big") + token
    previous = 0
    for number, value in sorted(options):
        delta, delta_ext = _nibble(number - previous)
        length, length_ext = _nibble(len(value))
        out += bytes([delta << 4 | length]) + delta_ext + length_ext + value
        previous = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


ACK = 2


def _inner(plaintext: bytes) -> aiocoap.Message:
    return aiocoap.Message.decode(bytes([0x40, plaintext[0], 0, 0]) + plaintext[1:])


def _plaintext(code: Code, payload: bytes, options: dict[int, bytes] | None = None) -> bytes:
    return bytes([int(code)]) + encode(0, code, 0, b"", list((options or {}).items()), payload)[4:]


@dataclass(frozen=True)
class Request:
    """A node's protected request, opened: its outer message, Partial IV and inner message."""

    outer: aiocoap.Message
    piv: bytes
    inner: aiocoap.Message

    @property
    def sequence(self) -> int:
        return int.from_bytes(self.piv, "big")


def open_request(keys: ContextKeys, datagram: bytes) -> Request:
    """Decrypt a node's request (raises cryptography's InvalidTag if it is not this node's)."""
    derived = Keys.of(keys)
    outer = aiocoap.Message.decode(datagram)
    piv, kid = parse_option(outer.opt.get_option(OSCORE)[0].value)
    assert kid == derived.node_id and piv is not None, (kid, piv)
    plain = AESCCM(derived.node_key, 8).decrypt(derived.nonce(derived.node_id, piv), outer.payload,
                                                aad(derived.node_id, piv))
    return Request(outer, piv, _inner(plain))


def open_response(keys: ContextKeys, request: bytes, datagram: bytes) -> aiocoap.Message:
    """Decrypt the lender's answer to a node's request (both datagrams as sent)."""
    derived = Keys.of(keys)
    opened = open_request(keys, request)
    outer = aiocoap.Message.decode(datagram)
    piv, _ = parse_option(outer.opt.get_option(OSCORE)[0].value)
    nonce = derived.nonce(derived.node_id, opened.piv) if piv is None else derived.nonce(derived.lender_id, piv)
    return _inner(AESCCM(derived.lender_key, 8).decrypt(nonce, outer.payload, aad(derived.node_id, opened.piv)))


def protect_response(keys: ContextKeys, request: bytes, code: Code, payload: bytes, *,
                     options: dict[int, bytes] | None = None, lender_sequence: int | None = None) -> bytes:
    """A protected piggybacked answer to `request` under `keys` (the lender's side of them), as a datagram.

    With another context than the node's this is what a stranger (or another lender) can make: it must not verify.
    """
    derived = Keys.of(keys)
    outer = aiocoap.Message.decode(request)
    piv, _ = parse_option(outer.opt.get_option(OSCORE)[0].value)
    assert piv is not None
    if lender_sequence is None:
        nonce, option = derived.nonce(derived.node_id, piv), b""
    else:
        lender_piv = lender_sequence.to_bytes(max(1, (lender_sequence.bit_length() + 7) // 8), "big")
        nonce, option = derived.nonce(derived.lender_id, lender_piv), bytes([len(lender_piv)]) + lender_piv
    ciphertext = AESCCM(derived.lender_key, 8).encrypt(nonce, _plaintext(code, payload, options), aad(derived.node_id, piv))
    return encode(ACK, Code.CHANGED, outer.mid, outer.token, [(OSCORE, option)], ciphertext)


def answer_to(request: bytes, answer: bytes) -> bytes:
    """`answer` (a datagram) rewritten onto `request`'s message id and token: a replay an attacker would send."""
    outer = aiocoap.Message.decode(request)
    token_length = answer[0] & 0x0F
    return (bytes([answer[0] & 0xF0 | len(outer.token), answer[1]]) + outer.mid.to_bytes(2, "big") + outer.token
            + answer[4 + token_length:])


def plain_answer(request: bytes, code: Code, payload: bytes = b"") -> bytes:
    """An unprotected piggybacked answer to `request` (the right message id and token: an on-path forger's)."""
    outer = aiocoap.Message.decode(request)
    return encode(ACK, code, outer.mid, outer.token, [], payload)
