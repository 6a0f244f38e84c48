"""The gateway's command inbox: only genuine, new, unexpired commands for it are applied, once, and survive SIGKILL."""
import asyncio
import os
import random
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.assets import Asset
from agent.commands import CommandInbox, rules_validator
from agent.config import parse
from agent.exc import ConfigError
from agent.rules import AccessEvent, RulesEngine, SensorSpec
from agent.spool import Spool
from drivers.onewire import DS18B20, DS18B20Config
from hil.sim.onewire import OneWireTree
from telemetry.command import (LOCAL_RULES, Command, Configure, Inspect, Outcome, Permit, config_digest,
                               configuration_rules_digest, inspection_nonce)
from telemetry.chain import check_chain
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.agent.test_agent_config import GOOD, PATH
from tests.kit.agent import build_agent, running, signed_envelopes
from tests.kit.rules import HOUR, T0, alarms, at, hours, sample

LENDER = Identity(bytes(range(32)))
BORROWER = Identity(bytes(range(1, 33)))
STORE = Asset("cold-store", "stock", ("door",), access=hours("mon-fri 07:00-18:00"))
SAT = 5 * 24 * HOUR


def signed(seq, body, *, device="gw-1", signer=LENDER, expires=T0 + 30 * 24 * 3600):
    return Command(device, seq, T0, expires, body).sign(signer).raw


def inbox(path, now=T0 + 60.0, **options):
    return CommandInbox(path, "gw-1", LENDER.public_key, clock=lambda: now, **options)


def test_an_inspection_is_answered_with_its_nonce_and_applied_once(tmp_path):
    box = inbox(tmp_path)
    answer = box.receive(signed(1, Inspect(b"\x07" * 16, ("cold-store",))))
    assert answer.outcome is Outcome.APPLIED and inspection_nonce(answer.records) == b"\x07" * 16
    assert box.receive(signed(1, Inspect(b"\x07" * 16))) is None  # the same command again: a replay
    assert inbox(tmp_path).last_seq == 1


def test_forged_misaddressed_and_expired_commands_change_nothing(tmp_path):
    box = inbox(tmp_path)
    permit = Permit("cold-store", T0, T0 + 3600, "release of goods")
    assert box.receive(signed(1, permit, signer=BORROWER)) is None
    assert box.receive(signed(1, permit, device="gw-2")) is None
    assert box.receive(signed(1, permit, expires=T0 + 1)) is None
    assert (box.last_seq, box.permits) == (0, ())
    assert not (tmp_path / "commands.json").exists()


def test_a_permit_turns_a_saturday_opening_into_an_event_inside_its_window_and_an_alarm_after(tmp_path):
    box = inbox(tmp_path, now=T0 + SAT)
    window = Permit("cold-store", int(T0 + SAT + 10 * HOUR), int(T0 + SAT + 12 * HOUR), "release of goods, C-17")
    answer = box.receive(signed(1, window))
    assert {r.name for r in answer.records} >= {"command.permit.asset", "command.permit.from", "command.permit.until"}
    restarted = inbox(tmp_path, now=T0 + SAT)  # the permit survives a restart of the agent
    rules = RulesEngine([STORE], [SensorSpec("door", "contact", 7 * 24 * HOUR)], start=at(0),
                        permits=restarted.permitted)
    inside = rules.observe([sample("door", True, SAT + 10.5 * HOUR)], at(SAT + 10.5 * HOUR))
    inside += rules.observe([sample("door", False, SAT + 10.6 * HOUR)], at(SAT + 10.6 * HOUR))
    assert [(e.name, e.state) for e in inside if isinstance(e, AccessEvent)] == [
        ("event.door.cold-store", "opened"), ("event.door.cold-store", "closed")]
    assert alarms(inside) == []
    after = rules.observe([sample("door", True, SAT + 12.5 * HOUR)], at(SAT + 12.5 * HOUR))
    assert alarms(after) == [("alarm.door.cold-store", "raised")]


