"""A node's readings in envelope version 3: one small map in place of the SenML pack (docs/wire-format.md).

An NB-IoT node signs the same few records at every wake (temperature,
tamper switch, battery, the heartbeat after a start, its three alarms), all
with one time. Version 3 writes them as

    Readings = { ? 0: time,        ; the records' common time (seconds), absent when they have none
                 * uint => value } ; a record by its number in `NODE_READINGS`

where each number stands for a fixed SenML name, unit and value kind. The
table is part of the contract: a number is never reused or changed, only
added. So the signed bytes name every record exactly (the signature covers
the number, and the number means one name and unit for good), and a decoder
gives back the same SenML records a version 2 pack of them would. Readings
not in the table, or records of different times, do not fit: the signer makes
a version 2 envelope of them instead.

Numbers are in the order the node samples, which is the order of the records
in the envelope (a CBOR map's keys are sorted, so the order is the table's).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from telemetry.exc import SchemaError
from telemetry.senml import Record

TIME = 0
VALUE, BOOLEAN = "v", "vb"

# number -> (name, unit, kind); frozen: append only, never renumber
NODE_READINGS: dict[int, tuple[str, str | None, str]] = {
    1: ("temp", "Cel", VALUE),
    2: ("tamper", None, BOOLEAN),
    3: ("alarm.tamper", None, BOOLEAN),
    4: ("batt", "V", VALUE),
    5: ("alarm.motion", None, BOOLEAN),
    6: ("alarm.tilt", "deg", VALUE),
    7: ("device.heartbeat_s", "s", VALUE),
}
_BY_NAME = {name: (number, unit, kind) for number, (name, unit, kind) in NODE_READINGS.items()}


def _is_number(item: object) -> bool:
    return isinstance(item, (int, float)) and not isinstance(item, bool)


def fits(records: Sequence[Record]) -> bool:
    """Whether `records` can be written as version 3 readings (see `to_cbor`)."""
    try:
        to_cbor(records)
    except ValueError:
        return False
    return True


def to_cbor(records: Sequence[Record]) -> dict[int, object]:
    """The readings map of `records`; ValueError when they do not fit: a record not in the table (by name, unit and
    kind), a sum, string, data or update time, records out of the table's order or twice, or times that differ."""
    out: dict[int, object] = {}
    if not records:
        return out
    time = records[0].time
    last = 0
    for record in records:
        entry = _BY_NAME.get(record.name)
        if entry is None:
            raise ValueError(f"record {record.name!r} has no number in the node readings table")
        number, unit, kind = entry
        if record.time != time:
            raise ValueError("node readings share one time (or none): records of different times do not fit")
        if record.unit != unit or record.sum is not None or record.string is not None or record.data is not None \
                or record.update_time is not None:
            raise ValueError(f"record {record.name!r} is not the table's ({unit!r}, {kind})")
        value = record.value if kind == VALUE else record.boolean
        if value is None:
            raise ValueError(f"record {record.name!r} carries no {kind}")
        if kind == VALUE and not math.isfinite(value):
            raise ValueError(f"record {record.name!r}: {value!r} is not a finite number")
        if number <= last:
            raise ValueError(f"record {record.name!r} is out of the table's order (or there twice)")
        last = number
        out[number] = value
    if time is not None:
        out[TIME] = time
    return dict(sorted(out.items()))


def from_cbor(item: object) -> tuple[Record, ...]:
    """The SenML records a readings map stands for, in the table's order; SchemaError when it is not one."""
    if not isinstance(item, dict):
        raise SchemaError("version 3 readings (5) must be a map")
    if any(type(key) is not int for key in item):
        raise SchemaError("version 3 readings: every key is an integer (0: the time, then the table's numbers)")
    time = item.get(TIME)
    if TIME in item:
        if not isinstance(time, (int, float)) or isinstance(time, bool) or not math.isfinite(time):
            raise SchemaError("version 3 readings: the time (0) must be a finite number")
        if len(item) == 1:
            raise SchemaError("version 3 readings: a time (0) with no reading")
    numbers = [k for k in item if k != TIME]
    for number in numbers:
        if type(number) is not int or number not in NODE_READINGS:
            raise SchemaError(f"version 3 readings: {number!r} is not a number of the node readings table")
    records = []
    for number in sorted(numbers):
        name, unit, kind = NODE_READINGS[number]
        value = item[number]
        if kind == VALUE:
            if not _is_number(value) or not math.isfinite(value):
                raise SchemaError(f"version 3 readings: {name} ({number}) must be a finite number")
            records.append(Record(name, value=value, unit=unit, time=time))
        else:
            if not isinstance(value, bool):
                raise SchemaError(f"version 3 readings: {name} ({number}) must be a boolean")
            records.append(Record(name, boolean=value, unit=unit, time=time))
    return tuple(records)
