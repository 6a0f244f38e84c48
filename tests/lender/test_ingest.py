"""The lender's ingest decisions, driven without an event loop: what is stored, what is refused, and why."""
from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lender.evidence import registry
from lender.evidence.ingest import MAX_NODE_BODY, Ingest, NodeIngest, Status, chain_violation
from lender.evidence.refusals import Refusals
from lender.evidence.store import SQLiteStore, explain_gaps
from telemetry import cbor
from telemetry.ack import ALREADY as ACK_ALREADY
from telemetry.ack import RECEIPT as ACK_RECEIPT
from telemetry.ack import REFUSED as ACK_REJECTED
from telemetry.ack import STORED as ACK_STORED
from telemetry.envelope import GENESIS, Gap, GapReason, Reason, seal
from telemetry.receipt import DeliveryReceipt
from telemetry.senml import Record
from tests.kit.lender import Device, batch, enroll
from tests.kit.stores import another

pytestmark = pytest.mark.backends


@pytest.fixture
def gateway(store, data_dir) -> Device:
    device = Device("gw-1")
    enroll(store, data_dir, device)
    return device


@pytest.fixture
def ingest(store) -> Ingest:
    return Ingest(store, clock=lambda: 1_800_000_000.0)


def test_a_batch_is_stored_and_acked_by_seq(ingest, gateway, store):
    envelopes = gateway.chain(5)
    outcome = ingest.batch(batch(envelopes), peer="test")
    assert outcome.status is Status.CHANGED
    ack = cbor.decode(outcome.ack())
    receipt = DeliveryReceipt.from_cbor(ack.pop(ACK_RECEIPT))
    assert ack == {ACK_STORED: [1, 2, 3, 4, 5], ACK_ALREADY: [], ACK_REJECTED: []}
    assert [e.raw for e in store.envelopes("gw-1")] == [e.raw for e in envelopes]
    assert [r.value for r in store.readings("gw-1")] == [e.records[0].value for e in envelopes]
    # the ack proves the newest envelope is in the lender's log: its registration, then the five
    checkpoint, index = receipt.verify("gw-1", envelopes[-1].raw, store.log.identity.public_key)
    assert (receipt.seq, receipt.at, index, checkpoint.tree_size) == (5, 1_800_000_000_000, 5, 6)


def test_a_retried_batch_is_stored_once_and_acked_as_already_present(ingest, gateway, store):
    envelopes = gateway.chain(4)
    ingest.batch(batch(envelopes[:2]), peer="test")
    outcome = ingest.batch(batch(envelopes), peer="test")
    assert (outcome.stored, outcome.already, outcome.refused) == ((3, 4), (1, 2), ())
    again = ingest.batch(batch(envelopes), peer="test")
    assert (again.stored, again.already) == ((), (1, 2, 3, 4))
    assert store.counts().envelopes == 4 and store.counts().records == 4


def test_a_conflicting_duplicate_is_refused_and_quarantined_with_both_digests(ingest, gateway, store):
    first = gateway.next()
    ingest.batch(batch([first]), peer="test")
    other = seal(gateway.identity, device="gw-1", boot=1, seq=1, prev=GENESIS)  # same seq, other bytes
    outcome = ingest.batch(batch([other]), peer="gw at 10.0.0.7")
    assert outcome.status is Status.CHANGED and outcome.stored == () and outcome.already == ()
    (refusal,) = outcome.refused
    assert (refusal.index, refusal.reason) == (0, Reason.CONFLICT)
    (entry,) = store.quarantined()
    assert entry.raw == other.raw and entry.reason is Reason.CONFLICT and entry.kind == "envelope"
    assert first.digest.hex() in entry.detail and other.digest.hex() in entry.detail
    assert (entry.device, entry.seq, entry.first_peer) == ("gw-1", 1, "gw at 10.0.0.7")
    assert store.envelope("gw-1", 1).raw == first.raw


def test_alarms_arriving_before_the_backlog_are_stored_and_the_chain_closes_behind_them(ingest, gateway, store):
    envelopes = gateway.chain(6)
    alarm = gateway.next(alarm=True)
    assert ingest.batch(batch([alarm]), peer="test").stored == (7,)
    assert [(m.first, m.last) for m in store.missing_ranges("gw-1")] == [(None, 6)]
    assert ingest.batch(batch(envelopes[3:]), peer="test").stored == (4, 5, 6)
    assert ingest.batch(batch(envelopes[:3]), peer="test").stored == (1, 2, 3)
    assert store.missing_ranges("gw-1") == []
    assert store.envelope("gw-1", 7).alarm


