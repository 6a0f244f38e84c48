"""Envelope version 3, a node's compact envelope: the readings map of telemetry.nodereadings in place of SenML."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry import cbor, nodereadings
from telemetry.envelope import CURRENT_VERSION, NODE_VERSION, Counters, Envelope, decode, seal, verify
from telemetry.exc import SchemaError
from telemetry.identity import Identity
from telemetry.senml import Record

T = 1767229200
NODE = Identity(bytes(range(32)))
TYPICAL = [Record("temp", value=4.5, unit="Cel", time=T), Record("tamper", boolean=False, time=T),
           Record("batt", value=3.599609375, unit="V", time=T)]


def sealed(records, *, compact=True, **fields) -> Envelope:
    return seal(NODE, device="yard-17", boot=3, seq=41, prev=bytes(16), records=records,
                counters=fields.pop("counters", Counters(2, 1)), token=bytes(range(12)), binding=bytes(range(8)),
                compact=compact, **fields)


def resealed_payload(envelope: Envelope, change) -> bytes:
    """The envelope's payload map with `change` applied, signed again (a signer that wrote it so)."""
    from telemetry.cose import sig_structure

    body = cbor.decode(envelope.payload)
    change(body)
    payload = cbor.encode(body)
    signature = NODE.sign(sig_structure(envelope.protected, payload))
    return cbor.encode(cbor.Tag(18, [envelope.protected, {}, payload, signature]))


def test_the_typical_report_is_33_bytes_smaller_and_decodes_to_the_same_records_and_counters():
    v2, v3 = sealed(TYPICAL, compact=False), sealed(TYPICAL)
    assert (v2.version, v3.version) == (CURRENT_VERSION, NODE_VERSION) == (2, 3)
    assert (len(v2.raw), len(v3.raw)) == (199, 166)
    assert cbor.decode(v3.payload)[5] == {0: T, 1: 4.5, 2: False, 4: 3.599609375}
    assert (cbor.decode(v2.payload)[9], cbor.decode(v3.payload)[9]) == ({1: 2, 2: 1}, [2, 1])
    decoded = decode(v3.raw)
    assert decoded.records == decode(v2.raw).records == tuple(TYPICAL)
    assert (decoded.counters, decoded.token, decoded.binding) == (Counters(2, 1), bytes(range(12)), bytes(range(8)))
    assert verify(v3.raw, {NODE.kid: NODE.device_key("yard-17")}).ok


def test_every_reading_of_the_table_round_trips_with_and_without_a_time():
    for time in (T, None):
        records = [Record(name, value=1.5, unit=unit, time=time) if kind == nodereadings.VALUE
                   else Record(name, boolean=True, time=time)
                   for _, (name, unit, kind) in sorted(nodereadings.NODE_READINGS.items())]
        assert decode(sealed(records).raw).records == tuple(records)
    assert decode(sealed([]).raw).records == ()


@given(st.lists(st.sampled_from(sorted(nodereadings.NODE_READINGS)), unique=True),
       st.one_of(st.none(), st.integers(0, 2 ** 32)), st.floats(allow_nan=False, allow_infinity=False, width=16))
def test_any_fitting_readings_round_trip(numbers, time, value):
    records = []
    for number in sorted(numbers):
        name, unit, kind = nodereadings.NODE_READINGS[number]
        records.append(Record(name, value=value, unit=unit, time=time) if kind == nodereadings.VALUE
                       else Record(name, boolean=value > 0, time=time))
    assert nodereadings.from_cbor(cbor.decode(cbor.encode(nodereadings.to_cbor(records)))) == tuple(records)


