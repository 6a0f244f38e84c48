"""Ingest decisions: what the lender does with one batch of envelopes, as plain code over a store.

A batch is the body of one POST to ``/t``: a CBOR array of byte strings, each
one envelope's exact bytes (docs/transport.md). `Ingest.batch` decodes it
within telemetry's limits, verifies each envelope against the registry (only
active devices' keys; a revoked device's gets reason 4), checks it against the
stored chain (prev-hash link and boot counter wherever a neighbour seq is
stored; arrival out of order is normal, alarms go first), stores it, and
answers with an ack:

    {1: [seqs stored now], 2: [seqs already present], 3: [[index, reason code, text], ...], ? 4: token,
     ? 5: a receipt for the newest envelope (gateways), ? 6: a reference to it (nodes)}

Every envelope stored is also an entry of the lender's transparency log
(lender.evidence.log), in the same transaction; the receipt in the ack proves
the lender logged the batch's newest envelope (telemetry.receipt).

Reason codes are `telemetry.envelope.Reason` values. What is refused goes to
lender.evidence.refusals: a refusal a registered device's key vouches for (a
valid signature, or the request's OSCORE context) is kept in the quarantine
(raw bytes, reason, detail, peer, time) in space junk may not take; junk is
sampled and counted. What is kept of a refused body is capped per route
(`max_kept`: the body cap of ``/t``, a node envelope's on ``/n``).

`NodeIngest` is the same for NB-IoT nodes on plain-CoAP ``/n``: one envelope per
request, verified only against the keys of nodes registered without an OSCORE
context (a device that has one is refused there: it speaks OSCORE, a gateway to
``/t``, a node to ``/n`` through its context, lender.coap.node).

No event loop here: the CoAP floor (lender.coap) runs these in its one ingest
thread and turns the `BatchOutcome` into a CoAP response.
"""
from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from lender.evidence.refusals import Refusals
from lender.evidence.registry import Device, KeyStorage
from lender.evidence.store import (
    INT64_MAX,
    EvidenceStore,
    Refused,
    StoredEnvelope,
)
from telemetry import cbor
from telemetry.ack import Ack, Refusal, short_text
from telemetry.cbor import DEFAULT_LIMITS, Limits
from telemetry.cose import parse_sign1
from telemetry.envelope import GENESIS, Envelope, GapReason, Reason, Verdict, verify
from telemetry.exc import LimitError, WireFormatError
from telemetry.freshness import issue_token
from telemetry.clock import iso_utc
from telemetry.command import RECORD_PREFIX
from telemetry.identity import DeviceKey
from telemetry.rotation import NEXT_KEY, Handover, RotationError, read_certification, read_handover
from telemetry.receipt import CheckpointReference, DeliveryReceipt

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 1024   # bytes of one batch; the agent's default batch is 16 KiB
MAX_BATCH_ENVELOPES = 4095     # telemetry's item cap (4096) less the array itself


class Status(enum.Enum):
    """The answer to a whole request (the server maps these to CoAP codes)."""

    CHANGED = "2.04"              # the batch was processed; the ack says what happened to each envelope
    BAD_REQUEST = "4.00"          # the body is not a CBOR array of byte strings
    UNAUTHORIZED = "4.01"         # the whole request comes from a device that is not registered
    FORBIDDEN = "4.03"            # the whole request comes from a revoked device
    TOO_LARGE = "4.13"            # the body is over the cap
    UNSUPPORTED_FORMAT = "4.15"   # a content-format other than application/cbor (60)


_STATUS_REASON = {
    Status.BAD_REQUEST: Reason.MALFORMED,
    Status.UNAUTHORIZED: Reason.UNKNOWN_KEY,
    Status.FORBIDDEN: Reason.REVOKED,
    Status.TOO_LARGE: Reason.OVERSIZE,
    Status.UNSUPPORTED_FORMAT: Reason.MALFORMED,
}


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What happened to one request: its status, a diagnostic for refusals, and the ack's three lists."""

    status: Status
    diagnostic: str = ""
    stored: tuple[int, ...] = ()
    already: tuple[int, ...] = ()
    refused: tuple[Refusal, ...] = ()
    token: bytes | None = None    # a fresh lender token for the device that sent the batch
    receipt: DeliveryReceipt | None = None         # the lender logged the batch's newest envelope (a gateway's ack)
    checkpoint: CheckpointReference | None = None  # the same, by reference (a node's ack: its downlink is dear)

    def ack(self) -> bytes:
        """The ack map for a 2.04 answer (telemetry.ack), deterministically encoded CBOR."""
        return Ack(self.stored, self.already, self.refused, token=self.token, receipt=self.receipt,
                   checkpoint=self.checkpoint).encode()