def test_an_envelope_that_does_not_link_to_its_stored_neighbour_is_a_chain_violation(ingest, gateway, store):
    envelopes = gateway.chain(3)
    ingest.batch(batch([envelopes[0], envelopes[2]]), peer="test")
    forged_link = seal(gateway.identity, device="gw-1", boot=1, seq=2, prev=bytes(range(16)))
    outcome = ingest.batch(batch([forged_link]), peer="test")
    assert [(r.index, r.reason) for r in outcome.refused] == [(0, Reason.CHAIN)]
    assert "does not link to the stored seq 1" in outcome.refused[0].text
    assert store.envelope("gw-1", 2) is None
    assert store.quarantined()[0].reason is Reason.CHAIN
    assert ingest.batch(batch([envelopes[1]]), peer="test").stored == (2,)


def test_a_boot_counter_going_back_is_a_chain_violation(ingest, gateway):
    first = gateway.next()
    ingest.batch(batch([first]), peer="test")
    gateway.boot = 0
    outcome = ingest.batch(batch([gateway.next()]), peer="test")
    assert outcome.refused[0].reason is Reason.CHAIN and "boot counter goes back" in outcome.refused[0].text


def test_a_spool_reset_gap_record_may_restart_the_chain_at_genesis(ingest, gateway, store):
    ingest.batch(batch(gateway.chain(2)), peer="test")
    gateway.prev = GENESIS
    reset = gateway.next(gap=Gap(GapReason.SPOOL_RESET.value, count=5))
    assert ingest.batch(batch([reset]), peer="test").stored == (3,)
    assert store.gap_records("gw-1")[0].reason == "spool-reset"


def test_chain_violation_is_pure_and_checks_only_present_neighbours(gateway):
    a, b, c = gateway.chain(3)
    assert chain_violation(b, None, None) is None
    stored = {e.seq: e for e in (a, c)}

    class Row:  # the fields chain_violation reads from a stored neighbour
        def __init__(self, e, restarts=False):
            self.seq, self.boot, self.digest, self.prev, self.restarts_chain = e.seq, e.boot, e.digest, e.prev, restarts
    assert chain_violation(b, Row(stored[1]), Row(stored[3])) is None
    assert "stored seq 3 links to" in chain_violation(a, None, Row(stored[3]))


def test_forged_unknown_and_revoked_envelopes_get_their_own_reason_codes(ingest, gateway, store, data_dir):
    good = gateway.next()
    stranger = Device("gw-1")  # claims the registered device's id, signs with its own (unknown) key
    forged_kid = seal(stranger.identity, device="gw-1", boot=1, seq=9, prev=GENESIS)
    # the registered device's kid, but signed by another key: only the signature can tell
    wrong_signature = bytearray(gateway.next().raw)
    wrong_signature[-1] ^= 0x01
    other = Device("gw-2")
    enroll(store, data_dir, other)
    registry.revoke(store, "gw-2")
    revoked = other.next()
    truncated = good.raw[:-7]
    outcome = ingest.batch(batch([good, forged_kid, bytes(wrong_signature), revoked, truncated]), peer="test")
    assert outcome.status is Status.CHANGED and outcome.stored == (1,)
    assert [(r.index, r.reason) for r in outcome.refused] == [
        (1, Reason.UNKNOWN_KEY), (2, Reason.BAD_SIGNATURE), (3, Reason.REVOKED), (4, Reason.MALFORMED)]
    assert sorted(q.batch_index for q in store.quarantined()) == [1, 2, 3, 4]


def test_a_key_signing_for_another_device_is_a_bad_signature(ingest, gateway, store, data_dir):
    other = Device("gw-2")
    enroll(store, data_dir, other)
    impostor = seal(other.identity, device="gw-1", boot=1, seq=1, prev=GENESIS)
    outcome = ingest.batch(batch([impostor]), peer="test")
    assert outcome.refused[0].reason is Reason.BAD_SIGNATURE and "belongs to device 'gw-2'" in outcome.refused[0].text


def test_a_whole_batch_from_an_unregistered_or_revoked_device_is_refused_as_a_request(ingest, store, data_dir):
    newcomer = Device("gw-new")
    outcome = ingest.batch(batch(newcomer.chain(3)), peer="test")
    assert outcome.status is Status.UNAUTHORIZED and "gw-new is not registered" in outcome.diagnostic
    assert {q.reason for q in store.quarantined()} == {Reason.UNKNOWN_KEY}
    enroll(store, data_dir, newcomer)
    registry.revoke(store, "gw-new")
    outcome = ingest.batch(batch([newcomer.next()]), peer="test")
    assert outcome.status is Status.FORBIDDEN and "revoked" in outcome.diagnostic
    assert store.counts().envelopes == 0