def test_a_configuration_is_applied_with_its_digest_and_a_bad_one_is_refused_keeping_the_old(tmp_path):
    box = inbox(tmp_path, validate=rules_validator({"door": "contact"}))
    good = b'[rules]\n\n[[assets]]\nname = "cold-store"\nkind = "stock"\nsensors = ["door"]\n'
    answer = box.receive(signed(1, Configure(1, good)))
    assert answer.outcome is Outcome.APPLIED
    assert [r.data for r in answer.records if r.name == "command.config"] == [config_digest(good)]
    bad = b'[device]\nid = "someone-else"\n'
    refused = box.receive(signed(2, Configure(2, bad)))
    assert refused.outcome is Outcome.REFUSED
    assert "not the lender's to set" in next(r.string for r in refused.records if r.name == "command.detail")
    kept = inbox(tmp_path)
    assert (kept.config, kept.last_seq) == (good, 2)


@st.composite
def deliveries(draw):
    events = []
    for _ in range(draw(st.integers(1, 30))):
        events.append((draw(st.integers(1, 10)), draw(st.sampled_from(
            ["valid", "valid", "replayed", "expired", "forged", "other-device", "restart"]))))
    return events


def body_for(seq: int):
    """A command of each kind by seq: the inbox keeps a different state for each."""
    return (Inspect(bytes([seq]) * 8), Permit("cold-store", T0, T0 + 10**5 + seq, f"release {seq}"),
            Configure(seq, document(seq)))[seq % 3]


@settings(max_examples=60, deadline=None)
@given(deliveries())
def test_random_deliveries_and_restarts_never_apply_a_command_twice_out_of_order_or_unverified(tmp_path_factory, events):
    path = tmp_path_factory.mktemp("inbox")
    box, applied, sent = inbox(path), [], []
    for seq, how in events:
        if how == "restart":
            box = inbox(path)
            continue
        if how == "replayed":  # the exact bytes of a command delivered before (reordered when it is older)
            if not sent:
                continue
            raw = sent[seq % len(sent)]
        else:
            raw = signed(seq, body_for(seq), device="gw-2" if how == "other-device" else "gw-1",
                         signer=BORROWER if how == "forged" else LENDER,
                         expires=T0 + 30 if how == "expired" else T0 + 10**6)
            sent.append(raw)
        answer = box.receive(raw)
        if answer is not None:
            assert how == "valid"
            applied.append(answer.command.seq)
    assert applied == sorted(set(applied))
    restarted = inbox(path)
    assert restarted.last_seq == (applied[-1] if applied else 0)
    configured = [s for s in applied if s % 3 == 2]
    assert restarted.config == (document(configured[-1]) if configured else None)
    assert [p.reason for p in restarted.permits] == [f"release {s}" for s in applied if s % 3 == 1]


def document(version: int) -> bytes:
    return (f"# version {version}\n[rules]\n\n[[assets]]\nname = \"cold-store\"\nkind = \"stock\"\n"
            f"sensors = [\"door\"]\n" + "# padding\n" * 200).encode()


def test_sigkill_during_configuration_applies_leaves_exactly_one_complete_configuration(tmp_path):
    rng, reached, owed_after_kill = random.Random(15), set(), 0
    for attempt in range(100):
        path = tmp_path / str(attempt)
        path.mkdir()
        Spool.open(path / "spool.db").close()  # made before: a kill while the spool is first created is not this test's
        child = os.fork()
        if child == 0:  # the agent's command path (inbox, chain, spool), applying configurations until it is killed
            try:
                agent, box = build_agent(path, device="gw-1", recording=True), inbox(path)

                async def apply():
                    for seq in range(1, 10_000):
                        await agent.command(box, signed(seq, Configure(seq, document(seq))))

                asyncio.run(apply())
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        box = inbox(path)
        assert box.config == (document(box.last_seq) if box.last_seq else None)
        assert box.previous_config == (document(box.last_seq - 1) if box.last_seq > 1 else None)
        reached.add(box.last_seq)
        # the restarted agent: the chain resumes, signs any outcome the kill kept from it, and is intact
        agent = build_agent(path, device="gw-1", recording=True, commands=box)
        for owed in box.unreported():
            owed_after_kill += 1
            asyncio.run(agent.answer(box, owed))
        assert box.unreported() == []
        envelopes = signed_envelopes(agent) if agent.spool.head() else []
        assert check_chain(envelopes).intact
        reported = {int(r.value) for e in envelopes for r in e.records if r.name == "command.seq"}
        assert reported == set(range(1, box.last_seq + 1))  # every applied configuration, in the chain
        agent.spool.close()
    assert len(reached) > 1 and max(reached) > 0, f"no kill landed while configurations were applied: {sorted(reached)}"
    assert owed_after_kill > 0, "no kill landed between applying a configuration and signing its outcome"