def binding_violation(envelope: Envelope, device: Device | None) -> str | None:
    """Why `envelope` may not be stored for `device` under its enrollment binding, or None.

    A device enrolled here carries this lender's binding in every version 2
    envelope; one registered by hand has none to carry. An envelope bound to
    another enrollment (another lender, or an earlier pledge) is never this
    lender's evidence. Version 1 envelopes carry no binding (legacy; the risk
    view marks a device that goes back to them).
    """
    if device is None or envelope.version < 2:
        return None
    if envelope.binding == device.binding:
        return None
    if device.binding is None:
        return (f"{envelope.device} seq {envelope.seq} is bound to enrollment {envelope.binding.hex()}, which this "
                "lender did not make (the device was registered by hand here)")
    named = "no enrollment" if envelope.binding is None else f"enrollment {envelope.binding.hex()}"
    return (f"{envelope.device} seq {envelope.seq} names {named}; this lender enrolled it as "
            f"{device.binding.hex()}")


def chain_violation(envelope: Envelope, before: StoredEnvelope | Envelope | None, after: StoredEnvelope | None
                    ) -> str | None:
    """Why `envelope` cannot sit between its stored neighbours seq-1 (`before`) and seq+1 (`after`), or None.

    Only links whose both ends are stored are checked: a missing neighbour is a
    gap (shown by `lender gaps`), not a violation. A spool-reset gap record may
    link to genesis, as in telemetry.chain.
    """
    restarts = envelope.gap is not None and envelope.gap.reason == GapReason.SPOOL_RESET.value and envelope.prev == GENESIS
    if before is not None:
        if before.boot > envelope.boot:
            return f"boot counter goes back: seq {before.seq} has boot {before.boot}, seq {envelope.seq} has {envelope.boot}"
        if envelope.prev != before.digest and not restarts:
            return (f"seq {envelope.seq} does not link to the stored seq {before.seq}: prev {envelope.prev.hex()}, "
                    f"digest of seq {before.seq} {before.digest.hex()}")
    if after is not None:
        if envelope.boot > after.boot:
            return f"boot counter goes back: seq {envelope.seq} has boot {envelope.boot}, seq {after.seq} has {after.boot}"
        if after.prev != envelope.digest and not after.restarts_chain:
            return (f"the stored seq {after.seq} links to {after.prev.hex()}, not to this envelope "
                    f"(digest {envelope.digest.hex()})")
    return None


