"""Envelopes signed by the firmware under MicroPython are the gateway's bytes exactly, and PyNaCl and the lender's verifier accept them."""
from __future__ import annotations

import json
import struct

import nacl.signing
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.chain import check_chain
from telemetry.envelope import GENESIS, Counters, Gap, seal, verify
from telemetry.envelope import decode as decode_envelope
from telemetry.identity import DeviceKey, Identity
from telemetry.senml import Record

T0 = 1767225600


def _ask(run_micropython, requests: list[dict]) -> list[dict]:
    stdin = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    result = run_micropython("firmware/tests/sign_requests.py", stdin=stdin)
    assert result.returncode == 0, f"firmware signer failed under MicroPython:\n{result.stdout}{result.stderr}"
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(requests), result.stdout + result.stderr
    return answers


def _wire(value):
    # Floats cross as their exact 64 bits: no decimal parser between the two interpreters.
    if isinstance(value, float):
        return {"float64_hex": struct.pack(">d", value).hex()}
    return value


def _record_json(record: Record) -> dict:
    out: dict = {"name": record.name}
    for field in ("value", "string", "boolean", "sum", "unit", "time"):
        value = getattr(record, field)
        if value is not None:
            out[field] = _wire(value)
    if record.data is not None:
        out["data_hex"] = record.data.hex()
    return out


seeds = st.binary(min_size=32, max_size=32)
names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
numbers = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False, width=64))


@st.composite
def records(draw, timed: bool):
    prefix = draw(st.sampled_from(["", "site/a/", "urn:dev:ow:10e2073a:"]))
    kind = draw(st.sampled_from(["value", "boolean", "string", "data", "sum"]))
    fields: dict = {}
    if kind == "value":
        fields["value"] = draw(numbers)
        fields["unit"] = draw(st.sampled_from([None, "Cel", "V", "%RH", "kg"]))
    elif kind == "boolean":
        fields["boolean"] = draw(st.booleans())
    elif kind == "string":
        fields["string"] = draw(st.text(max_size=12))
    elif kind == "data":
        fields["data"] = draw(st.binary(max_size=12))
    else:
        fields["sum"] = draw(st.integers(0, 10**6))
        fields["unit"] = "s"
    if timed:
        fields["time"] = T0 + draw(st.integers(0, 86400))
    return Record(prefix + draw(names), **fields)


@st.composite
def packs(draw):
    timed = draw(st.booleans())
    return draw(st.lists(records(timed), max_size=4, unique_by=lambda r: r.name))


@settings(max_examples=4)
@given(st.lists(st.tuples(seeds, st.binary(max_size=300)), min_size=25, max_size=25))
def test_firmware_signatures_are_pynacls_for_random_keys_and_messages(run_micropython, cases):
    answers = _ask(run_micropython, [{"op": "sign", "seed_hex": s.hex(), "message_hex": m.hex()} for s, m in cases])
    for (seed, message), answer in zip(cases, answers):
        key = nacl.signing.SigningKey(seed)
        assert answer["public_key_hex"] == bytes(key.verify_key).hex()
        assert answer["signature_hex"] == key.sign(message).signature.hex()


envelope_fields = st.fixed_dictionaries({
    "seed": seeds,
    "device": st.from_regex(r"node-[a-z0-9]{1,12}", fullmatch=True),
    "boot": st.integers(0, 2**64 - 1),
    "seq": st.integers(0, 2**64 - 1),
    "prev": st.binary(min_size=16, max_size=16),
    "records": packs(),
    "gap": st.none() | st.builds(Gap, st.sampled_from(["overflow", "power-loss"]), st.none() | st.integers(0, 2**32), st.none(),
                                 st.none() | st.integers(1, 1000), st.none() | st.integers(0, 2**32 - 1),
                                 st.none() | st.integers(0, 2**32 - 1)),
    # version 2: signed counters, and the lender token and enrollment binding when the node holds them
    "v2": st.none() | st.fixed_dictionaries({
        "counters": st.builds(Counters, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
        "token": st.none() | st.binary(min_size=12, max_size=12),
        "binding": st.none() | st.binary(min_size=8, max_size=8),
    }),
})


@settings(max_examples=4)
@given(st.lists(envelope_fields, min_size=20, max_size=20))
def test_firmware_envelopes_are_the_gateways_bytes_and_verify_at_the_lender(run_micropython, cases):
    requests = []
    for case in cases:
        request = {
            "op": "seal", "seed_hex": case["seed"].hex(), "device": case["device"], "boot": case["boot"],
            "seq": case["seq"], "prev_hex": case["prev"].hex(), "records": [_record_json(r) for r in case["records"]],
        }
        if case["gap"] is not None:
            gap = case["gap"]
            request["gap"] = {k: v for k, v in (("reason", gap.reason), ("first", gap.first), ("count", gap.count),
                                                ("queued", gap.queued), ("alarms_dropped", gap.alarms_dropped))
                              if v is not None}
        v2 = case["v2"]
        if v2 is not None:
            request["counters"] = {"alarms": v2["counters"].alarms, "gaps": v2["counters"].gaps}
            for name in ("token", "binding"):
                if v2[name] is not None:
                    request[name + "_hex"] = v2[name].hex()
        requests.append(request)
    for case, answer in zip(cases, _ask(run_micropython, requests)):
        raw = bytes.fromhex(answer["envelope_hex"])
        identity = Identity(case["seed"])
        expected = seal(identity, device=case["device"], boot=case["boot"], seq=case["seq"], prev=case["prev"],
                        records=case["records"], gap=case["gap"], **(case["v2"] or {}))
        assert raw == expected.raw
        verdict = verify(raw, {identity.kid: DeviceKey(case["device"], identity.public_key)})
        assert verdict.ok, verdict.detail


def test_a_chain_sealed_by_the_firmware_is_intact_for_the_lender(run_micropython):
    seed = bytes(range(32))
    reports = [[{"name": "temp", "value": {"float64_hex": struct.pack(">d", 4.5 + i).hex()}, "unit": "Cel", "time": T0 + 900 * i},
                {"name": "tamper", "boolean": False, "time": T0 + 900 * i}] for i in range(6)]
    (answer,) = _ask(run_micropython, [{"op": "chain", "seed_hex": seed.hex(), "device": "node-7", "boot": 2, "first_seq": 1, "reports": reports}])
    envelopes = [decode_envelope(bytes.fromhex(h)) for h in answer["envelopes_hex"]]
    assert [e.seq for e in envelopes] == [1, 2, 3, 4, 5, 6]
    assert envelopes[0].prev == GENESIS
    report = check_chain(envelopes)
    assert report.intact and report.count == 6, report.problems
    # and a deleted envelope is visible to the lender
    assert not check_chain(envelopes[:2] + envelopes[3:]).intact
