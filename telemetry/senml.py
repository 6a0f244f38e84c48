"""SenML packs (RFC 8428) in CBOR with the RFC's integer labels.

`encode_pack` compacts with base values (RFC 8428 §4.1) by a fixed rule that
the firmware reproduces byte for byte (docs/wire-format.md); `decode_pack`
resolves base values (§4.6) and checks names (§4.5.1), units (§12.1 and the
RFC 8798 secondary units), value types and that every resolved number is
finite (no NaN, no ±infinity), raising `SenMLError` on any breach.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from telemetry import cbor
from telemetry.exc import SenMLError

BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8

SENML_VERSION = 10

# RFC 8428 §12.1 registry, its later additions, and RFC 8798 secondary units.
UNITS = frozenset(
    "m kg g s A K cd mol Hz rad sr N Pa J W C V F Ohm S Wb T H Cel lm lx Bq Gy Sv kat "
    "m2 m3 l m/s m/s2 m3/s l/s W/m2 cd/m2 bit bit/s lat lon pH dB dBW Bspl count / % "
    "%RH %EL EL 1/s 1/min beat/min beats S/m B VA VAs var vars J/m kg/m3 deg NTU "
    "ms min h MHz kW kVA kvar Ah kWh mV mA dBm ug/m3 mm/h m/h ppm /100 /1000 hPa mm cm km km/h".split()
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*\Z")
_BASE_NAME_ENDS = (":", "/", ".")
_PLAIN_NUMBER = frozenset((int, float, type(None)))  # exact types that pass a number field's check


@dataclass(frozen=True, slots=True)
class Record:
    """One resolved SenML record: a full name and exactly one value (or a sum)."""

    name: str
    value: int | float | None = None
    string: str | None = None
    boolean: bool | None = None
    data: bytes | None = None
    sum: int | float | None = None
    unit: str | None = None
    time: int | float | None = None
    update_time: int | float | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.unit is not None and self.unit not in UNITS:
            raise SenMLError(f"record {self.name!r}: unit {self.unit!r} is not in the SenML unit registry")
        string, boolean, data = self.string, self.boolean, self.data
        values = (self.value is not None) + (string is not None) + (boolean is not None) + (data is not None)
        if values > 1:
            raise SenMLError(f"record {self.name!r} has {values} values; a record carries exactly one")
        if values == 0 and self.sum is None:
            raise SenMLError(f"record {self.name!r} has neither a value nor a sum")
        # the common case decided by exact types (a hot path: every record decoded at the lender); anything else
        # goes through the checks below, which give the messages
        if (type(self.value) in _PLAIN_NUMBER and type(self.sum) in _PLAIN_NUMBER and type(self.time) in _PLAIN_NUMBER
                and type(self.update_time) in _PLAIN_NUMBER and (string is None or type(string) is str)
                and (boolean is None or type(boolean) is bool) and (data is None or type(data) is bytes)):
            return
        for label, number in (("value", self.value), ("sum", self.sum), ("time", self.time), ("update_time", self.update_time)):
            if number is not None and not _is_number(number):
                raise SenMLError(f"record {self.name!r}: {label} must be a number, got {type(number).__name__}")
        for label, item, kind in (("string", self.string, str), ("boolean", self.boolean, bool), ("data", self.data, bytes)):
            if item is not None and not isinstance(item, kind):
                raise SenMLError(f"record {self.name!r}: {label} must be {kind.__name__}, got {type(item).__name__}")


def _is_number(item: object) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool)


def check_name(name: object) -> str:
    """Return `name` if it is a valid resolved SenML name (RFC 8428 §4.5.1), else raise SenMLError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise SenMLError(
            f"SenML name {name!r} is invalid: use A-Z a-z 0-9 - : . / _ and start with a letter or digit"
        )
    return name


def _base_name(names: list[str]) -> str:
    """The longest common prefix ending in ':' '/' or '.' that leaves every name a non-empty rest."""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    shortest = min(len(name) for name in names)
    for end in range(min(len(prefix), shortest - 1), 0, -1):
        if prefix[end - 1] in _BASE_NAME_ENDS:
            return prefix[:end]
    return ""


