"""A node signs envelope version 3 (its compact readings map) when its records fit the readings table, version 2 when not.

Beside test_vectors.py, not in it: each test module is compiled on the device-sized heap, and one module
holding both no longer fit beside the signing code (a MemoryError while the runner imported it).
"""

import cbor
import ed25519
import envelope
from check import equal


def test_the_node_signs_version_3_when_its_records_fit_the_readings_table_and_version_2_when_not():
    key = ed25519.SigningKey(bytes(range(32)))
    t = 1767229200
    v2 = {"counters": {"alarms": 0, "gaps": 0}, "token": bytes(12)}
    fits = [{"name": "temp", "value": 4.5, "unit": "Cel", "time": t}, {"name": "tamper", "boolean": False, "time": t}]
    raw = envelope.seal(key, "yard-17", 1, 1, bytes(16), fits, compact=True, **v2)
    payload = cbor.decode(cbor.decode(raw).value[2])
    equal(payload[envelope.VERSION], 3, "version")
    equal(payload[envelope.PACK], {0: t, 1: 4.5, 2: False}, "readings")
    equal(envelope.readings([]), {}, "no readings")
    for records in (
        [{"name": "door", "boolean": False, "time": t}],                                  # not in the table
        [{"name": "temp", "value": 4.5, "unit": "K", "time": t}],                         # another unit
        [{"name": "tamper", "string": "closed", "time": t}],                              # another kind
        [{"name": "temp", "value": 4.5, "unit": "Cel", "time": t}, {"name": "tamper", "boolean": False, "time": t + 1}],
        [{"name": "batt", "value": 3.6, "unit": "V"}, {"name": "temp", "value": 4.5, "unit": "Cel"}],  # out of order
        [{"name": "temp", "value": float("nan"), "unit": "Cel"}],
        [{"name": "temp", "value": True, "unit": "Cel"}],
    ):
        equal(envelope.readings(records), None, "%r fits" % (records,))
        equal(_sealed_or_error(key, records, True, v2), _sealed_or_error(key, records, False, v2), "version 2 instead")
    # without counters (version 1) compact changes nothing
    equal(envelope.seal(key, "yard-17", 1, 1, bytes(16), fits, compact=True), envelope.seal(key, "yard-17", 1, 1, bytes(16), fits), "v1")


def _sealed_or_error(key, records, compact, fields):
    try:
        return envelope.seal(key, "yard-17", 1, 1, bytes(16), records, compact=compact, **fields)
    except ValueError as error:
        return "ValueError: %s" % error
