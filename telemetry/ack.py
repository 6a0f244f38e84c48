"""The lender's answer to a batch: which envelopes it stored, which it had already, and which it refused and why.

    {1: [seqs stored now], 2: [seqs already present], 3: [[index in batch, reason code, text], ...],
     ? 4: a fresh lender token (telemetry.freshness), for the device to put into the envelopes it signs next,
     ? 5: [seq, arrival ms, COSE receipt]: the lender logged the batch's newest envelope (gateways; telemetry.receipt),
     ? 6: [log index, tree size, SHA-256 of the signed checkpoint]: the same, compact (nodes),
     ? 7: the exact bytes of one pending signed command (telemetry.command), nodes under OSCORE only}

Key 7 (added with issue 15) is how a node, which sleeps in PSM and never
polls ``/c``, receives the lender's commands: at most one per ack, at most
`MAX_NODE_COMMAND` bytes, so the ack stays one datagram a BC95 (512 bytes)
takes. The node verifies it like a gateway does (signature by the pinned
lender key, its device, a seq above the last applied, not expired) and answers
in the next envelope it signs. A device that does not know key 7 ignores it
(every decoder here skips unknown keys), and an ack without it is read as before.

The lender builds an `Ack` and encodes it; the agent decodes the same type
from untrusted bytes, for the batch it sent, and deletes exactly stored ∪
already-present. Reason codes are `Reason` values (docs/transport.md).
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from telemetry import cbor
from telemetry.exc import AckFormatError, WireFormatError
from telemetry.freshness import check_token_shape
from telemetry.receipt import CheckpointReference, DeliveryReceipt

STORED, ALREADY, REFUSED, TOKEN, RECEIPT, CHECKPOINT, COMMAND = 1, 2, 3, 4, 5, 6, 7   # the ack map's keys
MAX_NODE_COMMAND = 384              # bytes of one command in a node's ack (key 7): the ack stays one small datagram
MAX_REASON_TEXT = 200                # characters of text per refused envelope


class Reason(enum.IntEnum):
    """Why an envelope was not accepted. The numbers are the ack's reason codes."""

    OK = 0
    MALFORMED = 1
    UNKNOWN_KEY = 2
    BAD_SIGNATURE = 3
    REVOKED = 4
    OVERSIZE = 5
    CONFLICT = 6
    CHAIN = 7
    BINDING = 8      # bound to an enrollment other than the one this lender holds for the device


# Reasons the lender may lift later (enrollment still pending, revocation undone): a device keeps
# such envelopes queued. Every other reason is final for those exact bytes.
RETRYABLE_REASONS = frozenset({Reason.UNKNOWN_KEY, Reason.REVOKED})


def short_text(text: str) -> str:
    """`text` cut to what an ack carries."""
    return text if len(text) <= MAX_REASON_TEXT else text[: MAX_REASON_TEXT - 3] + "..."


