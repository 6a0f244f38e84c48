"""The lender's transparency log in its store: every envelope and registry event logged in the same transaction,
a checkpoint per commit, proofs that agree with RFC 9162, and an audit that sees any later edit of the file."""
from __future__ import annotations

import pytest

from lender.evidence import registry
from lender.evidence.ingest import Ingest
from lender.evidence.log import WINDOW
from lender.evidence.store import Review, SQLiteStore
from lender.exc import StoreUnavailableError
from telemetry.logentry import EntryKind, LogEntry, at_ms, envelope_entry
from telemetry.merkle import MerkleTree, inclusion_path, leaf_hash, verify_consistency, verify_inclusion
from telemetry.envelope import Gap
from tests.kit.evidence import downgrade_to_schema_2
from tests.kit.lender import Device, batch, enroll

T = 1_800_000_000.0


@pytest.fixture
def gateway(store, data_dir) -> Device:
    device = Device("gw-1")
    enroll(store, data_dir, device, now=T)
    return device


@pytest.fixture
def ingest(store) -> Ingest:
    return Ingest(store, clock=lambda: T + 5)


def logged(store: SQLiteStore) -> list[tuple[int, EntryKind, str, bytes | None]]:
    return [(e.index, e.kind, e.device, e.entry) for e in store.log.entries()]


def test_every_stored_envelope_and_registry_event_is_an_entry_in_the_order_it_happened(store, gateway, ingest, data_dir):
    envelopes = gateway.chain(3)
    ingest.batch(batch(envelopes), peer="test")
    gap = gateway.next(gap=Gap("power-loss", first=4, last=9, count=6))
    ingest.batch(batch([gap]), peer="test")
    store.add_review(Review("gw-1", gap.seq, "ana", "power cut on site", T + 60))
    registry.revoke(store, "gw-1", now=T + 120)
    entries = logged(store)
    assert [(i, k, d) for i, k, d, _ in entries] == [
        (0, EntryKind.REGISTRATION, "gw-1"), (1, EntryKind.ENVELOPE, "gw-1"), (2, EntryKind.ENVELOPE, "gw-1"),
        (3, EntryKind.ENVELOPE, "gw-1"), (4, EntryKind.ENVELOPE, "gw-1"), (5, EntryKind.REVIEW, "gw-1"),
        (6, EntryKind.REVOCATION, "gw-1")]
    assert entries[1][3] == envelope_entry("gw-1", at_ms(T + 5), envelopes[0].raw)
    assert LogEntry.decode(entries[0][3]).body.public_key == gateway.identity.public_key
    assert LogEntry.decode(entries[5][3]).body.note == "power cut on site"
    assert [store.log.signed_checkpoint(size).checkpoint.tree_size for size in store.log.checkpoint_sizes()] == [
        1, 4, 5, 6, 7]
    assert store.log.audit().ok


def test_a_batch_that_fails_half_way_leaves_neither_envelope_nor_entry_nor_checkpoint(store, gateway, ingest):
    ingest.batch(batch(gateway.chain(2)), peer="test")
    before = (store.log.size, store.log.root(), store.counts().envelopes, store.log.checkpoint_sizes())
    later = gateway.chain(3)
    with pytest.raises(RuntimeError), store.transaction():
        store.insert_envelope(later[0], received_at=T + 9, peer="test")
        store.insert_envelope(later[1], received_at=T + 9, peer="test")
        raise RuntimeError("power cut")
    assert (store.log.size, store.log.root(), store.counts().envelopes, store.log.checkpoint_sizes()) == before
    ingest.batch(batch(later), peer="test")  # the retry logs them, at the indices they would have had
    assert store.log.size == 6 and store.log.audit().ok


def test_appends_by_another_process_are_taken_up_before_the_next_append(store, gateway, ingest, data_dir):
    ingest.batch(batch(gateway.chain(2)), peer="test")
    with SQLiteStore.open(data_dir) as other:  # `lender register` / `revoke` run while the server serves
        enroll(other, data_dir, Device("gw-2"), now=T)
        registry.revoke(other, "gw-2", now=T + 1)
    ingest.batch(batch(gateway.chain(2)), peer="test")
    assert [e.kind for e in store.log.entries()][3:5] == [EntryKind.REGISTRATION, EntryKind.REVOCATION]
    assert store.log.size == 7 and store.log.audit().ok
    with SQLiteStore.open(data_dir) as fresh:
        assert fresh.checkpoint().checkpoint.root == store.log.root()