@pytest.mark.parametrize("records", [
    [Record("door", boolean=False, time=T)],                                       # not in the table
    [Record("temp", value=4.5, unit="K", time=T)],                                 # another unit
    [Record("temp", value=4.5, time=T)],                                           # no unit
    [Record("tamper", string="closed", time=T)],                                   # another kind
    [Record("temp", sum=4.5, unit="Cel", time=T)],                                 # a sum
    [Record("temp", value=4.5, unit="Cel", time=T, update_time=60)],               # an update time
    [Record("temp", value=4.5, unit="Cel", time=T), Record("tamper", boolean=False, time=T + 1)],  # two times
    [Record("temp", value=4.5, unit="Cel"), Record("tamper", boolean=False, time=T)],              # one without
    [Record("batt", value=3.6, unit="V", time=T), Record("temp", value=4.5, unit="Cel", time=T)],  # out of order
    [Record("temp", value=4.5, unit="Cel", time=T), Record("temp", value=5.0, unit="Cel", time=T)],  # twice
    [Record("temp", value=float("nan"), unit="Cel", time=T)],                      # not finite
])
def test_records_that_do_not_fit_are_refused_by_the_signer(records):
    assert not nodereadings.fits(records)
    with pytest.raises(ValueError):
        sealed(records)


def test_version_3_needs_the_counters_of_version_2():
    with pytest.raises(ValueError, match="counters"):
        seal(NODE, device="yard-17", boot=1, seq=1, prev=bytes(16), records=TYPICAL, compact=True)


@pytest.mark.parametrize("readings, why", [
    ([{0: "temp", 2: 4.5}], "must be a map"),                 # a SenML pack under version 3
    ({0: T}, "a time (0) with no reading"),
    ({0: "now", 1: 4.5}, "finite number"),
    ({1: 4.5, 8: 1}, "not a number of the node readings table"),
    ({1: 4.5, "batt": 3.6}, "every key is an integer"),
    ({False: T, 1: 4.5}, "every key is an integer"),
    ({True: 4.5}, "every key is an integer"),
    ({1: True}, "must be a finite number"),
    ({1: float("inf")}, "must be a finite number"),
    ({2: 0}, "must be a boolean"),
])
def test_a_signed_version_3_payload_that_is_not_node_readings_is_malformed(readings, why):
    raw = resealed_payload(sealed(TYPICAL), lambda body: body.__setitem__(5, readings))
    with pytest.raises(SchemaError, match=re.escape(why)):
        decode(raw)
    assert verify(raw, {NODE.kid: NODE.device_key("yard-17")}).reason.name == "MALFORMED"


def test_versions_other_than_1_2_and_3_are_refused_and_version_2_keeps_its_senml():
    v3 = sealed(TYPICAL)
    with pytest.raises(SchemaError, match="1, 2 or 3"):
        decode(resealed_payload(v3, lambda body: body.__setitem__(8, 4)))
    with pytest.raises(SchemaError):  # a readings map under version 2 is not a SenML pack
        decode(resealed_payload(v3, lambda body: body.__setitem__(8, 2)))
    with pytest.raises(SchemaError, match=re.escape("[alarms, gaps]")):  # version 2's counters map under version 3
        decode(resealed_payload(v3, lambda body: body.__setitem__(9, {1: 2, 2: 1})))
    for counters in ([2], [2, 1, 0], [2, -1], [2, True]):
        with pytest.raises(SchemaError, match=re.escape("[alarms, gaps]")):
            decode(resealed_payload(v3, lambda body: body.__setitem__(9, counters)))
    v2 = sealed(TYPICAL, compact=False)
    with pytest.raises(SchemaError, match=re.escape("{1: alarms, 2: gaps}")):  # and version 3's array under version 2
        decode(resealed_payload(v2, lambda body: body.__setitem__(9, [2, 1])))


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 64, 2 ** 64 - 1), st.floats(), st.text(max_size=4),
                 st.binary(max_size=4))


@given(st.one_of(st.dictionaries(st.one_of(st.integers(-3, 12), st.booleans(), st.text(max_size=2)), _ANY, max_size=8),
                 st.lists(_ANY, max_size=3), _ANY))
def test_any_signed_readings_decode_to_finite_table_records_or_are_refused_as_malformed(readings):
    raw = resealed_payload(sealed(TYPICAL), lambda body: body.__setitem__(5, readings))
    try:
        envelope = decode(raw)
    except SchemaError:
        return
    names = {name for name, _, _ in nodereadings.NODE_READINGS.values()}
    for record in envelope.records:
        assert record.name in names
        for number in (record.value, record.time):
            assert number is None or (not isinstance(number, bool) and abs(number) != float("inf") and number == number)