def pack_to_cbor(records: list[Record] | tuple[Record, ...]) -> list[dict]:
    """The compacted SenML-CBOR data model of `records` (a list of label->value maps).

    Compaction rule (docs/wire-format.md; the firmware does the same): the
    first record carries bn (see `_base_name`), bu when there are two or more
    records and all share one unit, and bt = the first record's time; others
    carry t = time - bt only where it differs.
    """
    if not records:
        return []
    base_name = _base_name([r.name for r in records])
    units = {r.unit for r in records}
    base_unit = units.pop() if len(records) >= 2 and len(units) == 1 else None
    base_time = records[0].time
    if any((r.time is None) != (base_time is None) for r in records):
        raise ValueError("either every record of a pack has a time or none has (a base time applies to all)")
    out = []
    for index, record in enumerate(records):
        item: dict = {N: record.name[len(base_name):]}
        if index == 0:
            if base_name:
                item[BN] = base_name
            if base_unit is not None:
                item[BU] = base_unit
            if base_time is not None:
                item[BT] = base_time
        if record.unit is not None and base_unit is None:
            item[U] = record.unit
        if record.time is not None and record.time != base_time:
            item[T] = record.time - base_time
        for label, field in ((V, record.value), (VS, record.string), (VB, record.boolean), (VD, record.data), (S, record.sum), (UT, record.update_time)):
            if field is not None:
                item[label] = field
        out.append(item)
    return out


_KEYS = {label: cbor.encode(label) for label in (N, U, V, VS, VB, S, T, UT, VD, BN, BT, BU)}
_K_N, _K_U, _K_V, _K_VS, _K_VB, _K_S, _K_T, _K_UT, _K_VD, _K_BN, _K_BT, _K_BU = (
    _KEYS[label] for label in (N, U, V, VS, VB, S, T, UT, VD, BN, BT, BU))
_BASE_NAMES: dict[tuple[str, ...], str] = {}  # a device's packs name the same sensors again and again


def encode_pack(records: list[Record] | tuple[Record, ...]) -> cbor.Encoded:
    """`cbor.encode(pack_to_cbor(records))`, built directly: each record's labels are written in their deterministic
    order (0 n, 1 u, 2 v, 3 vs, 4 vb, 5 s, 6 t, 7 ut, 8 vd, then -2 bn, -3 bt, -4 bu) with no maps to sort. The agent
    seals one per envelope; the same compaction rule as `pack_to_cbor`."""
    if not records:
        return cbor.Encoded(b"\x80")
    names = tuple([r.name for r in records])
    base_name = _BASE_NAMES.get(names)
    if base_name is None:
        base_name = _base_name(list(names))
        if len(_BASE_NAMES) >= 256:
            _BASE_NAMES.clear()
        _BASE_NAMES[names] = base_name
    units = {r.unit for r in records}
    base_unit = units.pop() if len(records) >= 2 and len(units) == 1 else None
    base_time = records[0].time
    if any((r.time is None) != (base_time is None) for r in records):
        raise ValueError("either every record of a pack has a time or none has (a base time applies to all)")
    cut = len(base_name)
    encode_into = cbor.encode_into
    out = [cbor.array_head(len(records))]
    for index, record in enumerate(records):
        body = [_K_N]
        count = 1
        put = body.append
        encode_into(record.name[cut:], body)
        if record.unit is not None and base_unit is None:
            put(_K_U)
            count += 1
            encode_into(record.unit, body)
        if record.value is not None:
            put(_K_V)
            count += 1
            encode_into(record.value, body)
        if record.string is not None:
            put(_K_VS)
            count += 1
            encode_into(record.string, body)
        if record.boolean is not None:
            put(_K_VB)
            count += 1
            encode_into(record.boolean, body)
        if record.sum is not None:
            put(_K_S)
            count += 1
            encode_into(record.sum, body)
        if record.time is not None and record.time != base_time:
            put(_K_T)
            count += 1
            encode_into(record.time - base_time, body)
        if record.update_time is not None:
            put(_K_UT)
            count += 1
            encode_into(record.update_time, body)
        if record.data is not None:
            put(_K_VD)
            count += 1
            encode_into(record.data, body)
        if index == 0:
            if base_name:
                put(_K_BN)
                count += 1
                encode_into(base_name, body)
            if base_time is not None:
                put(_K_BT)
                count += 1
                encode_into(base_time, body)
            if base_unit is not None:
                put(_K_BU)
                count += 1
                encode_into(base_unit, body)
        out.append(cbor.map_head(count))
        out += body
    return cbor.Encoded(b"".join(out))


