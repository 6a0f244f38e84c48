"""Signs and seals on request for the CPython cross-checks: reads JSON lines on stdin, answers one JSON line each.

Requests (floats travel as {"float64_hex": ...} so no decimal parsing stands between
the two interpreters; byte strings as hex):
  {"op": "sign", "seed_hex", "message_hex"}          -> {"public_key_hex", "signature_hex"}
  {"op": "seal", "seed_hex", "device", "boot", "seq", "prev_hex", "records", "gap"?,
   "counters"?, "token_hex"?, "binding_hex"?}  (counters: a version 2 envelope)
                                                      -> {"envelope_hex"}
  {"op": "chain", "seed_hex", "device", "boot", "first_seq", "reports": [records, ...]}
                                                      -> {"envelopes_hex": [...]} linked from genesis
"""

import json
import struct
import sys

import ed25519
import envelope
from check import tohex, unhex


def _value(item):
    if isinstance(item, dict) and "float64_hex" in item:
        return struct.unpack(">d", unhex(item["float64_hex"]))[0]
    return item


def _records(items):
    records = []
    for item in items:
        record = {}
        for name, value in item.items():
            if name == "data_hex":
                record["data"] = unhex(value)
            else:
                record[name] = _value(value)
        records.append(record)
    return records


def answer(request):
    key = ed25519.SigningKey(unhex(request["seed_hex"]))
    op = request["op"]
    if op == "sign":
        return {"public_key_hex": tohex(key.public_key), "signature_hex": tohex(key.sign(unhex(request["message_hex"])))}
    if op == "seal":
        raw = envelope.seal(
            key, request["device"], request["boot"], request["seq"], unhex(request["prev_hex"]),
            _records(request["records"]), gap=request.get("gap"), counters=request.get("counters"),
            token=unhex(request["token_hex"]) if "token_hex" in request else None,
            binding=unhex(request["binding_hex"]) if "binding_hex" in request else None,
        )
        return {"envelope_hex": tohex(raw)}
    if op == "chain":
        prev = envelope.GENESIS
        out = []
        for offset, records in enumerate(request["reports"]):
            raw = envelope.seal(key, request["device"], request["boot"], request["first_seq"] + offset, prev, _records(records))
            prev = envelope.digest(raw)
            out.append(tohex(raw))
        return {"envelopes_hex": out}
    raise ValueError("unknown op %r" % op)


while True:
    line = sys.stdin.readline()
    if not line:
        break
    print(json.dumps(answer(json.loads(line))))