class ActiveKeys(Mapping[bytes, DeviceKey]):
    """The active devices' keys by kid (those `admits` accepts), read from the registry again whenever it changed.

    With the keys rotations retired (lender.evidence.registry.RetiredKey): each
    key signs only its span of its device's seqs (`spans`), the key in force
    those above its handover, a retired key those up to the handover that
    retired it.
    """

    def __init__(self, store: EvidenceStore, admits: Callable[[Device], bool] = lambda device: True) -> None:
        self._store = store
        self._admits = admits
        self._generation: int | None = None
        self._keys: dict[bytes, DeviceKey] = {}
        self.spans: dict[bytes, tuple[int, int, int | None]] = {}   # kid -> (first seq, last seq, retired at seq)

    def refresh(self) -> None:
        generation = self._store.registry_generation()
        if generation != self._generation:
            devices = [d for d in self._store.devices() if d.active and self._admits(d)]
            self._keys = {d.kid: d.key() for d in devices}
            self.spans = {}
            rotated = {d.device for d in devices if d.key_since is not None}
            if rotated:
                first: dict[str, int] = {}
                for retired in self._store.retired_keys():   # oldest handover first
                    if retired.device in rotated:
                        self._keys[retired.kid] = retired.key()
                        self.spans[retired.kid] = (first.get(retired.device, 0), retired.through_seq,
                                                   retired.through_seq)
                        first[retired.device] = retired.through_seq + 1
                for d in devices:
                    if d.key_since is not None:
                        self.spans[d.kid] = (d.key_since + 1, INT64_MAX, None)
            self._generation = generation

    def out_of_span(self, envelope: Envelope) -> Verdict | None:
        """The refusal of a verified envelope its key may not sign at its seq (a rotation's span), else None."""
        span = self.spans.get(envelope.kid)
        if span is None or span[0] <= envelope.seq <= span[1]:
            return None
        if span[2] is not None and envelope.seq > span[2]:
            return Verdict(Reason.REVOKED, f"{envelope.device} seq {envelope.seq} is signed by the key "
                                           f"{envelope.kid.hex()}, retired at the key handover at seq {span[2]}",
                           envelope)
        return Verdict(Reason.CHAIN, f"{envelope.device} seq {envelope.seq} is signed by the key {envelope.kid.hex()}, "
                                     f"which signs only seqs {span[0]}..{span[1]} (a key handover's span)", envelope)

    def __getitem__(self, kid: bytes) -> DeviceKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Ingest:
    """Decides and records the fate of every request to ``/t``; one instance per store, one thread at a time."""

    def __init__(
        self,
        store: EvidenceStore,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        envelope_limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], float] = time.time,
        token_key: bytes | None = None,
        refusals: Refusals | None = None,
        data_dir: str | os.PathLike | None = None,
        require_hardware_key: bool | None = None,
    ) -> None:
        if max_body < 1:
            raise ValueError("max_body must be positive")
        self.store = store
        self.max_body = max_body
        self.max_kept = max_body  # bytes of a refused body kept in the quarantine, at most
        self.refusals = refusals if refusals is not None else Refusals()
        self.envelope_limits = envelope_limits
        self.body_limits = Limits(max_bytes=max_body, max_depth=1, max_items=MAX_BATCH_ENVELOPES + 1)
        self.keys = ActiveKeys(store)
        self._clock = clock
        self.token_key = token_key
        # where the enrollment records are (a tpm-attested device's attestation key: a handover's certification is
        # checked with it), default the store's own data directory; True refuses a tpm-attested device's handover
        # to a key its TPM did not certify, None reads require_hardware_key in DATA/enroll/policy.toml
        self.data_dir = data_dir if data_dir is not None else getattr(store, "data_dir", None)
        self.require_hardware_key = require_hardware_key

    # --- whole requests ---

    def refuse_request(
        self, status: Status, detail: str, body: bytes, *, peer: str, size: int | None = None,
        attributable: bool = False,
    ) -> BatchOutcome:
        """Refuse a whole request; its body (at most `max_kept` bytes of it) goes to the quarantine's policy
        (`attributable`: the request came through a registered device's OSCORE context)."""
        self.refusals.record(self.store, self._request_refusal(status, detail, body, peer=peer, size=size,
                                                               attributable=attributable))
        self.refusals.note(f"a request ({status.value})", peer, _STATUS_REASON[status].name.lower(), detail)
        return BatchOutcome(status, detail)

    def _request_refusal(self, status: Status, detail: str, body: bytes, *, peer: str, size: int | None = None,
                         attributable: bool = False) -> Refused:
        return Refused(kind="request", reason=_STATUS_REASON[status], detail=detail, raw=bytes(body[: self.max_kept]),
                       peer=peer, received_at=self._clock(), size=len(body) if size is None else size,
                       attributable=attributable)

    def flush_refusals(self) -> int:
        """Write the junk refusals counted since the last flush to the store's counts (in the store's thread)."""
        return self.refusals.flush(self.store)

    def batch(self, body: bytes, *, peer: str, sender: str | None = None) -> BatchOutcome:
        """Process one POSTed batch from `peer`; `sender` is the OSCORE-authenticated device, if any."""
        vouched = sender is not None  # the request came through a registered device's OSCORE context
        if len(body) > self.max_body:
            return self.refuse_request(
                Status.TOO_LARGE, f"body of {len(body)} bytes is over the {self.max_body}-byte cap", body, peer=peer,
                attributable=vouched)
        items = self._items(body)
        if isinstance(items, str):
            return self.refuse_request(Status.BAD_REQUEST, items, body, peer=peer, attributable=vouched)
        if sender is not None:
            device = self.store.device(sender)
            if device is None:
                return self.refuse_request(
                    Status.UNAUTHORIZED, f"device {sender} has an OSCORE context but is not registered", body, peer=peer,
                    attributable=vouched)
            if not device.active:
                return self.refuse_request(Status.FORBIDDEN, f"device {sender} is revoked", body, peer=peer,
                                           attributable=vouched)
        self.keys.refresh()
        verdicts = [self._verdict(raw) for raw in items]  # CPU-bound: outside the write transaction
        whole = None if sender is not None else self._single_bad_device(verdicts)
        received_at = self._clock()
        stored: list[int] = []
        already: list[int] = []
        refused: list[Refusal] = []
        rows: dict[str, Device | None] = {}  # registry rows, read once per batch
        # what this batch stored, by (device, seq): the row seq-1's check would read back, known already (a batch is
        # usually one device's run of seqs); chain_violation reads its seq, boot and digest, which are the envelope's
        just_stored: dict[tuple[str, int], Envelope] = {}
        rotated = False   # a handover in this batch: later envelopes are verified again with the new key
        with self.store.transaction():
            for index, (raw, verdict) in enumerate(zip(items, verdicts)):
                if rotated:
                    verdict = verdicts[index] = self._verdict(raw)
                envelope = verdict.envelope
                if envelope is not None and names_a_key(envelope) and self._races(verdict):
                    refused.append(self._refuse(index, verdict.reason if not verdict.ok else Reason.REVOKED,
                                                f"a second key handover from {envelope.kid.hex()}, the key retired at "
                                                f"{envelope.device}'s first: the old key is in two hands", raw,
                                                envelope, peer, received_at, True))
                    continue
                if not verdict.ok:
                    refused.append(self._refuse(index, verdict.reason, verdict.detail, raw, envelope, peer, received_at,
                                                vouched or self._signed_by_a_registered_key(raw)))
                    continue
                existing = self.store.envelope(envelope.device, envelope.seq)
                if existing is not None:
                    if existing.raw == envelope.raw:
                        already.append(envelope.seq)
                    else:
                        refused.append(self._refuse(
                            index, Reason.CONFLICT,
                            f"{envelope.device} seq {envelope.seq} is stored already with other bytes "
                            f"(stored digest {existing.digest.hex()}, this one {envelope.digest.hex()})",
                            raw, envelope, peer, received_at, True))
                    continue
                if envelope.device not in rows:
                    rows[envelope.device] = self.store.device(envelope.device)
                unbound = binding_violation(envelope, rows[envelope.device])
                if unbound is not None:
                    refused.append(self._refuse(index, Reason.BINDING, unbound, raw, envelope, peer, received_at, True))
                    continue
                before = None if envelope.seq <= 0 else just_stored.get((envelope.device, envelope.seq - 1)) \
                    or self.store.envelope(envelope.device, envelope.seq - 1)
                after = self.store.envelope(envelope.device, envelope.seq + 1) if envelope.seq < INT64_MAX else None
                problem = chain_violation(envelope, before, after)
                handover = None
                if problem is None and names_a_key(envelope):
                    handover, unanswered = self._handover(envelope, rows[envelope.device], received_at)
                    if handover is not None:
                        handover_storage, unanswered = self._new_key_storage(handover, rows[envelope.device])
                        handover = None if unanswered is not None else handover
                    if unanswered is not None:
                        refused.append(self._refuse(index, Reason.MALFORMED, unanswered, raw, envelope, peer,
                                                    received_at, True))
                        continue
                if problem is not None:
                    refused.append(self._refuse(index, Reason.CHAIN, problem, raw, envelope, peer, received_at, True))
                elif self.store.insert_envelope(envelope, received_at=received_at, peer=peer):
                    stored.append(envelope.seq)
                    just_stored[envelope.device, envelope.seq] = envelope
                    if handover is not None:
                        storage, note = handover_storage
                        rows[envelope.device] = self.store.switch_key(
                            envelope.device, handover.new_key.public_key, envelope.seq, handover.command_digest,
                            received_at, key_storage=storage, note=note)
                        log.info("%s hands over from key %s to %s at seq %d (rotate-key command %d)",
                                 envelope.device, envelope.kid.hex(), handover.new_key.kid.hex(), envelope.seq,
                                 handover.command_seq)
                        self.keys.refresh()
                        rotated = True
                else:  # cannot happen inside the exclusive transaction; said plainly if a backend breaks that
                    already.append(envelope.seq)
        if whole is not None:
            status, detail = whole
            self.refusals.note(f"a request ({status.value})", peer, _STATUS_REASON[status].name.lower(), detail)
            return BatchOutcome(status, detail, refused=tuple(refused))
        if refused:
            self.refusals.note(
                f"{len(refused)} of a batch's {len(items)} envelopes", peer, refused[0].reason.name.lower(),
                f"{len(stored)} stored, {len(already)} already present; "
                + ", ".join(f"#{r.index}: {r.reason.name}" for r in refused[:5]))
        receipt, checkpoint = self._receipt(verdicts, stored + already)
        return BatchOutcome(Status.CHANGED, "", tuple(stored), tuple(already), tuple(refused),
                            self._token(sender, verdicts), receipt, checkpoint)

    def refuse_unvouched(self, body: bytes, *, peer: str) -> BatchOutcome | None:
        """The answer to an unauthenticated batch that no registered key vouches for, decided without the
        evidence's writer (the strangers' lane runs this on a store connection of its own); None when a key
        vouches for any of its envelopes (a valid signature): then the batch goes to `batch` in the ingest thread.
        For junk the answer is the one `batch` would give."""
        if len(body) > self.max_body:
            return self.refuse_request(
                Status.TOO_LARGE, f"body of {len(body)} bytes is over the {self.max_body}-byte cap", body, peer=peer)
        items = self._items(body)
        if isinstance(items, str):
            return self.refuse_request(Status.BAD_REQUEST, items, body, peer=peer)
        self.keys.refresh()
        verdicts = [self._verdict(raw) for raw in items]
        if any(verdict.ok or self._signed_by_a_registered_key(raw) for raw, verdict in zip(items, verdicts)):
            return None
        received_at = self._clock()
        refused = tuple(self._refuse(index, verdict.reason, verdict.detail, raw, verdict.envelope, peer, received_at,
                                     False) for index, (raw, verdict) in enumerate(zip(items, verdicts)))
        whole = self._single_bad_device(verdicts)
        if whole is not None:
            status, detail = whole
            self.refusals.note(f"a request ({status.value})", peer, _STATUS_REASON[status].name.lower(), detail)
            return BatchOutcome(status, detail, refused=refused)
        if refused:
            self.refusals.note(f"{len(refused)} of a batch's {len(items)} envelopes", peer,
                               refused[0].reason.name.lower(), ", ".join(f"#{r.index}: {r.reason.name}"
                                                                         for r in refused[:5]))
        return BatchOutcome(Status.CHANGED, "", refused=refused)

    compact_receipts = False   # nodes get a `CheckpointReference`, gateways the receipt itself

    def _receipt(self, verdicts: list[Verdict], delivered: list[int]
                 ) -> tuple[DeliveryReceipt | None, CheckpointReference | None]:
        """The ack's proof that the lender logged the newest envelope delivered, when the batch is one device's."""
        named = {v.envelope.device for v in verdicts if v.ok}
        if not delivered or len(named) != 1:
            return None, None
        (device,) = named
        if self.compact_receipts:
            return None, self.store.checkpoint_reference(device, max(delivered))
        return self.store.delivery_receipt(device, max(delivered)), None

    def _token(self, sender: str | None, verdicts: list[Verdict]) -> bytes | None:
        """A fresh token for the device behind the batch: the OSCORE sender, else the one device its envelopes name."""
        if self.token_key is None:
            return None
        if sender is None:
            named = {v.envelope.device for v in verdicts if v.ok}
            if len(named) != 1:
                return None
            (sender,) = named
        return issue_token(self.token_key, sender, self._clock())

    # --- steps ---

    def _items(self, body: bytes) -> list[bytes] | str:
        """The batch's envelopes, or the diagnostic text for a body that is not a batch."""
        try:
            decoded = cbor.decode(body, self.body_limits)
        except LimitError as exc:
            return (f"body must be a flat CBOR array of at most {MAX_BATCH_ENVELOPES} byte strings "
                    f"(one per envelope): {exc}")
        except WireFormatError as exc:
            return f"body is not well-formed CBOR: {exc}"
        if not isinstance(decoded, list):
            return f"body must be a CBOR array of byte strings (one per envelope), got {_kind(decoded)}"
        for index, item in enumerate(decoded):
            if not isinstance(item, bytes):
                return f"body must be a CBOR array of byte strings: item {index} is {_kind(item)}"
        return decoded

    def _verdict(self, raw: bytes) -> Verdict:
        try:
            verdict = verify(raw, self.keys, self.envelope_limits)
        except Exception as exc:  # a decoder bug must cost one envelope, never the server
            log.exception("envelope verification failed unexpectedly; refusing it as malformed")
            return Verdict(Reason.MALFORMED, f"envelope could not be decoded ({type(exc).__name__})")
        envelope = verdict.envelope
        if verdict.reason is Reason.UNKNOWN_KEY:
            holder = self.store.device_by_kid(envelope.kid)
            if holder is not None and not holder.active:
                return Verdict(Reason.REVOKED, f"the key {envelope.kid.hex()} of device {holder.device} is revoked",
                               envelope)
        if verdict.ok and (envelope.seq > INT64_MAX or envelope.boot > INT64_MAX):
            return Verdict(Reason.MALFORMED, f"seq {envelope.seq} or boot {envelope.boot} is above 2**63-1, "
                                             "which no pledgewatch device reaches", envelope)
        if verdict.ok and self.keys.spans:
            return self.keys.out_of_span(envelope) or verdict
        return verdict

    def _handover(self, envelope: Envelope, device: Device | None, received_at: float
                  ) -> tuple[Handover | None, str | None]:
        """(the handover, None) when `envelope`, signed by the device's key in force, hands over to a new key
        answering a rotate-key command this lender issued to it, unexpired when the device acted on it; else
        (None, why it is refused)."""
        try:
            handover = read_handover(envelope)
        except RotationError as exc:
            return None, f"a broken key handover: {exc}"
        if device is None or envelope.kid != device.kid:
            return None, f"a key handover signed by {envelope.kid.hex()}, not {envelope.device}'s key in force"
        issued = [c for c in self.store.issued_commands(envelope.device) if c.digest == handover.command_digest]
        if not issued or issued[0].kind != "rotate-key" or issued[0].seq != handover.command_seq:
            return None, (f"a key handover answering command {handover.command_seq} "
                          f"({handover.command_digest.hex()[:16]}...), which is no rotate-key command this lender "
                          f"issued to {envelope.device}")
        # when the device acted: the time it signed on the answer, else when the lender handed the command out (it
        # acts at once, and refuses an expired one itself), else now; a gateway that was offline for days with an
        # unsynchronized clock still hands over when it received the command in time
        signed = next((r.time for r in envelope.records if r.name == RECORD_PREFIX + "digest" and r.time is not None),
                      None)
        acted = min(t for t in (signed, issued[0].delivered_at, received_at) if t is not None)
        if acted > issued[0].expires:
            return None, (f"a key handover answering rotate-key command {handover.command_seq}, which had expired "
                          f"({iso_utc(issued[0].expires)}) when the device signed it ({iso_utc(acted)})")
        if self.store.device_by_kid(handover.new_key.kid) is not None or handover.new_key.kid in self.keys:
            return None, f"a key handover to the key {handover.new_key.kid.hex()}, which is registered already"
        return handover, None

    def _new_key_storage(self, handover: Handover, device: Device) -> tuple[tuple[str, str | None], str | None]:
        """((the new key's storage, a note), None), or (_, why the handover is refused).

        A device whose key in force is `tpm-attested` (its enrollment proved it, or its last handover did) keeps
        that label only when the handover's `key.next.certify` verifies against the attestation key its
        enrollment proved (the same TPM made the new key, to stay there). Without it, or with one that does not
        verify, the handover is refused where the lender requires hardware keys; elsewhere the new key is
        `software` with a note saying why (lender devices --json: key_storage_note). Any other device's new key
        is `software`, whatever it carries."""
        from lender.enrollment.attestation import recorded_attestation_key
        from lender.enrollment.technicians import enroll_dir

        software = (KeyStorage.SOFTWARE.value, None)
        if self.data_dir is None:
            return software, None
        attestation_key = recorded_attestation_key(enroll_dir(self.data_dir), device.device)
        if attestation_key is None or (device.key_since is not None
                                       and device.key_storage is not KeyStorage.TPM_ATTESTED):
            return software, None
        try:
            read_certification(handover, attestation_key)
        except RotationError as exc:
            why = f"key {handover.new_key.kid.hex()} without proof that its TPM holds it ({exc})"
            if self._requires_hardware_key():
                return software, f"this lender requires hardware keys: a handover to {why}; enroll the device again"
            why = f"seq {handover.seq}: the tpm-attested device handed over to {why}"
            log.warning("%s: %s; its new key is listed as software", device.device, why)
            return (KeyStorage.SOFTWARE.value, why), None
        return (KeyStorage.TPM_ATTESTED.value, None), None

    def _requires_hardware_key(self) -> bool:
        if self.require_hardware_key is not None:
            return self.require_hardware_key
        from lender.enrollment.desk import enrollment_policy
        try:
            return enrollment_policy(self.data_dir).get("require_hardware_key", False) is True
        except ValueError:
            return True   # a policy file that cannot be read: the stricter reading

    def _races(self, verdict: Verdict) -> bool:
        """Whether a handover signed by a key a handover already retired is a race for the device's key (flagged
        on the device: the old key is in two hands), rather than the device's own handover sent again."""
        envelope = verdict.envelope
        span = self.keys.spans.get(envelope.kid)
        if span is None or span[2] is None or not (verdict.ok or verdict.reason is Reason.REVOKED):
            return False   # not a retired key's signature (a REVOKED verdict of a retired key's is out_of_span's)
        try:
            handover = read_handover(envelope)
        except RotationError:
            return False
        device = self.store.device(envelope.device)
        if device is not None and handover is not None and handover.new_key.kid == device.kid and \
                envelope.seq > span[2]:
            return False   # the handover in force, signed again after a spool reset: refused as retired, no race
        detail = (f"seq {envelope.seq}: a second key handover from {envelope.kid.hex()} (to "
                  f"{handover.new_key.kid.hex() if handover else '?'}), after the one at seq {span[2]}: the old key is "
                  "in two hands; treat the device as compromised")
        log.error("%s: %s", envelope.device, detail)
        self.store.flag_key_race(envelope.device, detail)
        return True

    def _single_bad_device(self, verdicts: list[Verdict]) -> tuple[Status, str] | None:
        """4.01 / 4.03 when every envelope names one device, and that device is unknown or revoked."""
        if not verdicts or not all(v.reason in (Reason.UNKNOWN_KEY, Reason.REVOKED) for v in verdicts):
            return None
        names = {v.envelope.device for v in verdicts}
        if len(names) != 1:
            return None
        (name,) = names
        device = self.store.device(name)
        if device is None:
            return Status.UNAUTHORIZED, f"device {name} is not registered"
        if not device.active:
            return Status.FORBIDDEN, f"device {name} is revoked"
        return None

    def _refuse(self, index: int, reason: Reason, detail: str, raw: bytes, envelope: Envelope | None,
                peer: str, received_at: float, attributable: bool) -> Refusal:
        self.refusals.record(self.store, Refused(
            kind="envelope", reason=reason, detail=detail, raw=bytes(raw[: self.max_kept]), peer=peer,
            received_at=received_at, size=len(raw),
            device=None if envelope is None else envelope.device,
            seq=None if envelope is None else envelope.seq,
            kid=None if envelope is None else envelope.kid,
            batch_index=index, attributable=attributable,
        ))
        return Refusal(index, reason, short_text(f"{reason.name.lower()}: {detail}"))

    def _signed_by_a_registered_key(self, raw: bytes) -> bool:
        """Whether the key of a registered device, active or revoked, signed `raw` (however its payload is
        wrong): then its refusal is evidence (a signed NaN, an envelope signed after revocation, a key signing
        for another device), not junk. Costs one signature check only when the kid is registered."""
        try:
            message = parse_sign1(raw, self.envelope_limits)
        except WireFormatError:
            return False
        key = self.keys.get(message.kid)   # the keys in force, and those a rotation retired
        if key is None:
            holder = self.store.device_by_kid(message.kid)
            if holder is None:
                return False
            key = holder.key()
        try:
            return key.verifies(message.signed_bytes(), message.signature)
        except Exception:  # a key of another algorithm than the message names: not its signature
            return False