def test_the_oscore_sender_decides_for_the_whole_request(ingest, gateway, store, data_dir):
    body = batch(gateway.chain(2))
    assert ingest.batch(body, peer="test", sender="gw-unknown").status is Status.UNAUTHORIZED
    registry.revoke(store, "gw-1")
    assert ingest.batch(body, peer="test", sender="gw-1").status is Status.FORBIDDEN
    assert store.counts().envelopes == 0
    assert {q.kind for q in store.quarantined()} == {"request"}


@pytest.mark.parametrize("body, words", [
    (b"", "not well-formed CBOR"),
    (b"\xa0", "got a map"),
    (cbor.encode([b"ok", 7]), "item 1 is an integer"),
    (cbor.encode([[b"nested"]]), "flat CBOR array"),
    (b"\x9f\xff", "indefinite length"),
    (cbor.encode("text"), "got a text string"),
])
def test_a_body_that_is_not_an_array_of_byte_strings_is_a_bad_request(ingest, store, body, words):
    outcome = ingest.batch(body, peer="test")
    assert outcome.status is Status.BAD_REQUEST and words in outcome.diagnostic
    (entry,) = store.quarantined()
    assert (entry.kind, entry.reason, entry.raw) == ("request", Reason.MALFORMED, body)


def test_a_body_over_the_cap_is_refused_before_decoding_and_kept_as_a_prefix(store):
    ingest = Ingest(store, max_body=1000)
    outcome = ingest.batch(b"\x9f" * 5000, peer="test")
    assert outcome.status is Status.TOO_LARGE
    (entry,) = store.quarantined()
    assert entry.size == 5000 and len(entry.raw) == 1000


def test_an_empty_batch_is_answered_with_an_empty_ack(ingest):
    outcome = ingest.batch(cbor.encode([]), peer="test")
    assert outcome.status is Status.CHANGED and cbor.decode(outcome.ack()) == {1: [], 2: [], 3: []}


def test_seqs_beyond_what_sqlite_holds_are_refused_not_crashing(ingest, gateway):
    huge = seal(gateway.identity, device="gw-1", boot=1, seq=(1 << 64) - 1, prev=GENESIS)
    outcome = ingest.batch(batch([huge]), peer="test")
    assert outcome.refused[0].reason is Reason.MALFORMED


def test_a_repeated_refusal_counts_up_instead_of_filling_the_quarantine(ingest, store):
    for _ in range(5):
        ingest.batch(b"\x01garbage", peer="flooder")
    (entry,) = store.quarantined()
    assert entry.count == 5


def test_junk_fills_a_quarter_of_the_quarantine_and_is_counted_beyond(data_dir, store):
    with another(store, data_dir, quarantine_limit=400) as small:
        ingest = Ingest(small)
        for n in range(10):
            ingest.batch(bytes([0xFF]) + bytes([n]) * 30, peer="flooder")
        counts = small.counts()
        assert counts.quarantined == 3  # 3 x 31 bytes fit in a quarter of 400
        assert counts.quarantine_overflow == 7
        assert small.quarantine_overflow() == {("request", int(Reason.MALFORMED)): 7}


def test_space_junk_cannot_take_stays_for_refusals_a_key_vouches_for(data_dir, store, gateway):
    with another(store, data_dir, quarantine_limit=4000) as small:
        ingest = Ingest(small, refusals=Refusals(samples_per_minute=1000))  # every piece of junk offered to the store
        for n in range(200):  # junk, until its quarter is full and it is only counted
            ingest.batch(bytes([0xFF]) + bytes([n]) * 60, peer="flooder")
        assert small.counts().quarantine_overflow > 150
        first = gateway.chain(3)
        ingest.batch(batch(first), peer="gateway")
        forked = Device("gw-1", identity=gateway.identity)  # the same key signs another past for seqs 1..3
        forks = [forked.next(value=99.0) for _ in range(3)]
        outcome = ingest.batch(batch(forks), peer="gateway")
        assert [r.reason for r in outcome.refused] == [Reason.CONFLICT] * 3
        kept = {q.raw for q in small.quarantined(1000) if q.reason is Reason.CONFLICT}
        assert kept == {e.raw for e in forks}, "every signed fork is kept while junk is only counted"


