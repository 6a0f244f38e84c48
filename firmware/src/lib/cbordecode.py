"""The node's CBOR decoder: bounded, for bytes from the network (the lender's acks) and from flash (node.oscore).

Its own module so the send phase loads it without the encoder (`cbor`, which
re-exports it for the signing phase and the tests). It trusts nothing: the
size, nesting depth and item count are capped, every declared length is
checked against the bytes left, heads must be shortest-form, indefinite
lengths, duplicate map keys and trailing bytes are refused, and every failure
is a CBORError (a ValueError).
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
