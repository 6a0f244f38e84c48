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

import operator
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


class Encoded(bytes):
    """Bytes that already are one item's deterministic encoding (say a SenML pack built by `telemetry.senml.encode_pack`):
    the encoder copies them as they are, so a caller need not build the item only to have it encoded."""

    __slots__ = ()

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


_F16, _F32, _F64 = struct.Struct(">e"), struct.Struct(">f"), struct.Struct(">d")
_INF = float("inf")
_HALF_MAX = 65504.0  # the largest finite half; every half is within it or infinite


def _float(value: float) -> bytes:
    """The shortest of half / single / double that holds `value` exactly (a half is also a single: single first)."""
    if value != value:
        return b"\xf9\x7e\x00"  # the one deterministic NaN
    try:
        single = _F32.pack(value)
    except OverflowError:  # beyond a single's range: beyond a half's too
        return b"\xfb" + _F64.pack(value)
    if _F32.unpack(single)[0] != value:
        return b"\xfb" + _F64.pack(value)
    if -_HALF_MAX <= value <= _HALF_MAX or value in (_INF, -_INF):
        half = _F16.pack(value)
        if _F16.unpack(half)[0] == value:
            return b"\xf9" + half
    return b"\xfa" + single



_SMALL_INT_KEYS = {n: (bytes((n,)) if n >= 0 else bytes((0x20 | (-1 - n),))) for n in range(-24, 24)}


def _key(key: object) -> bytes:
    small = _SMALL_INT_KEYS.get(key) if type(key) is int else None
    return small if small is not None else encode(key)


def bstr_head(length: int) -> bytes:
    """The head of a byte string of `length` bytes (for assembling fixed framings by hand)."""
    return _TINY_HEADS[2][length] if length < 24 else _head(2, length)


def map_head(length: int) -> bytes:
    """The head of a map of `length` pairs."""
    return _TINY_HEADS[5][length] if length < 24 else _head(5, length)


def encode_into(obj: object, out: list[bytes]) -> None:
    """Append the deterministic encoding of `obj` to `out`, in pieces (`b"".join(out)` is the encoding)."""
    _item(obj, out.append, out)


def array_head(length: int) -> bytes:
    """The head of an array of `length` items."""
    return _TINY_HEADS[4][length] if length < 24 else _head(4, length)


# The encoder's hot path: every envelope payload and SenML pack goes through it. Small integers (the labels and
# counters of every map) come from a table; maps and arrays are encoded in one loop that handles their scalar
# items inline; only nested containers recurse. The bytes are exactly those of the plain rules above.
_INT_BYTES = {n: (_head(0, n) if n >= 0 else _head(1, -1 - n)) for n in range(-257, 257)}
_ARRAY_HEADS = _TINY_HEADS[4]
_MAP_HEADS = _TINY_HEADS[5]
_BSTR_HEADS = _TINY_HEADS[2]
_TSTR_HEADS = _TINY_HEADS[3]
_first = operator.itemgetter(0)


def _encode(obj: object, out: list[bytes]) -> None:
    append = out.append
    kind = type(obj)
    if kind is int:
        small = _INT_BYTES.get(obj)
        append(small if small is not None else _head(0, obj) if obj >= 0 else _head(1, -1 - obj))
    elif kind is str:
        raw = obj.encode()
        size = len(raw)
        append(_TSTR_HEADS[size] if size < 24 else _head(3, size))
        append(raw)
    elif kind is dict:
        size = len(obj)
        append(_MAP_HEADS[size] if size < 24 else _head(5, size))
        if size:
            # a table's bytes are never empty, so `or` falls through only for keys not in it
            pairs = [((type(key) is int and _INT_BYTES.get(key)) or encode(key), value) for key, value in obj.items()]
            if size > 1 and len({key for key, _ in pairs}) != size:
                # two keys encode alike (NaNs): the plain rule's comparison and its error, exactly
                pairs = sorted(pairs)
                for index in range(1, len(pairs)):
                    if pairs[index][0] == pairs[index - 1][0]:
                        raise ValueError(f"map has two keys that encode alike: {pairs[index][0].hex()}")
            pairs.sort(key=_first)
            for key, value in pairs:
                append(key)
                _item(value, append, out)
    elif kind is bytes:
        size = len(obj)
        append(_BSTR_HEADS[size] if size < 24 else _head(2, size))
        append(obj)
    elif kind is bytearray or kind is memoryview:
        append(_head(2, len(obj)))
        append(bytes(obj))
    elif kind is list or kind is tuple:
        size = len(obj)
        append(_ARRAY_HEADS[size] if size < 24 else _head(4, size))
        for item in obj:
            _item(item, append, out)
    elif kind is bool:
        append(b"\xf5" if obj else b"\xf4")
    elif obj is None:
        append(b"\xf6")
    elif kind is float:
        append(_float(obj))
    elif kind is Tag:
        append(_head(6, obj.number))
        _encode(obj.value, out)
    elif kind is Encoded:
        append(obj)
    else:
        raise TypeError(f"cannot encode {kind.__name__} as CBOR")


