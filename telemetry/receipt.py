"""Signed checkpoints and COSE Receipts (RFC 9942, vds 1 = RFC9162_SHA256) over the lender's log.

A checkpoint is the lender's signature over one head of its log (RFC 9162 tree):

    18([ bstr .cbor {1: -8, 4: kid, 395: 1,
                     -65537: {1: tree size, 2: time (ms since the epoch), 3: device heads root, 4: devices}},
         {},
         root,                     # MTH of the log's first `tree size` entries, 32 bytes
         signature ])              # Ed25519 over ["Signature1", protected, h'', root]

A receipt is that same signature with the root detached and a proof in the
unprotected header, so the verifier must recompute the root before the
signature can verify (RFC 9942 §5.2):

    inclusion:   18([ protected, {396: {-1: [bstr .cbor [tree size, leaf index, [* hash]]]}}, nil, signature ])
    consistency: 18([ protected, {396: {-2: [bstr .cbor [old size, tree size, [* hash]]]}}, nil, signature ])

One signature per checkpoint serves every receipt made against it. RFC 9942's
CDDL writes the paths as ``[+ bstr]``; a one-entry log's inclusion path is
empty (RFC 9162), and so is the consistency path from an empty log, so this
module accepts ``[* bstr]``. The ack carries a `DeliveryReceipt` for a
gateway's newest envelope (key 5) and a `CheckpointReference` for a node (key 6).
docs/evidence.md is the normative text.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from telemetry import cbor
from telemetry.cbor import Limits, Tag
from telemetry.cose import decode_sign1, sig_structure
from telemetry.exc import ReceiptError, WireFormatError
from telemetry.identity import Identity, kid_of
from telemetry.logentry import envelope_entry
from telemetry.merkle import (
    HASH_BYTES,
    leaf_hash,
    root_from_consistency,
    root_from_inclusion,
)
from telemetry.numbers import (
    ALG_EDDSA,
    HEADER_ALG,
    HEADER_CHECKPOINT,
    HEADER_KID,
    HEADER_VDP,
    HEADER_VDS,
    KID_BYTES,
    TAG_COSE_SIGN1,
    VDP_CONSISTENCY,
    VDP_INCLUSION,
    VDS_RFC9162_SHA256,
)

MAX_PATH = 64                       # hashes in one path: a tree of 2^64 entries
RECEIPT_LIMITS = Limits(max_bytes=8 * 1024, max_depth=5, max_items=256)
_PROOF_LIMITS = Limits(max_bytes=4 * 1024, max_depth=3, max_items=MAX_PATH + 8)
_SIZE, _TIME, _HEADS_ROOT, _HEADS_SIZE = 1, 2, 3, 4   # the checkpoint map's keys


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One head of the lender's log: its size and root, the lender's time, and the device heads it commits to."""

    tree_size: int
    root: bytes
    time_ms: int
    heads_root: bytes
    heads_size: int

    def header(self, kid: bytes) -> dict:
        """The protected header a checkpoint and all its receipts share."""
        return {HEADER_ALG: ALG_EDDSA, HEADER_KID: kid, HEADER_VDS: VDS_RFC9162_SHA256,
                HEADER_CHECKPOINT: {_SIZE: self.tree_size, _TIME: self.time_ms, _HEADS_ROOT: self.heads_root,
                                    _HEADS_SIZE: self.heads_size}}


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with the lender's signature; `encode()` is what a verifier keeps and pins."""

    checkpoint: Checkpoint
    protected: bytes
    signature: bytes

    @classmethod
    def sign(cls, checkpoint: Checkpoint, lender: Identity) -> SignedCheckpoint:
        protected = cbor.encode(checkpoint.header(lender.kid))
        return cls(checkpoint, protected, lender.sign(sig_structure(protected, checkpoint.root)))

    def encode(self) -> bytes:
        """The COSE_Sign1 with the root attached."""
        return cbor.encode(Tag(TAG_COSE_SIGN1, [self.protected, {}, self.checkpoint.root, self.signature]))

    @property
    def digest(self) -> bytes:
        """SHA-256 of the encoded checkpoint: what a node's ack names it by."""
        return hashlib.sha256(self.encode()).digest()

    def inclusion_receipt(self, index: int, path: list[bytes]) -> bytes:
        """A receipt for the entry at `index`: this checkpoint's signature, the root detached, `path` attached."""
        proof = cbor.encode([self.checkpoint.tree_size, index, list(path)])
        return cbor.encode(Tag(TAG_COSE_SIGN1, [self.protected, {HEADER_VDP: {VDP_INCLUSION: [proof]}}, None,
                                                self.signature]))

    def consistency_receipt(self, old_size: int, path: list[bytes]) -> bytes:
        """A receipt that this checkpoint's tree extends the one of `old_size` entries."""
        proof = cbor.encode([old_size, self.checkpoint.tree_size, list(path)])
        return cbor.encode(Tag(TAG_COSE_SIGN1, [self.protected, {HEADER_VDP: {VDP_CONSISTENCY: [proof]}}, None,
                                                self.signature]))

    @classmethod
    def decode(cls, data: bytes, lender_key: bytes) -> SignedCheckpoint:
        """A checkpoint signed by `lender_key` (32 bytes), from untrusted bytes; ReceiptError otherwise."""
        message, checkpoint = _parse(data, lender_key)
        if message.unprotected != {} or message.payload is None:
            raise ReceiptError("a signed checkpoint has an empty unprotected header and its root attached")
        if message.payload != checkpoint.root:
            raise ReceiptError("the checkpoint's root is not a 32-byte hash")
        if not message.signed_by(lender_key):
            raise ReceiptError("the checkpoint's signature does not verify with the lender's key")
        return cls(checkpoint, message.protected, message.signature)


