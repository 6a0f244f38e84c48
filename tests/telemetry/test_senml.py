"""SenML packs: base-value compaction on the way out, resolution and validation on the way in (RFC 8428)."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from telemetry import cbor
from telemetry.exc import SenMLError
from telemetry.senml import (
    BN, BT, BU, BV, BS, N, S, T, U, UNITS, UT, V, Record, check_name, encode_pack, pack_to_cbor, records_from_cbor,
)

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9\-:./_]{0,20}\Z")
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
times = st.integers(0, 2**33)


@st.composite
def records(draw, time):
    kind = draw(st.sampled_from(["value", "string", "boolean", "data", "sum"]))
    field = {
        "value": numbers, "string": st.text(max_size=20), "boolean": st.booleans(), "data": st.binary(max_size=20), "sum": numbers,
    }[kind]
    unit = draw(st.none() | st.sampled_from(sorted(UNITS)))
    return Record(draw(names), unit=unit, time=time, **{kind: draw(field)})


@st.composite
def packs(draw):
    base = draw(st.none() | times)
    offsets = draw(st.lists(st.integers(0, 1000), min_size=1, max_size=6))
    prefix = draw(st.sampled_from(["", "urn:dev:mac:0024befffe804ff1:", "site/7/", "gw.", "a:b/"]))
    out = []
    for offset in offsets:
        record = draw(records(None if base is None else base + offset))
        out.append(Record(**{**{k: getattr(record, k) for k in record.__slots__}, "name": prefix + record.name}))
    return out


@settings(max_examples=1500)
@given(packs())
def test_every_pack_round_trips_through_cbor(pack):
    wire = cbor.encode(pack_to_cbor(pack))
    assert records_from_cbor(cbor.decode(wire)) == tuple(pack)
    # the envelope's direct encoder writes the same bytes, and the encoder copies them as they are
    assert encode_pack(pack) == wire
    assert cbor.encode({5: encode_pack(pack)}) == cbor.encode({5: pack_to_cbor(pack)})


@settings(max_examples=1000)
@given(st.lists(st.dictionaries(st.integers(-7, 9) | st.text(max_size=3), st.integers() | st.text(max_size=4) | st.booleans() | st.binary(max_size=3) | st.floats(), max_size=6), max_size=4))
def test_arbitrary_maps_either_resolve_or_raise_senml_error(pack):
    try:
        resolved = records_from_cbor(pack)
    except SenMLError:
        return
    for record in resolved:
        check_name(record.name)


def test_compaction_uses_base_name_unit_and_time():
    pack = [Record("urn:dev:ow:1:temp", value=20, unit="Cel", time=100), Record("urn:dev:ow:1:hum", value=3, unit="Cel", time=105)]
    first, second = pack_to_cbor(pack)
    assert first == {BN: "urn:dev:ow:1:", N: "temp", BU: "Cel", BT: 100, V: 20}
    assert second == {N: "hum", T: 5, V: 3}


def test_base_value_and_base_sum_resolve_per_rfc8428_section_4_6():
    pack = [{BN: "m:", BV: 100, BS: 10, N: "a", V: 1, S: 2}, {N: "b", V: 2}]
    a, b = records_from_cbor(pack)
    assert (a.name, a.value, a.sum, b.name, b.value) == ("m:a", 101, 12, "m:b", 102)


@pytest.mark.parametrize("name", ["", "-temp", "temp!", "t emp", "tëmp", "_x"])
def test_names_outside_rfc8428_characters_are_refused(name):
    with pytest.raises(SenMLError, match="invalid"):
        Record(name, value=1)


def test_units_must_come_from_the_senml_registry():
    with pytest.raises(SenMLError, match="registry"):
        Record("temp", value=1, unit="degC")
    assert Record("run", sum=3600, unit="s").unit == "s"


@pytest.mark.parametrize("fields, message", [
    ({}, "neither a value nor a sum"),
    ({"value": 1, "string": "x"}, "exactly one"),
    ({"value": True}, "number"),
    ({"string": 5}, "string must be str"),
])
def test_records_need_exactly_one_well_typed_value(fields, message):
    with pytest.raises(SenMLError, match=message):
        Record("x", **fields)


def test_newer_senml_versions_and_must_understand_fields_are_refused():
    with pytest.raises(SenMLError, match="version"):
        records_from_cbor([{-1: 11, 0: "x", 2: 1}])
    with pytest.raises(SenMLError, match="must-understand"):
        records_from_cbor([{0: "x", 2: 1, "foo_": 1}])
    with pytest.raises(SenMLError, match="array"):
        records_from_cbor({0: "x"})


def test_a_pack_mixing_timed_and_untimed_records_is_refused_at_encode():
    for encoder in (pack_to_cbor, encode_pack):
        with pytest.raises(ValueError, match="time"):
            encoder([Record("a", value=1, time=5), Record("b", value=1)])


@settings(max_examples=400)
@given(label=st.sampled_from([V, S, T, UT, BV, BS, BT]),
       number=st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats(allow_nan=True, allow_infinity=True),
       name=names)
def test_a_number_that_is_not_finite_once_resolved_is_refused(label, number, name):
    item = {N: name, label: number}
    if label not in (V, S):
        item[V] = 1.0  # a record carries a value besides the number under test
    if label in (BV, BS):
        item[{BV: V, BS: S}[label]] = 0.5
    if math.isfinite(number):
        records_from_cbor(cbor.decode(cbor.encode([item])))
        return
    with pytest.raises(SenMLError, match="not a finite number"):
        records_from_cbor(cbor.decode(cbor.encode([item])))


def test_a_sum_of_finite_base_and_value_that_overflows_is_refused():
    with pytest.raises(SenMLError, match="value is inf"):
        records_from_cbor([{BV: 1.5e308, N: "x", V: 1.5e308}])