def _item(obj: object, append, out: list[bytes]) -> None:
    """One item inside a container: small ints, short text and byte strings and floats inline, the rest by _encode."""
    kind = type(obj)
    if kind is int:
        small = _INT_BYTES.get(obj)
        if small is not None:
            append(small)
            return
    elif kind is str:
        raw = obj.encode()
        size = len(raw)
        if size < 24:
            append(_TSTR_HEADS[size])
            append(raw)
            return
    elif kind is bytes:
        size = len(obj)
        if size < 24:
            append(_BSTR_HEADS[size])
            append(obj)
            return
    elif kind is float:
        append(_float(obj))
        return
    elif kind is bool:
        append(b"\xf5" if obj else b"\xf4")
        return
    _encode(obj, out)


def encode(obj: object) -> bytes:
    """The deterministic CBOR encoding of `obj` (int, str, bytes, list/tuple, dict, bool, None, float, Tag)."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


def encode_labelled(items: list[tuple[int, object]]) -> bytes:
    """A map whose keys are distinct integers -24..23 given in the deterministic order (0..23 ascending, then -1, -2,
    ... descending): the same bytes as `encode(dict(items))`, without sorting (a hot path: every envelope payload and
    every SenML record is one). A value may be `Encoded`."""
    size = len(items)
    out: list[bytes] = [_MAP_HEADS[size] if size < 24 else _head(5, size)]
    append = out.append
    last = b""
    for key, value in items:
        encoded = _SMALL_INT_KEYS.get(key) if type(key) is int else None
        if encoded is None or encoded <= last:
            raise ValueError("encode_labelled takes distinct keys -24..23 in their deterministic order")
        last = encoded
        append(encoded)
        if type(value) is Encoded:
            append(value)
        else:
            _item(value, append, out)
    return b"".join(out)


_SHORTEST_FLOOR = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}
_FLOAT_HEADS = {0xF9: (_F16.unpack_from, 2), 0xFA: (_F32.unpack_from, 4), 0xFB: (_F64.unpack_from, 8)}


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> object:
    """Decode exactly one CBOR item from untrusted `data`, within `limits`.

    Raises a `WireFormatError` (never anything else) when the bytes are too
    large, malformed, nested too deep, too numerous, or repeat a map key.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise OversizeError(f"{len(data)} bytes is more than the {limits.max_bytes}-byte cap")
    data = bytes(data)
    end = len(data)
    max_depth = limits.max_depth
    pos = 0
    items_left = limits.max_items

    # One closure over the position (every lender request and envelope goes through it). Each check, its order and
    # its message are those of the plain rules: depth, then the item count, then truncation; heads in their shortest
    # form; lengths against the bytes that remain. Small integers inside maps and arrays are read inline.

    def fail(what: str) -> CBORError:
        return CBORError(f"{what} at byte {pos} of {end}")

    def take(count: int) -> bytes:
        nonlocal pos
        stop = pos + count
        if stop > end:
            raise fail(f"truncated: {count} bytes declared, {end - pos} left")
        chunk = data[pos:stop]
        pos = stop
        return chunk

    def item(depth: int) -> object:
        nonlocal pos, items_left
        if depth > max_depth:
            raise LimitError(f"CBOR nests deeper than {max_depth} levels at byte {pos}")
        items_left -= 1
        if items_left < 0:
            raise LimitError(f"CBOR holds more than the allowed number of items (at byte {pos})")
        if pos >= end:
            raise fail("truncated: expected another item")
        initial = data[pos]
        pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if major == 7:
            return simple(info)
        if info < 24:
            value = info
        elif info <= 27:
            width = 1 << (info - 24)
            stop = pos + width
            if stop > end:
                raise fail(f"truncated: {width} bytes declared, {end - pos} left")
            value = int.from_bytes(data[pos:stop], "big")
            pos = stop
            if value < _SHORTEST_FLOOR[info]:
                # RFC 8949 §4.2.1: a longer head than needed gives one message two encodings
                raise fail(f"integer or length {value} is not in its shortest form")
        elif info == 31:
            raise fail("indefinite length is not allowed")
        else:
            raise fail(f"reserved additional information {info}")
        if major == 0:
            return value
        if major == 1:
            return -1 - value
        if major == 2 or major == 3:
            stop = pos + value
            if stop > end:
                raise fail(f"truncated: {value} bytes declared, {end - pos} left")
            raw = data[pos:stop]
            pos = stop
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise fail("text string is not valid UTF-8") from exc
        remaining = end - pos
        child = depth + 1
        # a child item is read inline when it is a small integer and neither limit can trip on it
        inline = child <= max_depth
        if major == 4:
            if value > remaining:  # every item takes at least one byte
                raise fail(f"array declares {value} items, only {remaining} bytes left")
            result_list = []
            append = result_list.append
            for _ in range(value):
                if inline and items_left > 0 and pos < end:
                    head = data[pos]
                    if head < 0x18:
                        items_left -= 1
                        pos += 1
                        append(head)
                        continue
                    if 0x20 <= head < 0x38:
                        items_left -= 1
                        pos += 1
                        append(0x1F - head)  # -1 - (head - 0x20)
                        continue
                    if 0x40 <= head < 0x58 and pos + head - 0x3F <= end:  # a short byte string, all there
                        items_left -= 1
                        stop = pos + head - 0x3F
                        append(data[pos + 1:stop])
                        pos = stop
                        continue
                append(item(child))
            return result_list
        if major == 5:
            if 2 * value > remaining:
                raise fail(f"map declares {value} pairs, only {remaining} bytes left")
            result: dict = {}
            for _ in range(value):
                key_at = pos
                if inline and items_left > 0 and pos < end and ((head := data[pos]) < 0x18 or 0x20 <= head < 0x38):
                    items_left -= 1
                    pos += 1
                    key = head if head < 0x18 else 0x1F - head
                else:
                    key = item(child)
                    if not isinstance(key, (int, str, bytes)):
                        raise fail(f"map key of type {type(key).__name__} is not allowed")
                if key in result:
                    raise DuplicateKeyError(f"map repeats key {key!r} at byte {key_at}")
                if inline and items_left > 0 and pos < end:
                    head = data[pos]
                    if head < 0x18:
                        items_left -= 1
                        pos += 1
                        result[key] = head
                        continue
                    if 0x40 <= head < 0x58 and pos + head - 0x3F <= end:  # a short byte string, all there
                        items_left -= 1
                        stop = pos + head - 0x3F
                        result[key] = data[pos + 1:stop]
                        pos = stop
                        continue
                    if 0x60 <= head < 0x78 and pos + head - 0x5F <= end:  # short text, all there and valid UTF-8
                        stop = pos + head - 0x5F
                        try:
                            text = data[pos + 1:stop].decode("utf-8")
                        except UnicodeDecodeError:
                            pass  # item() reads it again and says where
                        else:
                            items_left -= 1
                            pos = stop
                            result[key] = text
                            continue
                    if head == 0xF4 or head == 0xF5:
                        items_left -= 1
                        pos += 1
                        result[key] = head == 0xF5
                        continue
                    if 0x18 <= head <= 0x1B:  # an unsigned integer with its bytes, all there and shortest
                        stop = pos + 1 + (1 << (head - 0x18))
                        if stop <= end:
                            number = int.from_bytes(data[pos + 1:stop], "big")
                            if number >= _SHORTEST_FLOOR[head]:
                                items_left -= 1
                                pos = stop
                                result[key] = number
                                continue
                    elif head in _FLOAT_HEADS:  # a half, single or double, all there
                        unpack, width = _FLOAT_HEADS[head]
                        if pos + 1 + width <= end:
                            items_left -= 1
                            result[key] = unpack(data, pos + 1)[0]
                            pos += 1 + width
                            continue
                result[key] = item(child)
            return result
        # major == 6
        return Tag(value, item(child))

    def simple(info: int) -> object:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 25:
            return _F16.unpack(take(2))[0]
        if info == 26:
            return _F32.unpack(take(4))[0]
        if info == 27:
            return _F64.unpack(take(8))[0]
        if info == 31:
            raise fail("unexpected break (indefinite lengths are not allowed)")
        raise fail(f"simple value {info} is not allowed")

    value = item(0)
    if pos != end:
        raise fail(f"{end - pos} trailing bytes after the item")
    return value