def test_proofs_read_from_the_file_are_the_in_memory_trees_for_every_entry(data_dir, gateway, ingest, store):
    for _ in range(30):
        ingest.batch(batch(gateway.chain(97)), peer="test")
    size = store.log.size
    leaves = [e.leaf for e in store.log.entries()]
    reference = MerkleTree(leaves)
    with SQLiteStore.open(data_dir) as cold:  # nothing in memory: every node is read from the file
        cold.checkpoint()
        log = cold.log
        assert log.root() == reference.root() == log.tree_head(size)
        for index in sorted({0, 1, 15, 16, 17, 255, 256, 1000, size // 2, size - 2, size - 1}):
            path = inclusion_path(log.node, index, size)
            assert path == reference.inclusion_path(index)
            assert verify_inclusion(leaves[index], index, size, path, reference.root())
        for old in (1, 2, 3, 16, 100, 1024, 2000, size - 1, size):
            path = log.consistency_path(old, size)
            assert path == reference.consistency_path(old, size)
            assert verify_consistency(old, size, reference.root(old), reference.root(), path)
        chosen = list(range(0, size, 7))
        assert log.multi_proof(chosen, size) == reference.multi_proof(chosen)


def test_every_node_the_log_hands_out_is_the_reference_node(store, gateway, ingest, data_dir):
    ingest.batch(batch(gateway.chain(300)), peer="test")
    reference = MerkleTree(e.leaf for e in store.log.entries())
    with SQLiteStore.open(data_dir) as cold:
        cold.checkpoint()
        for level in range(0, 9):
            for index in range(len(reference) >> level):
                assert cold.log.node(level, index) == reference.node(level, index), (level, index)


def test_receipts_for_the_newest_entries_need_no_read_of_the_file(store, gateway, ingest):
    ingest.batch(batch(gateway.chain(50)), peer="test")
    store._conn.execute("DROP TABLE log_nodes")  # any read of a kept node would fail now
    receipt = store.delivery_receipt("gw-1", 50)
    assert receipt.verify("gw-1", store.envelope("gw-1", 50).raw, store.log.identity.public_key)[1] == 50
    assert WINDOW >= 50


def test_a_store_from_before_the_log_is_logged_when_it_is_opened(data_dir, gateway, ingest, store):
    envelopes = gateway.chain(5)
    ingest.batch(batch(envelopes), peer="test")
    store.add_review(Review("gw-1", 3, "ana", "looked at it", T + 30))
    registry.revoke(store, "gw-1", now=T + 60)
    store.close()
    downgrade_to_schema_2(data_dir)
    with SQLiteStore.open(data_dir) as migrated:
        kinds = [e.kind for e in migrated.log.entries()]
        assert kinds == [EntryKind.REGISTRATION] + [EntryKind.ENVELOPE] * 5 + [EntryKind.REVIEW, EntryKind.REVOCATION]
        assert migrated.log.audit().ok and migrated.checkpoint().checkpoint.tree_size == 8
        assert migrated.delivery_receipt("gw-1", 5) is not None


def test_the_audit_names_each_envelope_edited_deleted_or_moved_in_the_file_afterwards(store, gateway, ingest):
    ingest.batch(batch(gateway.chain(8)), peer="test")
    conn = store._conn
    conn.execute("UPDATE envelopes SET received_at = received_at - 3600 WHERE seq = 2")
    conn.execute("UPDATE envelopes SET raw = CAST(raw || x'00' AS BLOB) WHERE seq = 4")
    conn.execute("DELETE FROM envelopes WHERE seq = 6")
    conn.execute("UPDATE envelopes SET log_index = CASE seq WHEN 7 THEN 8 ELSE 7 END WHERE seq IN (7, 8)")
    problems = store.log.audit().problems
    named = [p for p in problems if p.startswith("entry ")]
    assert [p.split(":")[0] for p in named] == [
        "entry 2 (envelope of gw-1 seq 2)", "entry 4 (envelope of gw-1 seq 4)", "entry 6 (envelope of gw-1 seq 6)",
        "entry 7 (envelope of gw-1 seq 7)", "entry 8 (envelope of gw-1 seq 8)"]
    assert "deleted" in named[2] and "edited" in named[0]
    assert any("do not give the root" in p for p in problems)


def test_a_store_opened_without_its_log_refuses_to_sign_a_checkpoint(data_dir):
    with SQLiteStore.open(data_dir, log=False) as bare:
        with pytest.raises(StoreUnavailableError):
            bare.checkpoint()


def test_an_envelope_entry_is_rebuilt_from_the_row_it_was_stored_as(store, gateway, ingest):
    envelope = gateway.next()
    ingest.batch(batch([envelope]), peer="test")
    (logged_entry,) = [e for e in store.log.entries() if e.kind is EntryKind.ENVELOPE]
    assert logged_entry.leaf == leaf_hash(envelope_entry("gw-1", at_ms(T + 5), envelope.raw))
