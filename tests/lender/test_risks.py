"""What the borrower does to hide an event leaves the lender in a named, non-OK state; an honest gateway stays OK.

Every story runs through the real lender: a `SQLiteStore` on disk, `Ingest`
verifying real Ed25519 signatures and the chain, tokens from its acks, the
site record in DATA/enroll/sites, and `python -m pledgewatch lender status
--json` for the interface tools read (tests.kit.pledge).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lender.evidence.store import Review
from telemetry.ack import Reason
from telemetry.envelope import GENESIS, Counters, GapReason, seal
from telemetry.freshness import issue_token
from telemetry.senml import Record
from tests.kit.pledge import ASSET, SITE_RECORD, PledgeLender, site_digest


@pytest.fixture
def lender(tmp_path):
    opened = PledgeLender(tmp_path / "lender")
    yield opened
    opened.close()


def started(lender: PledgeLender, name: str = "gw-1", **options):
    """A gateway that signed its manifest at start and got its first token back."""
    gateway = lender.gateway(name, **options)
    ack = lender.deliver(gateway, gateway.manifest())
    assert ack.stored == (1,) and gateway.token is not None
    return gateway


def kinds_of(asset: dict) -> list[str]:
    return [r["kind"] for r in asset["risks"]]


# --- an honest gateway ---------------------------------------------------------------------------

def test_an_honest_gateway_stays_ok_through_readings_alarms_and_heartbeats(lender):
    gateway = started(lender)
    for _ in range(3):
        lender.now += 20
        lender.deliver(gateway, gateway.reading())
    lender.now += 5
    for envelope in gateway.door_opened_and_closed():
        assert lender.deliver(gateway, envelope).stored == (envelope.seq,)
    lender.now += 60
    lender.deliver(gateway, gateway.heartbeat())

    assert lender.risks(gateway) == []
    assert lender.states(gateway) == {"OK"}


def test_an_ordinary_reboot_is_no_risk(lender):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reading(), *gateway.door_opened_and_closed())
    lender.now += 30
    lender.deliver(gateway, gateway.reboot(), gateway.reading())
    lender.now += 30
    lender.deliver(gateway, gateway.heartbeat())

    assert [e.boot for e in lender.store.envelopes(gateway.name)] == [1, 1, 1, 1, 2, 2, 2]
    assert lender.risks(gateway) == []
    assert lender.states(gateway) == {"OK"}


def test_a_short_outage_delivered_later_alarms_first_ends_ok(lender):
    gateway = started(lender)
    held = []
    for _ in range(2):               # the uplink is down: everything waits in the spool
        lender.now += 25
        held.append(gateway.reading())
    lender.now += 10
    alarms = gateway.door_opened_and_closed()
    lender.now += 25
    held += [gateway.reading(), gateway.heartbeat()]

    lender.now += 30                  # back online: alarms overtake the backlog
    lender.deliver(gateway, *alarms)
    assert "OK" not in lender.states(gateway)   # seqs still missing, for now
    lender.deliver(gateway, *reversed(held))

    assert lender.risks(gateway) == []
    assert lender.states(gateway) == {"OK"}


def test_the_status_command_shows_an_honest_gateway_ok_with_no_risks(tmp_path):
    lender = PledgeLender(tmp_path / "lender", now=time.time() - 30)   # `lender status` judges at the real time
    try:
        gateway = started(lender, heartbeat_s=300.0)
        lender.deliver(gateway, gateway.reading(), *gateway.door_opened_and_closed(), gateway.heartbeat())
        statuses = lender.status_json()
    finally:
        lender.close()
    assert {(s["asset"], s["state"]) for s in statuses} == {(ASSET, "OK"), ("gateway", "OK")}
    assert all(s["risks"] == [] for s in statuses)


# --- gap: a gap the device declares is a risk until a person reviews it -------------------------------------

@pytest.mark.parametrize("reason", [GapReason.OVERFLOW, GapReason.POWER_LOSS, GapReason.SPOOL_RESET])
def test_a_signed_gap_record_is_a_risk_that_names_its_seq(lender, reason):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reading())
    if reason is GapReason.SPOOL_RESET:   # the spool is gone: the chain restarts from genesis above every used seq
        gateway.prev = GENESIS
        gateway.seq = 1000
        record = gateway.gap(reason.value, first=3, last=1000)
    elif reason is GapReason.OVERFLOW:
        dropped = [gateway.reading() for _ in range(3)]
        record = gateway.gap(reason.value, first=dropped[0].seq, last=dropped[-1].seq, queued=4000, alarms_dropped=0)
    else:
        gateway.boot += 1
        record = gateway.gap(reason.value)
    lender.deliver(gateway, record, gateway.heartbeat())

    gaps = [r for r in lender.risks(gateway) if r.kind == "gap"]
    assert [r.seq for r in gaps] == [record.seq]
    assert reason.value in gaps[0].detail
    assert [r.kind for r in lender.risks(gateway)] == ["gap"]
    assert lender.states(gateway) == {"GAPS"}


def test_seqs_missing_with_no_gap_record_are_a_gap_risk(lender):
    gateway = started(lender)
    gateway.reading()                  # signed, never delivered, and nothing explains it
    lender.deliver(gateway, gateway.reading())

    (gap,) = lender.risks(gateway)
    assert gap.kind == "gap" and "no signed gap record" in gap.detail
    assert lender.states(gateway) == {"GAPS"}


def test_an_overflow_record_that_claims_it_dropped_an_alarm_is_itself_suspect(lender):
    gateway = started(lender)
    dropped = gateway.reading()
    record = gateway.gap(GapReason.OVERFLOW.value, first=dropped.seq, last=dropped.seq, queued=4096, alarms_dropped=1)
    lender.deliver(gateway, record)

    lost = [r for r in lender.risks(gateway) if r.kind == "alarm-lost"]
    assert [(r.seq, "1 alarm(s)" in r.detail) for r in lost] == [(record.seq, True)]
    assert lender.states(gateway) == {"RISK"}


# --- alarm-lost: the signed counters count what never arrived ----------------------------------------------

def test_an_alarm_signed_and_never_delivered_is_counted_as_lost(lender):
    gateway = started(lender)
    gateway.alarm()                    # the door opens; the borrower makes sure this never leaves the site
    lender.now += 60
    lender.deliver(gateway, gateway.heartbeat())

    lost = [r for r in lender.risks(gateway) if r.kind == "alarm-lost"]
    assert len(lost) == 1 and lost[0].detail.startswith("1 alarm(s) signed by the device and never received")
    assert lender.states(gateway) == {"RISK"}


@pytest.mark.parametrize("cover", [GapReason.OVERFLOW, GapReason.SPOOL_RESET])
def test_a_reviewed_gap_record_over_lost_alarms_does_not_hide_them(lender, cover):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reading())
    first = gateway.seq + 1
    gateway.alarm()
    gateway.reading()
    gateway.alarm()
    if cover is GapReason.SPOOL_RESET:
        gateway.prev, gateway.seq = GENESIS, 1000
        record = gateway.gap(cover.value, first=first, last=1000)
    else:
        record = gateway.gap(cover.value, first=first, last=gateway.seq, queued=10, alarms_dropped=0)
    lender.deliver(gateway, record, gateway.heartbeat())
    lender.store.add_review(Review(gateway.name, record.seq, "a.credit-officer", "power cut, says the borrower",
                                   lender.now))

    assert [r.kind for r in lender.risks(gateway)] == ["alarm-lost"]
    assert "2 alarm(s) signed by the device and never received" in lender.risks(gateway)[0].detail
    assert lender.states(gateway) == {"RISK"}


def test_a_spool_reset_over_the_first_alarm_a_new_gateway_ever_signed_is_still_lost(lender):
    """The uplink is blocked from installation on: manifest and door alarm wait in the spool, the spool is
    deleted, and the first thing the lender ever hears is the spool-reset record (counters: 1 alarm)."""
    gateway = lender.gateway()
    gateway.manifest()
    gateway.alarm()
    gateway.prev, gateway.seq = GENESIS, 1000
    record = gateway.gap(GapReason.SPOOL_RESET.value, first=1, last=1000)
    lender.deliver(gateway, record, gateway.heartbeat())
    lender.store.add_review(Review(gateway.name, record.seq, "a.credit-officer", "new site, teething trouble",
                                   lender.now))

    assert [r.kind for r in lender.risks(gateway)] == ["alarm-lost"]
    assert lender.states(gateway) == {"RISK"}


def sign_history(gateway, kinds: list[str]):
    """Sign `kinds` in order: a reading, a heartbeat, or an alarm (a door opened, then closed again)."""
    signed = []
    for kind in kinds:
        signed += (gateway.door_opened_and_closed() if kind == "alarm" else [gateway.heartbeat()] if kind == "heartbeat"
                   else [gateway.reading()])
    return signed


@contextlib.contextmanager
def fresh_lender():
    """A lender of its own for one hypothesis example (tmp_path is per test, not per example)."""
    with tempfile.TemporaryDirectory() as folder:
        lender = PledgeLender(Path(folder))
        try:
            yield lender
        finally:
            lender.close()


def deliver_in_batches(lender: PledgeLender, gateway, envelopes: list, sizes: list[int]) -> None:
    """Post `envelopes` in this order, in batches of the given sizes (the rest in one), a few seconds apart."""
    envelopes, sizes = list(envelopes), list(sizes)
    while envelopes:
        lender.now += 7
        size = sizes.pop() if sizes else len(envelopes)
        lender.deliver(gateway, *envelopes[:size])
        del envelopes[:size]


histories = st.lists(st.sampled_from(["reading", "alarm", "heartbeat"]), min_size=1, max_size=12)
batch_sizes = st.lists(st.integers(1, 4), max_size=30)


@settings(max_examples=40)
@given(kinds=histories.filter(lambda kinds: "alarm" in kinds), data=st.data())
def test_arbitrary_deliveries_that_withhold_an_alarm_never_leave_the_lender_ok(kinds, data):
    with fresh_lender() as lender:
        gateway = started(lender)
        signed = sign_history(gateway, kinds)
        hidden = data.draw(st.sampled_from([e for e in signed if e.records[0].name.startswith("alarm.")]),
                           label="the alarm envelope the borrower hides")
        rest = [e for e in signed if e is not hidden]
        order = data.draw(st.permutations(rest), label="the order the rest would arrive in")
        arrives = data.draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)), label="which arrive")
        delivered = [e for e, arrived in zip(order, arrives) if arrived]
        cover = data.draw(st.sampled_from([None, GapReason.OVERFLOW, GapReason.SPOOL_RESET]),
                          label="a gap record the borrower has the agent sign over it")
        talking = data.draw(st.booleans(), label="the gateway goes on reporting")
        if cover is GapReason.OVERFLOW:
            delivered.append(gateway.gap(cover.value, first=hidden.seq, last=hidden.seq, queued=9, alarms_dropped=0))
        elif cover is GapReason.SPOOL_RESET:
            gateway.prev, gateway.seq = GENESIS, 1000
            delivered.append(gateway.gap(cover.value, first=hidden.seq, last=1000))
        if talking:
            delivered.append(gateway.heartbeat())
        deliver_in_batches(lender, gateway, delivered, data.draw(batch_sizes, label="batch sizes"))
        for record in lender.store.gap_records(gateway.name):   # a credit officer waves every gap record through
            lender.store.add_review(Review(gateway.name, record.seq, "a.credit-officer", "fine", lender.now))

        if talking or cover is not None:   # judged at once: what it signed after the alarm gives it away
            assert "OK" not in lender.states(gateway)
            assert "alarm-lost" in lender.kinds(gateway)
        else:                              # judged three heartbeats on: its quiet gives it away
            later = lender.now + 3 * gateway.heartbeat_s + 1
            assert "OK" not in lender.states(gateway, at=later)
            assert "silent" in lender.kinds(gateway, at=later)


@settings(max_examples=30)
@given(kinds=histories, seed=st.randoms(use_true_random=False), sizes=batch_sizes)
def test_every_envelope_delivered_in_any_order_and_batching_is_ok(kinds, seed, sizes):
    with fresh_lender() as lender:
        gateway = started(lender)
        signed = sign_history(gateway, kinds) + [gateway.heartbeat()]
        seed.shuffle(signed)
        deliver_in_batches(lender, gateway, signed, sizes)

        assert lender.risks(gateway) == []
        assert lender.states(gateway) == {"OK"}


# --- silent -----------------------------------------------------------------------------------------------------

def test_a_gateway_is_silent_after_three_missed_heartbeats_and_not_before(lender):
    gateway = started(lender, heartbeat_s=60.0)
    lender.deliver(gateway, gateway.heartbeat())
    last = lender.now

    assert "silent" not in lender.kinds(gateway, at=last + 3 * 60 - 1)
    (silent,) = [r for r in lender.risks(gateway, at=last + 3 * 60 + 1) if r.kind == "silent"]
    assert silent.since == last + 180
    assert "heartbeat 60 s" in silent.detail
    assert "OK" not in lender.states(gateway, at=last + 3 * 60 + 1)
    assert "silent" not in lender.kinds(gateway, at=last + 3 * 60 + 1, missed=4)


def test_stretching_the_declared_heartbeat_before_unplugging_buys_no_patience(lender):
    """The borrower sets heartbeat_s in agent.toml to four months and restarts the agent (a new manifest
    declares it), then pulls the plug: the lender still expects the heartbeat the gateway was enrolled with."""
    gateway = started(lender, heartbeat_s=300.0)
    lender.now += 60
    gateway.heartbeat_s = 1e7
    lender.deliver(gateway, gateway.reboot())

    month_later = lender.now + 30 * 86400
    (silent,) = [r for r in lender.risks(gateway, at=month_later) if r.kind == "silent"]
    assert "heartbeat 300 s" in silent.detail
    assert "OK" not in lender.states(gateway, at=month_later)


def test_a_gateway_unplugged_for_a_month_is_silent_at_the_status_command(tmp_path):
    lender = PledgeLender(tmp_path / "lender", now=time.time() - 30 * 86400)
    try:
        gateway = started(lender, heartbeat_s=300.0)
        lender.deliver(gateway, gateway.heartbeat())
        default = lender.status_json()
        patient = lender.status_json("--missed-heartbeats", "10000")   # 10,000 x 300 s is 34.7 days
        alarms = lender.cli("alarms", "--json")
    finally:
        lender.close()
    assert all(s["state"] == "RISK" and "silent" in kinds_of(s) for s in default)
    assert all(s["state"] == "OK" and s["risks"] == [] for s in patient)
    assert '"name": "risk.silent.gw-1"' in alarms.stdout and '"source": "lender"' in alarms.stdout


# --- chain ------------------------------------------------------------------------------------------------------

def test_a_wiped_gateway_that_restarts_its_chain_is_refused_and_named(lender):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reading(), *gateway.door_opened_and_closed())
    lender.now += 600                  # the next start signs another manifest at seq 1
    gateway.boot, gateway.seq, gateway.prev, gateway.counters, gateway.token = 1, 0, GENESIS, Counters(0, 0), None
    ack = lender.deliver(gateway, gateway.manifest())

    assert [r.reason for r in ack.refused] == [Reason.CONFLICT]
    assert [(q.reason, q.seq) for q in lender.store.quarantined(device=gateway.name)] == [(Reason.CONFLICT, 1)]
    chain = [r for r in lender.risks(gateway) if r.kind == "chain"]
    assert len(chain) == 1 and chain[0].seq == 1 and "wiped or forked" in chain[0].detail
    assert "OK" not in lender.states(gateway)


def test_a_boot_counter_that_goes_back_is_a_chain_risk_even_across_a_gap(lender):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reboot(), gateway.reboot())
    gateway.reading()                  # not delivered: the next stored envelope is not a neighbour
    gateway.boot = 2
    later = gateway.heartbeat()
    assert lender.deliver(gateway, later).stored == (later.seq,)

    chain = [r for r in lender.risks(gateway) if r.kind == "chain"]
    assert [(r.seq, "boot counter goes back" in r.detail) for r in chain] == [(later.seq, True)]


def test_a_boot_counter_that_goes_back_next_door_is_refused_as_chain(lender):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reboot())
    gateway.boot = 1
    ack = lender.deliver(gateway, gateway.heartbeat())

    assert [r.reason for r in ack.refused] == [Reason.CHAIN]
    assert "chain" in lender.kinds(gateway)


def test_signed_counters_that_go_back_are_a_chain_risk(lender):
    gateway = started(lender)
    lender.deliver(gateway, *gateway.door_opened_and_closed())
    rolled_back = gateway.sign([Record("temp", value=4.0, unit="Cel", time=lender.now)], counters=Counters(0, 0))
    lender.deliver(gateway, rolled_back)

    chain = [r for r in lender.risks(gateway) if r.kind == "chain"]
    assert [(r.seq, "alarm counter goes back" in r.detail) for r in chain] == [(rolled_back.seq, True)]


def test_a_token_older_than_one_already_signed_is_a_chain_risk(lender):
    gateway = started(lender)
    old = gateway.token
    lender.now += 600
    lender.deliver(gateway, gateway.reading())
    assert gateway.token != old
    lender.deliver(gateway, gateway.reading())       # signed with the newer token
    lender.now += 10
    restored = gateway.sign([Record("temp", value=4.0, unit="Cel", time=lender.now)], token=old)
    lender.deliver(gateway, restored)

    chain = [r for r in lender.risks(gateway) if r.kind == "chain"]
    assert [(r.seq, "older than" in r.detail) for r in chain] == [(restored.seq, True)]


def test_a_version_1_envelope_after_version_2_ones_is_a_chain_risk(lender):
    gateway = started(lender, bound=False)
    lender.deliver(gateway, gateway.reading())
    legacy = seal(gateway.identity, device=gateway.name, boot=gateway.boot, seq=gateway.seq + 1, prev=gateway.prev,
                  records=[Record("temp", value=4.0, unit="Cel", time=lender.now)])
    assert legacy.version == 1
    assert lender.deliver(gateway, legacy).stored == (legacy.seq,)

    chain = [r for r in lender.risks(gateway) if r.kind == "chain"]
    assert [(r.seq, "version 1 after version 2" in r.detail) for r in chain] == [(legacy.seq, True)]


# --- clock ------------------------------------------------------------------------------------------------------

def test_a_token_made_with_another_key_is_a_clock_risk(lender):
    gateway = started(lender)
    forged = issue_token(b"k" * 32, gateway.name, lender.now)
    envelope = gateway.sign([Record("temp", value=4.0, unit="Cel", time=lender.now)], token=forged)
    lender.deliver(gateway, envelope)

    assert [(r.kind, r.seq) for r in lender.risks(gateway)] == [("clock", envelope.seq)]


def test_a_token_issued_to_another_device_is_a_clock_risk(lender):
    gateway = started(lender)
    other = started(lender, "gw-2")
    envelope = gateway.sign([Record("temp", value=4.0, unit="Cel", time=lender.now)], token=other.token)
    lender.deliver(gateway, envelope)

    (clock,) = lender.risks(gateway)
    assert clock.kind == "clock" and "did not issue to gw-1" in clock.detail
    assert lender.risks(other) == []


def test_records_dated_well_before_the_token_they_carry_are_a_clock_risk(lender):
    """The gateway's clock set back to 03:00 to make a night-time opening look like office hours' access, or
    the other way round: the token says when the lender last spoke, the records cannot be older."""
    gateway = started(lender)
    lender.now += 3600
    lender.deliver(gateway, gateway.heartbeat())
    envelope = gateway.reading(time=lender.now - 7 * 3600)
    lender.deliver(gateway, envelope)

    (clock,) = lender.risks(gateway)
    assert clock.kind == "clock" and clock.seq == envelope.seq and "before the lender token" in clock.detail


def test_records_dated_far_after_they_arrived_are_a_clock_risk(lender):
    gateway = started(lender)
    envelope = gateway.reading(time=lender.now + 365 * 86400)
    lender.deliver(gateway, envelope)

    (clock,) = lender.risks(gateway)
    assert clock.kind == "clock" and clock.seq == envelope.seq and "after it arrived" in clock.detail


def test_small_clock_differences_are_no_risk(lender):
    gateway = started(lender)
    lender.deliver(gateway, gateway.reading(time=lender.now + 60), gateway.reading(time=lender.now - 60))
    assert lender.risks(gateway) == []


# --- rules ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit", [None, ("high = 8.0", "high = 40.0"), ('"Europe/Berlin"', '"UTC"')],
                         ids=["as enrolled", "40 degrees on cold stock", "access hours in another zone"])
def test_the_status_command_names_rules_that_differ_from_the_site_record(tmp_path, edit):
    lender = PledgeLender(tmp_path / "lender", now=time.time() - 30)
    try:
        running = SITE_RECORD if edit is None else SITE_RECORD.replace(*edit)
        assert running != SITE_RECORD or edit is None
        started(lender, heartbeat_s=300.0, rules=site_digest(running))
        statuses = lender.status_json()
    finally:
        lender.close()
    if edit is None:
        assert all(s["state"] == "OK" and s["risks"] == [] for s in statuses)
    else:
        assert {s["state"] for s in statuses} == {"RISK"}
        assert all(kinds_of(s) == ["rules"] for s in statuses)
        assert site_digest(running) in statuses[0]["risks"][0]["detail"]
        assert site_digest() in statuses[0]["risks"][0]["detail"]


def test_a_newer_manifest_with_the_enrolled_rules_clears_the_rules_risk(lender):
    gateway = started(lender, rules=site_digest(SITE_RECORD.replace('"Europe/Berlin"', '"UTC"')))
    assert lender.kinds(gateway) == ["rules"]
    gateway.rules = site_digest()
    lender.deliver(gateway, gateway.reboot())
    assert lender.kinds(gateway) == []


# --- binding ----------------------------------------------------------------------------------------------------

def test_an_envelope_bound_to_another_enrollment_is_refused_and_named(lender):
    gateway = started(lender)
    pledged_elsewhere = seal(gateway.identity, device=gateway.name, boot=gateway.boot, seq=gateway.seq + 1,
                             prev=gateway.prev, records=[Record("temp", value=4.0, unit="Cel", time=lender.now)],
                             counters=gateway.counters, token=gateway.token, binding=bytes(8))
    ack = lender.deliver(gateway, pledged_elsewhere)

    assert [r.reason for r in ack.refused] == [Reason.BINDING] and Reason.BINDING == 8
    assert lender.store.envelope(gateway.name, pledged_elsewhere.seq) is None
    (binding,) = [r for r in lender.risks(gateway) if r.kind == "binding"]
    assert binding.seq == pledged_elsewhere.seq and gateway.binding.hex() in binding.detail
    assert "OK" not in lender.states(gateway)


def test_a_bound_gateway_sending_its_own_binding_is_no_binding_risk(lender):
    gateway = started(lender)
    assert lender.store.device(gateway.name).binding == gateway.binding
    assert lender.deliver(gateway, gateway.reading()).refused == ()
    assert "binding" not in lender.kinds(gateway)


def test_a_node_moving_between_versions_2_and_3_is_no_risk_but_version_1_after_3_is(lender):
    """Version 3 is a node's compact form of version 2 (same counters, token and binding), and the firmware falls
    back to version 2 for a record its table lacks: no downgrade. Version 1 after either loses the freshness."""
    node = started(lender, "node-1", bound=False)

    def sealed(compact: bool = False, counters: bool = True):
        envelope = seal(node.identity, device=node.name, boot=node.boot, seq=node.seq + 1, prev=node.prev,
                        records=[Record("temp", value=4.0, unit="Cel", time=lender.now)], compact=compact,
                        counters=node.counters if counters else None, token=node.token if counters else None)
        node.seq, node.prev = envelope.seq, envelope.digest
        return envelope

    versions = [sealed(compact=True), sealed(), sealed(compact=True), sealed(counters=False)]
    assert [e.version for e in versions] == [3, 2, 3, 1]
    for envelope in versions:
        assert lender.deliver(node, envelope).stored == (envelope.seq,)

    chain = [r for r in lender.risks(node) if r.kind == "chain"]
    assert [(r.seq, "version 1 after version 3" in r.detail) for r in chain] == [(versions[-1].seq, True)]