def _parse(data: bytes, lender_key: bytes):
    """The COSE_Sign1 and the checkpoint its protected header states, with the root taken from the payload or None."""
    if not isinstance(lender_key, bytes) or len(lender_key) != 32:
        raise ReceiptError("the lender's key is a 32-byte Ed25519 public key")
    try:
        message = decode_sign1(data, RECEIPT_LIMITS)
    except WireFormatError as exc:
        raise ReceiptError(f"not a COSE_Sign1: {exc}") from exc
    header = message.header
    if header.get(HEADER_ALG) != ALG_EDDSA or header.get(HEADER_VDS) != VDS_RFC9162_SHA256:
        raise ReceiptError("the protected header must name EdDSA (1: -8) and RFC9162_SHA256 (395: 1)")
    kid = header.get(HEADER_KID)
    if not isinstance(kid, bytes) or len(kid) != KID_BYTES or set(header) != {
            HEADER_ALG, HEADER_KID, HEADER_VDS, HEADER_CHECKPOINT}:
        raise ReceiptError("the protected header is {1: -8, 4: kid, 395: 1, -65537: checkpoint}")
    if kid != kid_of(lender_key):
        raise ReceiptError(f"signed by key {kid.hex()}, not by the lender's key {kid_of(lender_key).hex()}")
    fields = header[HEADER_CHECKPOINT]
    if not isinstance(fields, dict) or set(fields) != {_SIZE, _TIME, _HEADS_ROOT, _HEADS_SIZE} \
            or not all(_uint(fields[k]) for k in (_SIZE, _TIME, _HEADS_SIZE)) \
            or not _hash(fields[_HEADS_ROOT]):
        raise ReceiptError("the checkpoint (-65537) is {1: tree size, 2: time, 3: heads root, 4: devices}")
    root = message.payload if _hash(message.payload) else None
    checkpoint = Checkpoint(fields[_SIZE], root if root is not None else b"", fields[_TIME], fields[_HEADS_ROOT],
                            fields[_HEADS_SIZE])
    if message.protected != cbor.encode(checkpoint.header(kid)):
        raise ReceiptError("the protected header is not deterministically encoded")
    return message, checkpoint


def _uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


def _hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_BYTES


def _proof(message, label: int) -> tuple[int, int, list[bytes]]:
    proofs = message.unprotected.get(HEADER_VDP)
    if message.payload is not None or set(message.unprotected) != {HEADER_VDP} or not isinstance(proofs, dict) \
            or set(proofs) != {label} or not isinstance(proofs[label], list) or len(proofs[label]) != 1 \
            or not isinstance(proofs[label][0], bytes):
        raise ReceiptError(f"a receipt carries one proof at 396: {{{label}: [proof]}} and a detached payload")
    try:
        first, second, path = cbor.decode(proofs[label][0], _PROOF_LIMITS)
    except (WireFormatError, TypeError, ValueError) as exc:
        raise ReceiptError(f"the proof is not [size, size or index, [hashes]]: {exc}") from None
    if not _uint(first) or not _uint(second) or not isinstance(path, list) or len(path) > MAX_PATH \
            or not all(_hash(h) for h in path):
        raise ReceiptError("the proof is [uint, uint, [32-byte hashes]]")
    return first, second, path


