"""SenML packs (RFC 8428, CBOR integer labels) compacted exactly as the gateway's telemetry.senml does.

A record is a dict with "name" and exactly one of "value", "string",
"boolean", "data" (or a "sum"), plus optional "unit", "time" and
"update_time". The compaction rule (docs/wire-format.md): the first record
carries bn = the longest common name prefix ending in ":", "/" or "." that
leaves every record a non-empty rest, bu when there are two or more records
and all share one unit (then no record carries u), and bt = its own time;
the other records carry t = time - bt only where it differs.
"""

BN, BT, BU = -2, -3, -4
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8

_VALUE_LABELS = (("value", V), ("string", VS), ("boolean", VB), ("data", VD), ("sum", S), ("update_time", UT))
_BASE_NAME_ENDS = ":/."


def _base_name(names):
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    shortest = min(len(name) for name in names)
    for end in range(min(len(prefix), shortest - 1), 0, -1):
        if prefix[end - 1] in _BASE_NAME_ENDS:
            return prefix[:end]
    return ""


def _check(record):
    name = record.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a SenML record needs a non-empty text name, got %r" % (record,))
    values = 0
    for field in ("value", "string", "boolean", "data"):
        if record.get(field) is not None:
            values += 1
    if values > 1 or (values == 0 and record.get("sum") is None):
        raise ValueError("SenML record %r must carry exactly one value (or a sum)" % name)


def pack(records):
    """The compacted SenML-CBOR data model (a list of label -> value maps) of records."""
    if not records:
        return []
    for record in records:
        _check(record)
    base_name = _base_name([record["name"] for record in records])
    units = set(record.get("unit") for record in records)
    base_unit = units.pop() if len(records) >= 2 and len(units) == 1 else None
    base_time = records[0].get("time")
    for record in records:
        if (record.get("time") is None) != (base_time is None):
            raise ValueError("either every record of a pack has a time or none has (a base time applies to all)")
    out = []
    for index, record in enumerate(records):
        item = {N: record["name"][len(base_name) :]}
        if index == 0:
            if base_name:
                item[BN] = base_name
            if base_unit is not None:
                item[BU] = base_unit
            if base_time is not None:
                item[BT] = base_time
        unit = record.get("unit")
        if unit is not None and base_unit is None:
            item[U] = unit
        time = record.get("time")
        if time is not None and time != base_time:
            item[T] = time - base_time
        for field, label in _VALUE_LABELS:
            value = record.get(field)
            if value is not None:
                item[label] = value
        out.append(item)
    return out
