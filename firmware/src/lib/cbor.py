"""Deterministic CBOR for the node: the encoder its envelopes need and a bounded decoder for the lender's acks.

Encoding follows RFC 8949 §4.2.1 exactly as the gateway's telemetry.cbor does
(docs/wire-format.md), so a node's envelope is byte-identical to the one the
gateway would build: definite lengths, shortest heads, map keys in the
bytewise order of their encodings, floats in the shortest of half / single /
double that holds the value exactly (NaN as f97e00).

On ESP32 and RP2040 builds a float is single precision, so every float a node
encodes is at most a float32; times on the node are therefore integers.

The decoder (`cbordecode`, re-exported here) reads bytes from the network, so it trusts nothing: the size,
nesting depth and item count are capped, every declared length is checked
against the bytes left, heads must be shortest-form, indefinite lengths,
duplicate map keys and trailing bytes are refused, and every failure is a
CBORError (a ValueError).
"""

import struct

from cbordecode import CBORError, Tag, decode  # the decoder is its own module: the send phase needs only it

__all__ = ["CBORError", "Tag", "bstr_head", "decode", "encode"]

_MAX_UINT = 0xFFFFFFFFFFFFFFFF


def _head(out, major, value):
    major <<= 5
    if value < 24:
        out.append(major | value)
    elif value < 0x100:
        out.append(major | 24)
        out.append(value)
    elif value < 0x10000:
        out.append(major | 25)
        out.extend(value.to_bytes(2, "big"))
    elif value < 0x100000000:
        out.append(major | 26)
        out.extend(value.to_bytes(4, "big"))
    elif value <= _MAX_UINT:
        out.append(major | 27)
        out.extend(value.to_bytes(8, "big"))
    else:
        raise CBORError("integer %d does not fit a CBOR head (64 bits)" % value)


def _half_bits(single):
    """The float16 bits equal to a float32 (given as its 32 bits), or None if float16 cannot hold it."""
    sign = (single >> 16) & 0x8000
    exponent = (single >> 23) & 0xFF
    mantissa = single & 0x7FFFFF
    if exponent == 0:
        # zero, or a float32 subnormal (below 2**-126: far under float16's range)
        return sign if mantissa == 0 else None
    if exponent == 0xFF:
        return sign | 0x7C00  # infinity (NaN never gets here)
    exponent -= 127
    if -14 <= exponent <= 15:
        if mantissa & 0x1FFF:
            return None
        return sign | (exponent + 15) << 10 | mantissa >> 13
    if -24 <= exponent < -14:
        # a float16 subnormal counts units of 2**-24
        significand = mantissa | 0x800000
        shift = -exponent - 1
        if significand & ((1 << shift) - 1):
            return None
        return sign | significand >> shift
    return None


def _float(out, value):
    if value != value:
        out.extend(b"\xf9\x7e\x00")
        return
    single = struct.pack(">f", value)
    if struct.unpack(">f", single)[0] == value:
        half = _half_bits(int.from_bytes(single, "big"))
        if half is None:
            out.append(0xFA)
            out.extend(single)
        else:
            out.append(0xF9)
            out.extend(half.to_bytes(2, "big"))
    else:
        out.append(0xFB)
        out.extend(struct.pack(">d", value))


def _encode(value, out):
    kind = type(value)
    if kind is int:
        if value >= 0:
            _head(out, 0, value)
        else:
            _head(out, 1, -1 - value)
    elif kind is str:
        raw = value.encode()
        _head(out, 3, len(raw))
        out.extend(raw)
    elif kind is bytes or kind is bytearray or kind is memoryview:
        _head(out, 2, len(value))
        out.extend(value)
    elif kind is dict:
        pairs = []
        for key, item in value.items():
            encoded_key = bytearray()
            _encode(key, encoded_key)
            pairs.append((bytes(encoded_key), item))
        pairs.sort(key=_first)
        _head(out, 5, len(pairs))
        previous = None
        for encoded_key, item in pairs:
            if encoded_key == previous:
                raise CBORError("map has two keys that encode alike: %r" % encoded_key)
            previous = encoded_key
            out.extend(encoded_key)
            _encode(item, out)
    elif kind is list or kind is tuple:
        _head(out, 4, len(value))
        for item in value:
            _encode(item, out)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif value is None:
        out.append(0xF6)
    elif kind is float:
        _float(out, value)
    elif kind is Tag:
        _head(out, 6, value.number)
        _encode(value.value, out)
    else:
        raise CBORError("cannot encode %s as CBOR" % kind.__name__)


def _first(pair):
    return pair[0]


def encode(value):
    """The deterministic CBOR encoding (bytes) of int, str, bytes, list/tuple, dict, bool, None, float or Tag."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def bstr_head(length):
    """The head of a byte string of length bytes, for framing bytes that are already encoded."""
    out = bytearray()
    _head(out, 2, length)
    return bytes(out)