def test_junk_beyond_the_sample_is_counted_and_reaches_the_store_when_flushed(store):
    ingest = Ingest(store, refusals=Refusals(samples_per_minute=5))
    for n in range(50):
        ingest.batch(bytes([0xFF]) + n.to_bytes(2, "big"), peer="flooder")
    assert store.counts().quarantined == 5 and store.quarantine_overflow() == {}
    assert ingest.flush_refusals() == 45
    assert store.quarantine_overflow() == {("request", int(Reason.MALFORMED)): 45}


def test_a_refused_node_body_keeps_at_most_the_node_cap(store):
    ingest = NodeIngest(store)
    outcome = ingest.envelope(bytes([0xD2]) + bytes(60_000), peer="flooder")
    assert outcome.status is Status.TOO_LARGE
    (entry,) = store.quarantined()
    assert len(entry.raw) == MAX_NODE_BODY and entry.size == 60_001


def test_gaps_and_signed_gap_records_are_kept_and_matched(ingest, gateway, store):
    envelopes = gateway.chain(10)
    record = gateway.next(gap=Gap(GapReason.OVERFLOW.value, first=4, last=6, count=3))
    kept = [e for e in envelopes if e.seq not in (4, 5, 6, 9)]
    ingest.batch(batch(kept + [record]), peer="test")
    findings = explain_gaps(store.missing_ranges("gw-1"), store.gap_records("gw-1"))
    assert [(f.missing.first, f.missing.last, f.explained_by and f.explained_by.seq) for f in findings] == [
        (4, 6, 11), (9, 9, None)]


@settings(max_examples=300)
@given(items=st.lists(st.binary(max_size=300), max_size=6))
def test_any_batch_of_random_envelope_bytes_is_refused_item_by_item(items, tmp_path_factory):
    with SQLiteStore.open(tmp_path_factory.mktemp("fuzz")) as fresh:
        outcome = Ingest(fresh).batch(cbor.encode(items), peer="fuzz")
        assert outcome.status is Status.CHANGED and outcome.stored == () and outcome.already == ()
        assert [r.index for r in outcome.refused] == list(range(len(items)))
        assert all(r.reason in (Reason.MALFORMED, Reason.OVERSIZE, Reason.UNKNOWN_KEY) for r in outcome.refused)
        assert sum(q.count for q in fresh.quarantined(1000)) == len(items)


def test_two_writers_retrying_the_same_batches_at_once_store_each_envelope_once(data_dir, store, gateway):
    envelopes = gateway.chain(60)
    bodies = [batch(envelopes[i:i + 10]) for i in range(0, 60, 10)]
    results: dict[str, list] = {}

    def writer(name: str) -> None:
        with another(store, data_dir) as own:  # its own connection, like a second lender process
            ingest = Ingest(own)
            results[name] = [ingest.batch(body, peer=name) for body in bodies for _ in range(2)]

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = [seq for outcomes in results.values() for o in outcomes for seq in o.stored]
    assert sorted(stored) == list(range(1, 61))  # each seq stored exactly once, by exactly one writer
    assert all(not o.refused for outcomes in results.values() for o in outcomes)
    assert store.counts().envelopes == 60


@pytest.mark.parametrize("poison", [
    {"time": float("nan")}, {"value": float("nan")}, {"value": float("inf")}, {"value": float("-inf")},
])
def test_a_poisoned_alarm_is_refused_alone_and_the_rest_of_its_batch_is_stored(ingest, gateway, store, poison):
    # a NaN time once made SQLite's NOT NULL fail: the whole batch answered 5.03, forever, and since alarms go
    # first, one poisoned alarm wedged the gateway's uplink
    good = gateway.chain(3)
    gateway.seq += 1
    fields = {"boolean": True, "time": 1_800_000_000.0} if "value" not in poison else {"time": 1_800_000_000.0}
    poisoned = seal(gateway.identity, device="gw-1", boot=1, seq=gateway.seq, prev=gateway.prev,
                    records=[Record("alarm.tamper", **{**fields, **poison})])
    outcome = ingest.batch(batch([poisoned, *good]), peer="test")
    assert outcome.status is Status.CHANGED
    assert outcome.stored == (1, 2, 3)
    (refusal,) = outcome.refused
    assert (refusal.index, refusal.reason) == (0, Reason.MALFORMED) and "not a finite number" in refusal.text
    (kept,) = store.quarantined()
    assert kept.raw == poisoned.raw and kept.reason is Reason.MALFORMED