@dataclass(frozen=True, slots=True)
class Refusal:
    """One envelope of a batch that was not stored: its index in the batch, the reason code and a text."""

    index: int
    reason: int
    text: str
    seq: int | None = None   # the refused envelope's seq where the decoder knows the batch (not on the wire)

    @property
    def permanent(self) -> bool:
        """Final for these exact bytes: the device stops sending them. An unknown code is treated as retryable."""
        try:
            return Reason(self.reason) not in RETRYABLE_REASONS and self.reason != Reason.OK
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Ack:
    """What happened to each envelope of one batch."""

    stored: tuple[int, ...] = ()
    already: tuple[int, ...] = ()
    refused: tuple[Refusal, ...] = ()
    foreign: frozenset[int] = frozenset()   # decoded only: seqs the lender named that were not in the batch
    token: bytes | None = None              # a fresh lender token (version 2 devices keep the newest)
    receipt: DeliveryReceipt | None = None  # the lender logged the newest envelope: the gateway keeps this
    checkpoint: CheckpointReference | None = None  # the same for a node, by reference
    command: bytes | None = None            # one pending signed command for a node (still to be verified by it)

    @property
    def delete(self) -> frozenset[int]:
        """Exactly what the device may delete: stored ∪ already-present (within the batch)."""
        return frozenset(self.stored) | frozenset(self.already)

    def encode(self) -> bytes:
        """The ack map, deterministically encoded."""
        item: dict = {
            STORED: list(self.stored),
            ALREADY: list(self.already),
            REFUSED: [[r.index, int(r.reason), r.text] for r in self.refused],
        }
        if self.token is not None:
            item[TOKEN] = self.token
        if self.receipt is not None:
            item[RECEIPT] = self.receipt.to_cbor()
        if self.checkpoint is not None:
            item[CHECKPOINT] = self.checkpoint.to_cbor()
        if self.command is not None:
            item[COMMAND] = bytes(self.command)
        return cbor.encode(item)

    @classmethod
    def decode(cls, body: bytes, batch: Sequence[int]) -> Ack:
        """The ack for the batch whose seqs are `batch`, in sending order, from untrusted bytes; AckFormatError otherwise.

        Seqs named that were not in the batch go to `foreign` (to be ignored,
        never deleted); each refusal carries its envelope's seq. An envelope both accepted and
        refused, or refused twice, makes the whole ack invalid.
        """
        limits = cbor.Limits(max_bytes=64 * 1024 + 64 * len(batch), max_depth=4, max_items=8 * len(batch) + 16)
        try:
            decoded = cbor.decode(bytes(body), limits)
        except WireFormatError as exc:
            raise AckFormatError(f"ack is not well-formed CBOR: {exc}") from exc
        if not isinstance(decoded, dict) or not all(type(k) is int for k in decoded):
            raise AckFormatError("ack must be a CBOR map with integer keys")
        stored = _uint_list(decoded.get(STORED, []), "stored (1)")
        already = _uint_list(decoded.get(ALREADY, []), "already present (2)")
        entries = decoded.get(REFUSED, [])
        if not isinstance(entries, list):
            raise AckFormatError("ack rejected (3) must be an array")
        refused: list[Refusal] = []
        for entry in entries:
            if (not isinstance(entry, list) or len(entry) != 3 or type(entry[0]) is not int
                    or type(entry[1]) is not int or entry[1] < 0 or not isinstance(entry[2], str)):
                raise AckFormatError("ack rejected (3) entries must be [index, reason code, text]")
            index, reason, text = entry
            if not 0 <= index < len(batch):
                raise AckFormatError(f"ack rejects index {index} of a batch of {len(batch)}")
            refused.append(Refusal(index, reason, text[:MAX_REASON_TEXT], batch[index]))
        refused_seqs = [r.seq for r in refused]
        if len(set(refused_seqs)) != len(refused_seqs):
            raise AckFormatError("ack rejects one envelope twice")
        if set(refused_seqs) & (set(stored) | set(already)):
            raise AckFormatError("ack both accepts and rejects the same envelope")
        token = decoded.get(TOKEN)
        if token is not None:
            try:
                check_token_shape(token)
            except ValueError as exc:
                raise AckFormatError(f"ack token (4): {exc}") from None
        try:
            receipt = None if RECEIPT not in decoded else DeliveryReceipt.from_cbor(decoded[RECEIPT])
            checkpoint = None if CHECKPOINT not in decoded else CheckpointReference.from_cbor(decoded[CHECKPOINT])
        except WireFormatError as exc:
            raise AckFormatError(f"ack receipt (5) or checkpoint (6): {exc}") from None
        command = decoded.get(COMMAND)
        if command is not None and (not isinstance(command, bytes) or not 0 < len(command) <= MAX_NODE_COMMAND):
            raise AckFormatError(f"ack command (7) must be 1..{MAX_NODE_COMMAND} bytes (one signed command)")
        sent = set(batch)
        return cls(tuple(s for s in stored if s in sent), tuple(s for s in already if s in sent), tuple(refused),
                   frozenset((set(stored) | set(already)) - sent), token, receipt, checkpoint, command)


def _uint_list(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
        raise AckFormatError(f"ack {what} must be an array of unsigned integers")
    return value
