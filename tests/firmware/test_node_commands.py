"""The lender's signed commands reach an NB-IoT node in the ack to its report (issue 15), end to end.

Real firmware under MicroPython (precompiled, 128 KB heap) behind a simulated
BC66 whose UDP reaches the real lender on 127.0.0.1, under OSCORE: the lender
issues a command (lender.evidence.CommandDesk), hands it out in the ack to the
node's next report (ack key 7), the node verifies it against the lender key
pinned in its node.json, applies it and answers in the envelope of its next
wake, which the lender reads back as the device's signed answer.
"""
from __future__ import annotations

import json
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.sim.models import bc66
from hil.sim.modem import ModemSimulator
from lender.evidence.commands import answers_at_next_wake
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from telemetry.command import Command, Configure, Inspect, Permit, inspection_nonce
from telemetry.envelope import decode as decode_envelope
from telemetry.identity import Identity
from tests.firmware.conftest import FIRMWARE, HEAPSIZE, NODE_DEVICE

DEEPSLEEP_RESET = 4


def _desk(lender, store) -> CommandDesk:
    return CommandDesk(store, lender_identity(lender.data_dir))


def _node(make_node, lender):
    return make_node("bc66", lender_key=lender_identity(lender.data_dir).public_key.hex())


def _records(lender, seq) -> dict[str, object]:
    with lender.store() as store:
        stored = store.envelope(NODE_DEVICE, seq)
    return {r.name: next(v for v in (r.value, r.string, r.boolean, r.data) if v is not None)
            for r in decode_envelope(stored.raw).records}


def _wakes(node, sim, plan: list[dict], heapsize: str = HEAPSIZE) -> list[dict]:
    """Each wake in its own MicroPython process: a device's heap starts afresh at every wake from deep sleep."""
    return [node.run(sim.path, [cycle], heapsize)[0] for cycle in plan]


def test_an_inspection_is_answered_by_the_node_at_its_next_wake_with_the_nonce(make_node, lender):
    node = _node(make_node, lender)
    with ModemSimulator(bc66.MODEL) as sim:
        (first,) = node.run(sim.path, [{}])
        with lender.store() as store:
            issued = _desk(lender, store).inspect(NODE_DEVICE, "staff-ana")
            assert answers_at_next_wake(store, NODE_DEVICE), "a node: `lender inspect` says it answers at its next wake"
        delivered, applied, answered = _wakes(node, sim, [{"reset_cause": DEEPSLEEP_RESET}] * 3)
        # The snapshot (~340 B, twice a report) has about 4 KB of margin in the 128 KB heap (none of 756 command wakes
        # met a MemoryError since 9d5cda3, one in five before; docs/firmware.md). Should one come, it costs that wake's
        # sends and nothing else: the snapshot goes at the next wake.
        retries = []
        while not answered["report"]["acked"] and len(retries) < 2:
            assert [e for e in answered["report"]["errors"] if "MemoryError" not in e] == [], answered["report"]
            retries.append(answered)
            (answered,) = _wakes(node, sim, [{"reset_cause": DEEPSLEEP_RESET}])
    assert first["report"]["acked"] == [1] and "command_kept" not in first["report"]
    # the ack to report 2 carried the command: kept in flash, and the node wakes again at once
    assert delivered["report"]["command_kept"] == len(issued.raw) and delivered["sleep_ms"] == 1000, delivered
    # that wake verifies and applies it, and nothing else; the next one signs the snapshot
    assert applied["report"]["command"] == {"seq": issued.seq, "kind": "inspect", "outcome": "applied"}, applied
    assert "seq" not in applied["report"] and applied["sleep_ms"] == 1000
    snapshot_seq = (retries[0] if retries else answered)["report"]["seq"]
    assert snapshot_seq == 3 and (retries[0] if retries else answered)["report"]["answered"] == issued.seq
    assert snapshot_seq in answered["report"]["acked"] and not answered["report"]["errors"], answered["report"]
    with lender.store() as store:
        desk = _desk(lender, store)
        answer = desk.snapshot(issued)
        assert answer is not None and (answer.outcome, answer.seq) == ("applied", snapshot_seq)
        assert [c.delivered_at is not None for c in store.issued_commands(NODE_DEVICE)] == [True]
        assert desk.pending(NODE_DEVICE) == []
        envelope = decode_envelope(store.envelope(NODE_DEVICE, 3).raw)
    assert inspection_nonce(envelope.records) == issued.nonce
    assert {"temp", "tamper", "batt"} <= {r.name for r in envelope.records}, "every sensor sampled for the snapshot"


