"""Lender tokens: freshness the lender issues in every ack, and every version 2 envelope carries back.

    token = lender time (uint32, Unix seconds, big-endian) || HMAC-SHA256(key, "pledgewatch-token/1" || device || time)[:8]

A device cannot make one (it has no key) and cannot use another device's (the
device id is inside the MAC). The newest token a device holds goes into each
envelope it signs, so the lender knows the envelope was made after that time,
sees state rolled back to an older copy (a token older than one already
signed), and the device learns an authenticated time: the lender's, with the
round trip as its error.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

TOKEN_BYTES = 12
_CONTEXT = b"pledgewatch-token/1"


def check_token_shape(token: object) -> bytes:
    """`token` if it is 12 bytes; ValueError otherwise (the shape only: the MAC is the lender's to check)."""
    if not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
        raise ValueError(f"a lender token is {TOKEN_BYTES} bytes")
    return token


def _mac(key: bytes, device: str, time_bytes: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + device.encode("utf-8") + b"\x00" + time_bytes, hashlib.sha256).digest()[:8]


def issue_token(key: bytes, device: str, lender_time: float) -> bytes:
    """A token for `device` stamped with the lender's time (whole seconds)."""
    time_bytes = struct.pack(">I", int(lender_time) & 0xFFFFFFFF)
    return time_bytes + _mac(key, device, time_bytes)


def token_time(token: bytes) -> int:
    """The lender time inside a token (Unix seconds), whether or not the token is genuine."""
    return struct.unpack(">I", check_token_shape(token)[:4])[0]


def token_genuine(key: bytes, device: str, token: bytes) -> bool:
    """Whether the lender holding `key` issued `token` to `device`."""
    return hmac.compare_digest(check_token_shape(token)[4:], _mac(key, device, token[:4]))
