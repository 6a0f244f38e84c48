"""Deterministic CBOR encoding (RFC 8949 §4.2.1) and a bounded decoder for untrusted bytes.

Encoding is deterministic so that the MicroPython firmware reproduces our bytes
exactly: definite lengths, shortest heads, floats in the shortest of half /
single / double that holds the value exactly, map keys in the bytewise order
of their encodings (cbor2's ``canonical=True`` sorts length-first, the older
RFC 7049 rule, which is why this module exists).

Decoding never trusts the input: a size cap is checked before the first byte
is read, integer and length heads must be in their shortest form (so one
envelope has exactly one encoding, and one digest), every declared length is checked against the bytes that remain,
nesting depth and the total number of items are bounded, duplicate map keys
and indefinite lengths are refused, and every failure is a `WireFormatError`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from telemetry.exc import CBORError, DuplicateKeyError, LimitError, OversizeError


@dataclass(frozen=True, slots=True)
class Tag:
    """A CBOR tag (major type 6) around a value."""

    number: int
    value: object


@dataclass(frozen=True, slots=True)
class Limits:
    """What a decoder accepts from outside before it gives up."""

    max_bytes: int = 64 * 1024
    max_depth: int = 16
    max_items: int = 4096


DEFAULT_LIMITS = Limits()

_MAX_UINT = (1 << 64) - 1


_TINY_HEADS = [[bytes((major << 5 | value,)) for value in range(24)] for major in range(8)]


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return _TINY_HEADS[major][value]
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    if value <= _MAX_UINT:
        return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")
    raise ValueError(f"integer {value} does not fit a CBOR head (64 bits)")


def _float(value: float) -> bytes:
    if value != value:
        return b"\xf9\x7e\x00"  # the one deterministic NaN
    for head, fmt in ((b"\xf9", ">e"), (b"\xfa", ">f")):
        try:
            packed = struct.pack(fmt, value)
        except OverflowError:  # too large for this width: try the next
            continue
        if struct.unpack(fmt, packed)[0] == value:
            return head + packed
    return b"\xfb" + struct.pack(">d", value)


_SMALL_INT_KEYS = {n: (bytes((n,)) if n >= 0 else bytes((0x20 | (-1 - n),))) for n in range(-24, 24)}


def _key(key: object) -> bytes:
    small = _SMALL_INT_KEYS.get(key) if type(key) is int else None
    return small if small is not None else encode(key)


def bstr_head(length: int) -> bytes:
    """The head of a byte string of `length` bytes (for assembling fixed framings by hand)."""
    return _head(2, length)


def _encode(obj: object, out: list[bytes]) -> None:
    kind = type(obj)
    if kind is int:
        out.append(_head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif kind is str:
        raw = obj.encode()
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif kind is dict:
        out.append(_head(5, len(obj)))
        pairs = sorted([(_key(key), value) for key, value in obj.items()])
        for index in range(1, len(pairs)):
            if pairs[index][0] == pairs[index - 1][0]:
                raise ValueError(f"map has two keys that encode alike: {pairs[index][0].hex()}")
        for key, value in pairs:
            out.append(key)
            _encode(value, out)
    elif kind is bytes or kind is bytearray or kind is memoryview:
        out.append(_head(2, len(obj)))
        out.append(bytes(obj))
    elif kind is list or kind is tuple:
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode(item, out)
    elif kind is bool:
        out.append(b"\xf5" if obj else b"\xf4")
    elif obj is None:
        out.append(b"\xf6")
    elif kind is float:
        out.append(_float(obj))
    elif kind is Tag:
        out.append(_head(6, obj.number))
        _encode(obj.value, out)
    else:
        raise TypeError(f"cannot encode {kind.__name__} as CBOR")


def encode(obj: object) -> bytes:
    """The deterministic CBOR encoding of `obj` (int, str, bytes, list/tuple, dict, bool, None, float, Tag)."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


def encode_labelled(items: list[tuple[int, object]]) -> bytes:
    """A map whose keys are distinct integers 0..23 given in ascending order: the same bytes as `encode(dict(items))`,
    without sorting (a hot path: every envelope payload is one)."""
    out: list[bytes] = [_head(5, len(items))]
    last = -1
    for key, value in items:
        if not last < key < 24:
            raise ValueError("encode_labelled takes keys 0..23 in ascending order")
        last = key
        out.append(_SMALL_INT_KEYS[key])
        _encode(value, out)
    return b"".join(out)


_SHORTEST_FLOOR = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


class _Decoder:
    __slots__ = ("data", "pos", "items_left", "max_depth")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.items_left = limits.max_items
        self.max_depth = limits.max_depth

    def fail(self, what: str) -> CBORError:
        return CBORError(f"{what} at byte {self.pos} of {len(self.data)}")

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise self.fail(f"truncated: {count} bytes declared, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def argument(self, info: int) -> int:
        if info < 24:
            return info
        if 24 <= info <= 27:
            width = 1 << (info - 24)
            value = int.from_bytes(self.take(width), "big")
            if value < _SHORTEST_FLOOR[info]:
                # RFC 8949 §4.2.1: a longer head than needed gives one message two encodings
                raise self.fail(f"integer or length {value} is not in its shortest form")
            return value
        if info == 31:
            raise self.fail("indefinite length is not allowed")
        raise self.fail(f"reserved additional information {info}")

    def item(self, depth: int) -> object:
        if depth > self.max_depth:
            raise LimitError(f"CBOR nests deeper than {self.max_depth} levels at byte {self.pos}")
        self.items_left -= 1
        if self.items_left < 0:
            raise LimitError(f"CBOR holds more than the allowed number of items (at byte {self.pos})")
        if self.pos >= len(self.data):
            raise self.fail("truncated: expected another item")
        initial = self.data[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
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
            raw = self.take(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self.fail("text string is not valid UTF-8") from exc
        remaining = len(self.data) - self.pos
        if major == 4:
            if value > remaining:  # every item takes at least one byte
                raise self.fail(f"array declares {value} items, only {remaining} bytes left")
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            if 2 * value > remaining:
                raise self.fail(f"map declares {value} pairs, only {remaining} bytes left")
            result: dict = {}
            for _ in range(value):
                key_at = self.pos
                key = self.item(depth + 1)
                if not isinstance(key, (int, str, bytes)):
                    raise self.fail(f"map key of type {type(key).__name__} is not allowed")
                if key in result:
                    raise DuplicateKeyError(f"map repeats key {key!r} at byte {key_at}")
                result[key] = self.item(depth + 1)
            return result
        # major == 6
        return Tag(value, self.item(depth + 1))

    def simple(self, info: int) -> object:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            return struct.unpack(">e", self.take(2))[0]
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        if info == 31:
            raise self.fail("unexpected break (indefinite lengths are not allowed)")
        raise self.fail(f"simple value {info} is not allowed")


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> object:
    """Decode exactly one CBOR item from untrusted `data`, within `limits`.

    Raises a `WireFormatError` (never anything else) when the bytes are too
    large, malformed, nested too deep, too numerous, or repeat a map key.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise OversizeError(f"{len(data)} bytes is more than the {limits.max_bytes}-byte cap")
    decoder = _Decoder(bytes(data), limits)
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise decoder.fail(f"{len(decoder.data) - decoder.pos} trailing bytes after the item")
    return value