def _checked(result: dict) -> dict:
    """A wake's result, whose only errors may be MemoryErrors while sending: with ~4 KB of margin in the 128 KB heap a
    permit or configure in an ack, or an answer, has met none in 756 wakes (one in five before 9d5cda3,
    docs/firmware.md); should one come, it costs that wake's sends, which go at the next."""
    errors = result["report"]["errors"] if result["report"] else ["no report"]
    assert all(": MemoryError:" in e and e.startswith("delivery of seq") for e in errors), errors
    return result


def _wake_until(node, sim, wake: dict, done, limit: int = 12) -> list[dict]:
    """Wake the node until done(last result) holds; every wake's result."""
    results = []
    while len(results) < limit:
        results.append(_checked(_wakes(node, sim, [wake])[0]))
        if done(results[-1]):
            return results
    raise AssertionError(f"not done in {limit} wakes: {[r['report'] for r in results]}")


def _stored(lender, seq: int) -> bool:
    with lender.store() as store:
        return store.envelope(NODE_DEVICE, seq) is not None


def test_a_permit_turns_an_opening_into_an_event_inside_its_window_and_a_configuration_is_applied(make_node, lender):
    node = _node(make_node, lender)
    now = int(time.time())
    later = Permit("loan-2026-117", now + 3600, now + 7200, "release of goods, contract C-17", ("tamper",))
    current = Permit("loan-2026-117", now - 60, now + 3600, "release of goods, contract C-17", ())
    good = b"[sampling]\ninterval_s = 600\n[rules]\ntilt_alarm_deg = 20.0\n"
    bad = b"[sampling]\ninterval_s = 5\n[modem]\napn = \"x\"\n"
    wake, opened = {"reset_cause": DEEPSLEEP_RESET}, {"reset_cause": DEEPSLEEP_RESET, "tamper": 1}
    issued, wakes, then = [], [], []
    with ModemSimulator(bc66.MODEL) as sim:
        node.run(sim.path, [{}])
        for body, next_wake in ((later, opened), (current, opened), (Configure(1, good), wake),
                                (Configure(2, bad), wake)):
            with lender.store() as store:
                command = _desk(lender, store).issue(NODE_DEVICE, body, "staff-ana")
            issued.append(command)

            def answered(result, command=command):
                with lender.store() as store:
                    return _desk(lender, store).snapshot(command) is not None

            wakes.append(_wake_until(node, sim, wake, answered))
            # then a whole wake with the command in force (a wake that only applies a resent copy does not count)
            then.append(_wake_until(node, sim, next_wake, lambda r: "seq" in r["report"])[-1])
            _wake_until(node, sim, wake, lambda r, seq=then[-1]["report"]["seq"]: _stored(lender, seq))
    first, second, configured, refused = issued
    # every command: kept from an ack, applied once on a wake of its own, answered in a later envelope
    for command, results in zip(issued, wakes):
        reports = [r["report"] for r in results]
        applied = [r["command"] for r in reports if "outcome" in r.get("command", {})]
        assert [c["seq"] for c in applied] == [command.seq], reports
        assert any(r.get("answered") == command.seq for r in reports), reports
    # outside the first permit's window the opening is an alarm; inside the second's, a signed event
    outside, inside = (_records(lender, t["report"]["seq"]) for t in then[:2])
    assert then[0]["report"]["alarm"] is True and outside["alarm.tamper"] is True
    assert then[1]["report"]["alarm"] is False and inside["event.tamper"] is True and "alarm.tamper" not in inside
    # the configuration: applied (the node sleeps its new interval), the bad one refused with its errors
    assert then[2]["sleep_ms"] == 600 * 1000 and then[3]["sleep_ms"] == 600 * 1000
    with lender.store() as store:
        answers = _desk(lender, store).answers(NODE_DEVICE)
    assert {answers[c.digest].outcome for c in (first, second, configured)} == {"applied"}
    assert answers[refused.digest].outcome == "refused" and "interval_s" in answers[refused.digest].detail
    refusal = _records(lender, answers[refused.digest].seq)
    assert refusal["command.config"] == Configure(1, good).digest, "the configuration in force is still the good one"
    assert _records(lender, answers[second.digest].seq)["command.digest"] == second.digest