def test_the_agent_answers_an_inspection_with_a_signed_snapshot_that_overtakes_the_backlog(tmp_path):
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    temp = DS18B20(DS18B20Config("temp", probe.device_id, base_dir=tree.devices_dir, interval_s=3600))
    (tmp_path / "agent").mkdir()
    agent = build_agent(tmp_path / "agent", sensors=[temp], recording=True)
    box = CommandInbox(tmp_path / "agent", agent.device, LENDER.public_key, clock=lambda: T0 + 60.0)
    for _ in range(5):  # a backlog the snapshot must overtake
        agent.record([Record("temp", value=4.5, unit="Cel")])
    probe.set_celsius(6.75)
    envelope = asyncio.run(agent.command(box, signed(1, Inspect(b"\x09" * 16), device=agent.device)))
    assert agent.spool.peek(1, 1 << 20)[0].seq == envelope.seq  # sent first, as alarms are
    assert asyncio.run(agent.command(box, signed(1, Inspect(b"\x09" * 16), device=agent.device))) is None
    (signed_snapshot,) = [e for e in signed_envelopes(agent) if e.seq == envelope.seq]
    assert inspection_nonce(signed_snapshot.records) == b"\x09" * 16
    assert ("temp", 6.75) in [(r.name, r.value) for r in signed_snapshot.records]


def test_the_config_pins_the_lenders_key_for_commands_and_refuses_a_malformed_one():
    key = LENDER.public_key.hex()
    text = GOOD.replace("[device]\n", f'[device]\nlender_key = "{key}"\n', 1)
    assert parse(text, PATH).device.lender_key == key
    with pytest.raises(ConfigError, match="lender_key"):
        parse(GOOD.replace("[device]\n", '[device]\nlender_key = "abc"\n', 1), PATH)


def test_the_lenders_configuration_in_force_gives_the_rules_at_start(tmp_path):
    box = inbox(tmp_path, validate=rules_validator({"door": "contact"}))
    assert box.configured({"door": "contact"}) is None
    box.receive(signed(1, Configure(1, b'[rules]\n\n[[assets]]\nname = "yard"\nkind = "stock"\nsensors = ["door"]\n')))
    settings, assets = inbox(tmp_path).configured({"door": "contact"})
    assert [a.name for a in assets] == ["yard"]


def test_agent_toml_is_reported_only_when_it_differs_from_the_lenders_configuration_in_force(tmp_path):
    document = b'[rules]\n\n[[assets]]\nname = "yard"\nkind = "stock"\nsensors = ["door"]\n'
    lenders = configuration_rules_digest(document)
    for local, reported in ((lenders, []), ("0" * 32, ["0" * 32])):  # copied from the lender's, or edited
        home = tmp_path / local
        home.mkdir()
        box = inbox(home)
        agent = build_agent(home, device="gw-1", recording=True, commands=box, local_rules_digest=local)
        agent.declare(agent._now())
        assert [r.string for e in signed_envelopes(agent) for r in e.records if r.name == LOCAL_RULES] == []
        assert asyncio.run(agent.command(box, signed(1, Configure(1, document)))) is not None
        assert agent.rules_digest == lenders   # the manifest declares the lender's configuration once in force
        assert [r.string for e in signed_envelopes(agent) for r in e.records if r.name == LOCAL_RULES] == reported


def test_an_outcome_a_power_cut_kept_from_the_chain_is_signed_when_the_agent_starts(tmp_path):
    box = inbox(tmp_path)
    box.receive(signed(1, Permit("cold-store", T0, T0 + 3600, "release of goods")))  # applied; the agent died here
    assert [a.command.seq for a in inbox(tmp_path).unreported()] == [1]
    agent = build_agent(tmp_path, device="gw-1", commands=inbox(tmp_path))

    async def started():
        return None

    asyncio.run(running(agent, started))
    assert [r.value for e in signed_envelopes(agent) for r in e.records if r.name == "command.seq"] == [1]
    assert inbox(tmp_path).unreported() == []