def _field(item: dict, label: int, kind: type | tuple, index: int) -> object:
    value = item.get(label)
    if value is None:
        return None
    if kind is float:
        ok = _is_number(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise SenMLError(f"SenML record {index}: label {label} has type {type(value).__name__}")
    return value


def records_from_cbor(pack: object) -> tuple[Record, ...]:
    """Resolve a decoded SenML-CBOR pack (RFC 8428 §4.6) into records; raise SenMLError if it is not valid SenML."""
    if not isinstance(pack, list):
        raise SenMLError(f"a SenML pack is an array, got {type(pack).__name__}")
    base_name, base_time, base_unit, base_value, base_sum = "", None, None, None, None
    version = None
    records = []
    for index, item in enumerate(pack):
        if not isinstance(item, dict):
            raise SenMLError(f"SenML record {index} is a {type(item).__name__}, not a map")
        for label in item:
            if type(label) is not int and isinstance(label, str) and label.endswith("_"):
                raise SenMLError(f"SenML record {index} has must-understand field {label!r}, which is not supported")
        # a label is checked by _field only when present (most of a record's labels are absent: a hot path)
        get = item.get
        bver = None if get(BVER) is None else _field(item, BVER, int, index)
        if bver is not None:
            if bver > SENML_VERSION:
                raise SenMLError(f"SenML version {bver} is newer than the supported {SENML_VERSION}")
            if version is not None and bver != version:
                raise SenMLError(f"SenML record {index} changes the version from {version} to {bver}")
            version = bver
        if BN in item:
            base_name = _field(item, BN, str, index)
        if BT in item:
            base_time = _field(item, BT, float, index)
        if BU in item:
            base_unit = _field(item, BU, str, index)
        if BV in item:
            base_value = _field(item, BV, float, index)
        if BS in item:
            base_sum = _field(item, BS, float, index)
        name = base_name + ((None if get(N) is None else _field(item, N, str, index)) or "")
        value = None if get(V) is None else _field(item, V, float, index)
        if value is not None and base_value is not None:
            value = base_value + value
        total = None if get(S) is None else _field(item, S, float, index)
        if total is not None and base_sum is not None:
            total = base_sum + total
        time = None if get(T) is None else _field(item, T, float, index)
        if time is not None or base_time is not None:
            time = (base_time or 0) + (time or 0)
        update_time = None if get(UT) is None else _field(item, UT, float, index)
        if float in (type(value), type(total), type(time), type(update_time)):  # only a float can be non-finite
            for label, number in (("value", value), ("sum", total), ("time", time), ("update time", update_time)):
                _check_finite(number, label, index)
        records.append(
            Record(
                name=name,
                value=value,
                string=None if get(VS) is None else _field(item, VS, str, index),
                boolean=None if get(VB) is None else _field(item, VB, bool, index),
                data=None if get(VD) is None else _field(item, VD, bytes, index),
                sum=total,
                unit=(None if get(U) is None else _field(item, U, str, index)) or base_unit,
                time=time,
                update_time=update_time,
            )
        )
    return tuple(records)


def _check_finite(number: int | float | None, label: str, index: int) -> None:
    """A resolved number must be finite: NaN and ±infinity mean nothing as a reading or a time, and a store
    cannot keep them (SQLite turns NaN into NULL), so they are refused here, where the envelope is decoded."""
    if type(number) is float and not math.isfinite(number):
        raise SenMLError(f"SenML record {index}: {label} is {number!r}, not a finite number (resolved with its base "
                         "values); a reading or a time must be finite")