def test_the_commands_suite_passes_under_micropython_in_its_own_device_sized_heap(run_micropython):
    result = run_micropython("firmware/tests/run.py", "--suite=commands")
    assert result.returncode == 0 and result.stdout.rstrip().endswith("7 passed, 0 failed"), result.stdout + result.stderr


# --- generated command sequences against the firmware (hypothesis drives the MicroPython runner) -----------------

DRIVER = FIRMWARE / "tests" / "drive_commands.py"
LENDER = Identity(bytes(range(100, 132)))
OTHER = Identity(bytes(range(1, 33)))
NOW = 1767229200

STEP = st.sampled_from(["valid", "valid", "valid", "replayed", "expired", "forged", "other-device", "other-key",
                        "restart", "cut"])


def _sign(seq: int, key: Identity = LENDER, device: str = NODE_DEVICE, expires: int = NOW + 600) -> bytes:
    return Command(device, seq, NOW - 60, expires, Inspect(seq.to_bytes(16, "big"))).sign(key).raw


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=4, max_size=14), gaps=st.lists(st.integers(1, 3), min_size=14, max_size=14))
def test_random_command_sequences_with_restarts_and_power_cuts_apply_each_verified_command_once_in_order(
        steps, gaps, run_micropython, tmp_path_factory):
    issued: list[tuple[int, bytes]] = []
    plan, kinds = [], []
    for index, step in enumerate(steps):
        seq = (issued[-1][0] if issued else 0) + gaps[index]
        if step in ("valid", "cut"):
            raw = _sign(seq)
            issued.append((seq, raw))
        elif step == "replayed" and issued:
            seq, raw = issued[index % len(issued)]
        elif step == "expired":
            raw = _sign(seq, expires=NOW)
        elif step == "forged":
            raw = bytearray(_sign(seq))
            raw[index * 7 % len(raw)] ^= 0x10
            raw = bytes(raw)
        elif step == "other-device":
            raw = _sign(seq, device="yard-18")
        elif step == "other-key":
            raw = _sign(seq, key=OTHER)
        else:
            plan.append({"restart": True})
            kinds.append(("restart", 0))
            continue
        plan.append({"command": raw.hex(), "cut": step == "cut"})
        kinds.append((step, seq))
    root = tmp_path_factory.mktemp("commands")
    request = json.dumps({"root": str(root), "device": NODE_DEVICE, "lender_key": LENDER.public_key.hex(), "now": NOW,
                          "steps": plan})
    result = run_micropython(str(DRIVER), stdin=request)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    last = 0
    for (step, seq), got in zip(kinds, outcome["results"], strict=True):
        if step in ("expired", "forged", "other-device", "other-key", "restart"):
            assert got is None, (step, seq, got)
        elif step in ("valid", "replayed"):
            # a replay is refused unless its command never took (cut before its save): then it is new to the node
            assert got == (seq if seq > last else None), (step, seq, last, got)
        else:  # cut during the save: the state before it or after it, never between
            assert got in ((seq, None) if seq > last else (None,)), (step, seq, last, got)
        last = got or last
    assert outcome["last_seq"] == last