def names_a_key(envelope: Envelope) -> bool:
    """Whether the envelope carries a key handover's new key (telemetry.rotation)."""
    return any(record.name == NEXT_KEY for record in envelope.records)


def _kind(item: object) -> str:
    if isinstance(item, cbor.Tag):
        return f"a tag {item.number}"
    return {dict: "a map", list: "an array", str: "a text string", int: "an integer", float: "a float",
            bool: "a boolean", type(None): "null"}.get(type(item), type(item).__name__)


MAX_NODE_BODY = 1024  # a typical node report is ~170 bytes (version 3); the node's outbox slot holds 496
COSE_SIGN1_FIRST_BYTE = 0xD2  # CBOR tag 18, the first byte of every envelope


class NodeIngest(Ingest):
    """`Ingest` restricted to node keys, taking one envelope per request (see the module docstring)."""

    compact_receipts = True

    def __init__(self, store: EvidenceStore, **options) -> None:
        super().__init__(store, **options)
        self.max_kept = MAX_NODE_BODY
        # nodes: active devices registered without an OSCORE context
        self.keys = ActiveKeys(store, admits=lambda device: device.oscore_context is None)

    def _verdict(self, raw: bytes) -> Verdict:
        verdict = super()._verdict(raw)
        envelope = verdict.envelope
        if verdict.reason is Reason.UNKNOWN_KEY and envelope is not None:
            holder = self.store.device_by_kid(envelope.kid)
            if holder is not None and holder.active:
                return Verdict(Reason.UNKNOWN_KEY,
                               f"the key {envelope.kid.hex()} belongs to {holder.device}, which has an OSCORE context: "
                               "it must send through it (a gateway to /t, a node to /n under OSCORE); plain-CoAP /n "
                               "takes only nodes registered without a context", envelope)
        return verdict

    def envelope(self, body: bytes, *, peer: str) -> BatchOutcome:
        """Process the body of one POST to /n: a single envelope."""
        refused = self._not_one_envelope(body, peer)
        return refused if refused is not None else self.batch(cbor.encode([bytes(body)]), peer=peer)

    def screen_envelope(self, body: bytes, *, peer: str) -> BatchOutcome | None:
        """`envelope`'s answer when no registered key vouches for the body (see `refuse_unvouched`), else None."""
        refused = self._not_one_envelope(body, peer)
        return refused if refused is not None else self.refuse_unvouched(cbor.encode([bytes(body)]), peer=peer)

    def refuse_shape(self, body: bytes, *, peer: str) -> tuple[BatchOutcome, Refused | None] | None:
        """Without the store: the answer to a body that is not one envelope at all (None when it has an envelope's
        shape), with the refusal to keep when the quarantine's policy keeps it (None: it was only counted). The
        commonest junk costs the strangers' lane no thread hop and no transaction this way (lender.coap.node)."""
        problem = self._shape_problem(body)
        if problem is None:
            return None
        status, detail = problem
        refused = self._request_refusal(status, detail, body, peer=peer)
        self.refusals.note(f"a request ({status.value})", peer, _STATUS_REASON[status].name.lower(), detail)
        return BatchOutcome(status, detail), refused if self.refusals.keep(refused) else None

    def _not_one_envelope(self, body: bytes, peer: str) -> BatchOutcome | None:
        problem = self._shape_problem(body)
        return None if problem is None else self.refuse_request(*problem, body, peer=peer)

    @staticmethod
    def _shape_problem(body: bytes) -> tuple[Status, str] | None:
        if len(body) > MAX_NODE_BODY:
            return Status.TOO_LARGE, f"body of {len(body)} bytes is over the node path's {MAX_NODE_BODY}-byte cap"
        if not body or body[0] != COSE_SIGN1_FIRST_BYTE:
            return Status.BAD_REQUEST, ("body must be one envelope: a COSE_Sign1 message (CBOR tag 18), not an array "
                                        "(arrays of envelopes go to /t)")
        return None
