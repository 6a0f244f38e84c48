"""Deterministic CBOR for the node: the encoder its envelopes need and a bounded decoder for the lender's acks.

Encoding follows RFC 8949 §4.2.1 exactly as the gateway's telemetry.cbor does
(docs/wire-format.md), so a node's envelope is byte-identical to the one the
gateway would build: definite lengths, shortest heads, map keys in the
bytewise order of their encodings, floats in the shortest of half / single /
double that holds the value exactly (NaN as f97e00).

On ESP32 and RP2040 builds a float is single precision, so every float a node
encodes is at most a float32; times on the node are therefore integers.

The decoder reads bytes from the network, so it trusts nothing: the size,
nesting depth and item count are capped, every declared length is checked
against the bytes left, heads must be shortest-form, indefinite lengths,
duplicate map keys and trailing bytes are refused, and every failure is a
CBORError (a ValueError).
"""

import struct


class CBORError(ValueError):
    """Bytes that are not CBOR this node accepts, or a value it cannot encode."""


class Tag:
    """A CBOR tag (major type 6) around a value, e.g. Tag(18, [...]) for COSE_Sign1."""

    def __init__(self, number, value):
        if not isinstance(number, int) or number < 0:
            raise CBORError("a CBOR tag number is an unsigned integer, got %r" % (number,))
        self.number = number
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.number == other.number and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.number, self.value)


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


_SHORTEST = (24, 0x100, 0x10000, 0x100000000)


class _Decoder:
    def __init__(self, data, max_depth, max_items):
        self.data = data
        self.position = 0
        self.depth_left = max_depth
        self.items_left = max_items

    def fail(self, what):
        return CBORError("%s at byte %d of %d" % (what, self.position, len(self.data)))

    def take(self, count):
        end = self.position + count
        if end > len(self.data):
            raise self.fail("truncated: %d bytes declared, %d left" % (count, len(self.data) - self.position))
        chunk = bytes(self.data[self.position : end])
        self.position = end
        return chunk

    def argument(self, info):
        if info < 24:
            return info
        if info <= 27:
            value = int.from_bytes(self.take(1 << (info - 24)), "big")
            if value < _SHORTEST[info - 24]:
                raise self.fail("integer or length %d is not in its shortest form" % value)
            return value
        if info == 31:
            raise self.fail("indefinite length is not allowed")
        raise self.fail("reserved additional information %d" % info)

    def item(self):
        self.items_left -= 1
        if self.items_left < 0:
            raise self.fail("too many items")
        if self.position >= len(self.data):
            raise self.fail("truncated: expected another item")
        initial = self.data[self.position]
        self.position += 1
        major = initial >> 5
        info = initial & 0x1F
        if major == 7:
            return self.simple(info)
        value = self.argument(info)
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2:
            return self.take(value)
        if major == 3:
            try:
                return str(self.take(value), "utf-8")
            except UnicodeError:
                raise self.fail("text string is not valid UTF-8")
        self.depth_left -= 1
        if self.depth_left < 0:
            raise self.fail("nested too deep")
        remaining = len(self.data) - self.position
        if major == 4:
            if value > remaining:  # every item takes at least one byte
                raise self.fail("array declares %d items, only %d bytes left" % (value, remaining))
            result = [self.item() for _ in range(value)]
        elif major == 5:
            if 2 * value > remaining:
                raise self.fail("map declares %d pairs, only %d bytes left" % (value, remaining))
            result = {}
            for _ in range(value):
                key = self.item()
                if type(key) not in (int, str, bytes):
                    raise self.fail("map key of type %s is not allowed" % type(key).__name__)
                if key in result:
                    raise self.fail("map repeats key %r" % (key,))
                result[key] = self.item()
        else:
            result = Tag(value, self.item())
        self.depth_left += 1
        return result

    def simple(self, info):
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            bits = int.from_bytes(self.take(2), "big")
            exponent = (bits >> 10) & 0x1F
            fraction = bits & 0x3FF
            if exponent == 0x1F:
                magnitude = float("nan") if fraction else float("inf")
            elif exponent:
                magnitude = (fraction | 0x400) * 2.0 ** (exponent - 25)
            else:
                magnitude = fraction * 2.0**-24
            return -magnitude if bits & 0x8000 else magnitude
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        if info == 31:
            raise self.fail("unexpected break (indefinite lengths are not allowed)")
        raise self.fail("simple value %d is not allowed" % info)


def decode(data, max_bytes=1024, max_depth=8, max_items=256):
    """Decode exactly one CBOR item from untrusted data within the caps; raise CBORError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORError("expected bytes, got %s" % type(data).__name__)
    if len(data) > max_bytes:
        raise CBORError("%d bytes is more than the %d-byte cap" % (len(data), max_bytes))
    decoder = _Decoder(data, max_depth, max_items)
    value = decoder.item()
    if decoder.position != len(data):
        raise decoder.fail("%d trailing bytes after the item" % (len(data) - decoder.position))
    return value
