"""Log entries, signed checkpoints and COSE receipts: what a third party checks with the lender's public key alone."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import cbor
from telemetry.ack import Ack
from telemetry.cbor import Tag
from telemetry.exc import ReceiptError, SchemaError
from telemetry.identity import Identity
from telemetry.logentry import (
    DeviceHead,
    Enrollment,
    EnrollmentEvidence,
    EntryKind,
    LogEntry,
    Registration,
    ReviewNote,
    envelope_entry,
)
from telemetry.merkle import MerkleTree, leaf_hash
from telemetry.numbers import HEADER_CHECKPOINT, HEADER_VDP, HEADER_VDS, VDP_INCLUSION, VDS_RFC9162_SHA256
from telemetry.receipt import (
    Checkpoint,
    CheckpointReference,
    DeliveryReceipt,
    SignedCheckpoint,
    verify_consistency_receipt,
    verify_inclusion_receipt,
)

LENDER = Identity(bytes(range(32)))
OTHER = Identity(bytes(range(1, 33)))
ENTRIES = [envelope_entry("gw-1", 1_767_225_600_000 + i, b"envelope %d" % i) for i in range(37)]
TREE = MerkleTree(leaf_hash(e) for e in ENTRIES)


def signed(size: int, identity: Identity = LENDER) -> SignedCheckpoint:
    return SignedCheckpoint.sign(Checkpoint(size, TREE.root(size), 1_767_225_700_000 + size, bytes(32), 1), identity)


EVIDENCE = EnrollmentEvidence(b"request", b"response", bytes(range(32)))
KINDS = [
    LogEntry(EntryKind.ENVELOPE, "gw-1", 5, b"\xd2raw"),
    LogEntry(EntryKind.REGISTRATION, "gw-1", 6, Registration(bytes(32), "loan-1")),
    LogEntry(EntryKind.REGISTRATION, "gw-1", 6, Registration(bytes(32), "loan-1", bytes(8), EVIDENCE)),
    LogEntry(EntryKind.ENROLLMENT, "node-1", 7, Enrollment(bytes(8), EVIDENCE)),
    LogEntry(EntryKind.REVOCATION, "gw-1", 8, None),
    LogEntry(EntryKind.RELEASE, "gw-1", 9, None),
    LogEntry(EntryKind.REVIEW, "gw-1", 10, ReviewNote(17, "ana", "power cut, confirmed by the borrower")),
]


@pytest.mark.parametrize("entry", KINDS, ids=lambda e: e.kind.name.lower())
def test_every_kind_of_entry_has_one_encoding_and_decodes_to_itself(entry):
    raw = entry.encode()
    assert LogEntry.decode(raw) == entry
    assert cbor.decode(raw)[:3] == [entry.kind.value, entry.device, entry.at]


def test_an_envelope_entry_is_the_cbor_array_of_kind_device_arrival_and_bytes():
    assert envelope_entry("gw-1", 1_767_225_600_123, b"\x01\x02") == cbor.encode([1, "gw-1", 1_767_225_600_123, b"\x01\x02"])


@pytest.mark.parametrize("data", [
    cbor.encode([9, "gw-1", 1, {}]), cbor.encode([1, "gw-1", -1, b""]), cbor.encode([4, "gw-1", 1, {1: 2}]),
    cbor.encode([2, "gw-1", 1, {1: bytes(31), 2: "a"}]), cbor.encode([2, "gw-1", 1, {1: bytes(32), 2: "a", 4: b"r"}]),
    cbor.encode([1, "", 1, b""]), cbor.encode({1: 2}), b"\x84\x01\x64gw-1\x18\x05\x40",  # at=5 not in its shortest form
])
def test_malformed_or_non_deterministic_entries_are_refused(data):
    with pytest.raises(SchemaError):
        LogEntry.decode(data)


def test_a_device_head_counts_entries_and_keeps_the_highest_seq():
    head = DeviceHead("gw-1", 0, 0, None).after(4, None).after(9, 12).after(11, 3)
    assert head == DeviceHead("gw-1", 3, 11, 12)
    assert cbor.decode(head.encode()) == ["gw-1", 3, 11, 12]


def test_a_checkpoint_is_the_lenders_signature_over_the_root_with_size_time_and_heads_in_the_protected_header():
    checkpoint = signed(37)
    item = cbor.decode(checkpoint.encode())
    assert isinstance(item, Tag) and item.number == 18
    protected, unprotected, payload, _ = item.value
    header = cbor.decode(protected)
    assert header[1] == -8 and header[4] == LENDER.kid and header[HEADER_VDS] == VDS_RFC9162_SHA256
    assert header[HEADER_CHECKPOINT] == {1: 37, 2: 1_767_225_700_037, 3: bytes(32), 4: 1}
    assert unprotected == {} and payload == TREE.root()
    assert SignedCheckpoint.decode(checkpoint.encode(), LENDER.public_key) == checkpoint


def test_a_checkpoint_is_refused_under_another_key_and_when_any_byte_changes():
    data = checkpoint = signed(20).encode()
    with pytest.raises(ReceiptError, match="not by the lender's key"):
        SignedCheckpoint.decode(data, OTHER.public_key)
    forged = signed(20, OTHER).encode()
    with pytest.raises(ReceiptError):
        SignedCheckpoint.decode(forged, LENDER.public_key)
    for position in range(len(checkpoint)):
        changed = bytearray(checkpoint)
        changed[position] ^= 0x01
        with pytest.raises(ReceiptError):
            SignedCheckpoint.decode(bytes(changed), LENDER.public_key)


def test_an_inclusion_receipt_has_the_rfc_9942_shape_with_the_root_detached():
    receipt = signed(37).inclusion_receipt(12, TREE.inclusion_path(12, 37))
    protected, unprotected, payload, signature = cbor.decode(receipt).value
    assert payload is None and signature == signed(37).signature
    (proof,) = unprotected[HEADER_VDP][VDP_INCLUSION]
    assert cbor.decode(proof) == [37, 12, TREE.inclusion_path(12, 37)]
    assert cbor.decode(protected)[HEADER_VDS] == VDS_RFC9162_SHA256


@settings(max_examples=150)
@given(st.data())
def test_an_inclusion_receipt_proves_its_entry_and_nothing_else(data):
    size = data.draw(st.integers(1, len(ENTRIES)))
    index = data.draw(st.integers(0, size - 1))
    receipt = signed(size).inclusion_receipt(index, TREE.inclusion_path(index, size))
    checkpoint, proven = verify_inclusion_receipt(receipt, ENTRIES[index], LENDER.public_key)
    assert (proven, checkpoint.tree_size, checkpoint.root) == (index, size, TREE.root(size))
    with pytest.raises(ReceiptError):
        verify_inclusion_receipt(receipt, ENTRIES[index] + b"\x00", LENDER.public_key)
    with pytest.raises(ReceiptError):
        verify_inclusion_receipt(receipt, ENTRIES[index], OTHER.public_key)
    if size > 1:
        with pytest.raises(ReceiptError):
            verify_inclusion_receipt(receipt, ENTRIES[(index + 1) % size], LENDER.public_key)


def test_a_consistency_receipt_proves_the_log_only_grew_since_an_older_checkpoint():
    old = signed(13).checkpoint
    receipt = signed(37).consistency_receipt(13, TREE.consistency_path(13, 37))
    assert verify_consistency_receipt(receipt, old, LENDER.public_key).root == TREE.root(37)
    rewritten = Checkpoint(13, leaf_hash(b"another history"), old.time_ms, old.heads_root, old.heads_size)
    with pytest.raises(ReceiptError):
        verify_consistency_receipt(receipt, rewritten, LENDER.public_key)
    with pytest.raises(ReceiptError):
        verify_consistency_receipt(receipt, signed(12).checkpoint, LENDER.public_key)


def test_a_one_entry_log_proves_its_entry_with_an_empty_path():
    single = SignedCheckpoint.sign(Checkpoint(1, leaf_hash(ENTRIES[0]), 1, bytes(32), 1), LENDER)
    assert verify_inclusion_receipt(single.inclusion_receipt(0, []), ENTRIES[0], LENDER.public_key)[1] == 0


def test_the_ack_carries_a_receipt_for_a_gateway_and_a_checkpoint_reference_for_a_node():
    receipt = DeliveryReceipt(3, 1_767_225_600_002, signed(37).inclusion_receipt(2, TREE.inclusion_path(2)))
    ack = Ack.decode(Ack(stored=(1, 2, 3), receipt=receipt).encode(), [1, 2, 3])
    assert ack.receipt == receipt and ack.checkpoint is None
    assert ack.receipt.verify("gw-1", b"envelope 2", LENDER.public_key)[1] == 2
    reference = CheckpointReference(2, 37, signed(37).digest)
    node_ack = Ack(stored=(3,), checkpoint=reference).encode()
    assert Ack.decode(node_ack, [3]).checkpoint == reference
    assert len(node_ack) < 64, "a node's ack stays small: its downlink is paid per byte"