def verify_inclusion_receipt(receipt: bytes, entry: bytes, lender_key: bytes) -> tuple[Checkpoint, int]:
    """(the checkpoint, the entry's index) when `receipt` proves `entry` is in the lender's log; ReceiptError otherwise."""
    message, checkpoint = _parse(receipt, lender_key)
    size, index, path = _proof(message, VDP_INCLUSION)
    if size != checkpoint.tree_size:
        raise ReceiptError(f"the proof is for a tree of {size}, the checkpoint's has {checkpoint.tree_size}")
    root = root_from_inclusion(leaf_hash(entry), index, size, path)
    if root is None or not message.signed_by(lender_key, root):
        raise ReceiptError(f"the receipt does not prove this entry at index {index} of the lender's log "
                           f"(the proof and the signed root disagree)")
    return Checkpoint(size, root, checkpoint.time_ms, checkpoint.heads_root, checkpoint.heads_size), index


def verify_consistency_receipt(receipt: bytes, old: Checkpoint, lender_key: bytes) -> Checkpoint:
    """The newer checkpoint when `receipt` proves the lender's log only grew since `old`; ReceiptError otherwise."""
    message, checkpoint = _parse(receipt, lender_key)
    old_size, size, path = _proof(message, VDP_CONSISTENCY)
    if old_size != old.tree_size or size != checkpoint.tree_size:
        raise ReceiptError(f"the proof is from {old_size} to {size} entries, not from the old checkpoint's "
                           f"{old.tree_size} to this one's {checkpoint.tree_size}")
    new_root = root_from_consistency(old.tree_size, size, old.root, path)  # detached: recomputed, then signed
    if new_root is None or not message.signed_by(lender_key, new_root):
        raise ReceiptError(f"the log of {size} entries is not shown to extend the one of {old.tree_size}")
    return Checkpoint(size, new_root, checkpoint.time_ms, checkpoint.heads_root, checkpoint.heads_size)


# --- what the ack carries ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """Ack key 5, for a gateway: [seq, arrival (ms), receipt] for the newest envelope of the batch.

    With the envelope's own bytes the device rebuilds the entry
    ``[1, device, arrival, envelope]`` and can prove, with the lender's key
    alone, that the lender logged it.
    """

    seq: int
    at: int
    receipt: bytes

    def to_cbor(self) -> list:
        return [self.seq, self.at, self.receipt]

    @classmethod
    def from_cbor(cls, item: object) -> DeliveryReceipt:
        if not isinstance(item, list) or len(item) != 3 or not _uint(item[0]) or not _uint(item[1]) \
                or not isinstance(item[2], bytes) or len(item[2]) > RECEIPT_LIMITS.max_bytes:
            raise ReceiptError("a delivery receipt is [seq, arrival ms, receipt bytes]")
        return cls(item[0], item[1], item[2])

    def verify(self, device: str, envelope: bytes, lender_key: bytes) -> tuple[Checkpoint, int]:
        """(checkpoint, index) when this receipt proves `envelope` (the bytes of seq `seq`) was logged."""
        return verify_inclusion_receipt(self.receipt, envelope_entry(device, self.at, envelope), lender_key)


@dataclass(frozen=True, slots=True)
class CheckpointReference:
    """Ack key 6, for a node (its downlink is paid per byte): [log index, tree size, SHA-256 of the checkpoint]."""

    index: int
    tree_size: int
    digest: bytes

    def to_cbor(self) -> list:
        return [self.index, self.tree_size, self.digest]

    @classmethod
    def from_cbor(cls, item: object) -> CheckpointReference:
        if not isinstance(item, list) or len(item) != 3 or not _uint(item[0]) or not _uint(item[1]) \
                or not _hash(item[2]) or item[0] >= item[1]:
            raise ReceiptError("a checkpoint reference is [log index, tree size, 32-byte digest], index < size")
        return cls(item[0], item[1], item[2])
