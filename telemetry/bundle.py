"""Evidence bundles: one device's whole record in the lender's log, self-contained, and its verification.

A bundle is one JSON document (docs/evidence.md is the normative text):

    {"format": "pledgewatch-evidence-bundle/1", "device": D, "lender_key_hex": ...,
     "checkpoints": [{"tree_size", "root_hex", "time_ms", "cose_b64"}, ...],   oldest first; the last is the target
     "consistency": [{"old_size", "new_size", "path_hex": [...]}, ...],        one per consecutive pair
     "entries": [{"index", "kind", "at_ms", ?"seq", "leaf_hex", "entry_b64" | null}, ...],  by index
     "entry_proof_hex": [...],        multi-entry proof of the recorded leaves against the target checkpoint
     "head": {"slot", "devices", "count", "last_index", "max_seq", "path_hex": [...]}}

`verify_bundle` needs the document and the lender's public key, nothing
else: every checkpoint's signature and the consistency between them; that
the recorded leaves give the target checkpoint's root and that each entry's
bytes hash to its recorded leaf (so arrival times and envelope bytes are the
logged ones); that the device head the checkpoint commits to counts exactly
these entries (nothing cut from the tail or the middle); that every entry is
this device's; the enrollment (device and technician signatures, the
lender's response, the binding); every envelope's signature, binding and
chain; that nothing was logged or signed after a revocation or release; that
each review names a signed gap record and each alarm ack an alarm the
device signed. Each problem is a `Finding`; the bundle holds only when none
fails.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from telemetry.chain import check_chain
from telemetry.clock import iso_utc
from telemetry.enrollment import (
    REQUEST_AAD,
    EnrollmentRequest,
    EnrollmentResponse,
    binding_of,
    signer_verifies,
)
from telemetry.envelope import Envelope, decode, verify
from telemetry.exc import BundleFormatError, EnrollmentFormatError, ReceiptError, SchemaError
from telemetry.freshness import token_time
from telemetry.identity import DeviceKey, kid_of
from telemetry.rotation import follow
from telemetry.logentry import (
    AlarmAckNote,
    DeviceHead,
    Enrollment,
    EnrollmentEvidence,
    EntryKind,
    LogEntry,
    Registration,
    ReviewNote,
)
from telemetry.merkle import leaf_hash, root_from_multi_proof, verify_consistency, verify_inclusion
from telemetry.receipt import SignedCheckpoint

FORMAT = "pledgewatch-evidence-bundle/1"


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One of the device's log entries as a bundle carries it: its bytes (None when the store lost them) and
    the leaf the log recorded for it."""

    index: int
    leaf: bytes
    entry: bytes | None


def build_bundle(device: str, lender_key: bytes, checkpoints: Sequence[SignedCheckpoint],
                 consistency: Sequence[Sequence[bytes]], entries: Sequence[BundleEntry], entry_proof: Sequence[bytes],
                 head: DeviceHead, head_slot: int, head_path: Sequence[bytes]) -> dict:
    """The bundle document (JSON-ready) from what the lender's log hands out."""
    rows = []
    for item in entries:
        row: dict = {"index": item.index, "leaf_hex": item.leaf.hex(), "entry_b64": None}
        if item.entry is not None:
            row["entry_b64"] = _b64(item.entry)
            decoded = LogEntry.decode(item.entry)
            row["kind"] = decoded.kind.name.lower()
            row["at_ms"] = decoded.at
        rows.append(row)
    return {
        "format": FORMAT,
        "device": device,
        "lender_key_hex": lender_key.hex(),
        "checkpoints": [{"tree_size": c.checkpoint.tree_size, "root_hex": c.checkpoint.root.hex(),
                         "time_ms": c.checkpoint.time_ms, "cose_b64": _b64(c.encode())} for c in checkpoints],
        "consistency": [{"old_size": old.checkpoint.tree_size, "new_size": new.checkpoint.tree_size,
                         "path_hex": [h.hex() for h in path]}
                        for old, new, path in zip(checkpoints, checkpoints[1:], consistency)],
        "entries": rows,
        "entry_proof_hex": [h.hex() for h in entry_proof],
        "head": {"slot": head_slot, "devices": checkpoints[-1].checkpoint.heads_size, "count": head.count,
                 "last_index": head.last_index, "max_seq": head.max_seq, "path_hex": [h.hex() for h in head_path]},
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- verification ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a verifier established or found wrong: which check, whether it holds, and what exactly."""

    check: str
    ok: bool
    detail: str
    index: int | None = None   # the log index of the entry concerned

    def to_json(self) -> dict:
        return {"check": self.check, "ok": self.ok, "detail": self.detail, "index": self.index}


@dataclass(slots=True)
class BundleReport:
    """The verdict on one bundle: what it holds, and every finding (`ok` only when no finding fails)."""

    device: str = ""
    tree_size: int | None = None
    entries: int = 0
    envelopes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def fail(self, check: str, detail: str, index: int | None = None) -> None:
        self.findings.append(Finding(check, False, detail, index))

    def note(self, check: str, detail: str, index: int | None = None) -> None:
        self.findings.append(Finding(check, True, detail, index))

    def to_json(self) -> dict:
        return {"ok": self.ok, "device": self.device, "tree_size": self.tree_size, "entries": self.entries,
                "envelopes": self.envelopes, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "findings": [f.to_json() for f in self.findings],
                "failures": [f.detail for f in self.failures]}


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleFormatError(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise BundleFormatError(f"{what} is not hex: {exc}") from None


def _hexes(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise BundleFormatError(f"{what} must be an array of hex strings")
    return [_hex(item, what) for item in value]


def _uint(value: object, what: str, *, null: bool = False) -> int | None:
    if value is None and null:
        return None
    if type(value) is not int or value < 0:
        raise BundleFormatError(f"{what} must be an unsigned integer")
    return value


def _field(document: Mapping, key: str, kind: type, where: str = "the bundle"):
    value = document.get(key)
    if not isinstance(value, kind):
        raise BundleFormatError(f"{where} needs {key!r} ({kind.__name__})")
    return value


def verify_bundle(document: object, lender_key: bytes, *, allow_gaps: bool = False) -> BundleReport:
    """Check a bundle against the lender's public key alone; BundleFormatError if it is not a bundle at all."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleFormatError(f"not an evidence bundle: the document's \"format\" must be {FORMAT!r}")
    device = _field(document, "device", str)
    report = BundleReport(device=device)
    named = _field(document, "lender_key_hex", str)
    if named != lender_key.hex():
        report.fail("lender-key", f"the bundle names lender key {named}, not the pinned {lender_key.hex()}")
    target = _checkpoints(document, lender_key, report)
    if target is None:
        return report
    report.tree_size = target.checkpoint.tree_size
    entries = _entries(document, target, report)
    seqs = _evidence(device, entries, lender_key, report, allow_gaps)
    _head(document, device, seqs, target, report)
    return report


def _checkpoints(document: dict, lender_key: bytes, report: BundleReport) -> SignedCheckpoint | None:
    rows = _field(document, "checkpoints", list)
    if not rows:
        raise BundleFormatError("a bundle carries at least one checkpoint")
    checkpoints: list[SignedCheckpoint | None] = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BundleFormatError(f"checkpoint {number} must be an object")
        try:
            signed = SignedCheckpoint.decode(base64.b64decode(_field(row, "cose_b64", str, f"checkpoint {number}"),
                                                              validate=True), lender_key)
        except (ReceiptError, binascii.Error, ValueError) as exc:
            report.fail("checkpoint", f"checkpoint {number} is not signed by the lender's key: {exc}")
            checkpoints.append(None)
            continue
        shown = (row.get("tree_size"), row.get("root_hex"), row.get("time_ms"))
        actual = (signed.checkpoint.tree_size, signed.checkpoint.root.hex(), signed.checkpoint.time_ms)
        if shown != actual:
            report.fail("checkpoint", f"checkpoint {number} shows size/root/time {shown}, its signed COSE says {actual}")
        checkpoints.append(signed)
    links = _field(document, "consistency", list)
    if len(links) != len(rows) - 1:
        raise BundleFormatError("a bundle carries one consistency proof per pair of consecutive checkpoints")
    for number, (old, new, link) in enumerate(zip(checkpoints, checkpoints[1:], links), 1):
        if not isinstance(link, dict):
            raise BundleFormatError(f"consistency proof {number} must be an object")
        path = _hexes(link.get("path_hex"), f"consistency proof {number}")
        if old is None or new is None:
            continue
        a, b = old.checkpoint, new.checkpoint
        if (link.get("old_size"), link.get("new_size")) != (a.tree_size, b.tree_size) \
                or not verify_consistency(a.tree_size, b.tree_size, a.root, b.root, path):
            report.fail("consistency", f"the log of checkpoint {number + 1} ({b.tree_size} entries) is not shown "
                                       f"to extend the one of checkpoint {number} ({a.tree_size}): the log was "
                                       "rewritten between them, or the proof is not theirs")
        else:
            report.note("consistency", f"the log grew from {a.tree_size} to {b.tree_size} entries without change")
    target = checkpoints[-1]
    if target is None:
        report.fail("checkpoint", "the last checkpoint, which the entries are proven against, does not verify")
    else:
        head = target.checkpoint
        report.note("checkpoint", f"{len(rows)} checkpoint(s) signed by the lender; the entries are proven against "
                                  f"the log of {head.tree_size} entries as of {_iso(head.time_ms)} (the lender's "
                                  "time): nothing logged after it is covered")
    return target


def _entries(document: dict, target: SignedCheckpoint, report: BundleReport) -> list[tuple[int, LogEntry]]:
    """The entries whose bytes are the logged ones, decoded, by index; every other one is a failure."""
    rows = _field(document, "entries", list)
    indices, leaves, decoded = [], [], []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise BundleFormatError(f"entry {number} must be an object")
        index = _uint(row.get("index"), f"entry {number}'s index")
        leaf = _hex(row.get("leaf_hex"), f"entry {number}'s leaf_hex")
        indices.append(index)
        leaves.append(leaf)
        encoded = row.get("entry_b64")
        if encoded is None:
            report.fail("entry", f"entry {index}: the bundle has the leaf the log recorded but not the entry's bytes "
                                 "(the lender's store no longer holds them: deleted after logging)", index)
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError):
            report.fail("entry", f"entry {index}: entry_b64 is not base64", index)
            continue
        if leaf_hash(raw) != leaf:
            report.fail("entry", f"entry {index}{_what(raw)}: its bytes are not the ones the log recorded (changed "
                                 "after logging: the envelope, its arrival time or the event was edited)", index)
            continue
        try:
            entry = LogEntry.decode(raw)
        except SchemaError as exc:
            report.fail("entry", f"entry {index}: not a log entry: {exc}", index)
            continue
        shown = (row.get("kind"), row.get("at_ms"))
        if shown != (entry.kind.name.lower(), entry.at):
            report.fail("arrival", f"entry {index} shows kind/time {shown}, the logged entry says "
                                   f"{(entry.kind.name.lower(), entry.at)}", index)
        decoded.append((index, entry))
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise BundleFormatError("the entries must be sorted by index, each index once")
    report.entries = len(rows)
    size = target.checkpoint.tree_size
    if indices and indices[-1] >= size:
        report.fail("proof", f"entry {indices[-1]} is beyond the checkpoint's {size} entries", indices[-1])
    elif root_from_multi_proof(indices, leaves, size, _hexes(document.get("entry_proof_hex"), "entry_proof_hex")) \
            != target.checkpoint.root:
        report.fail("proof", "the entries' recorded leaves and the proof do not give the checkpoint's root: "
                             "entries were added, removed, reordered or altered")
    else:
        report.note("proof", f"all {len(rows)} entries are in the lender's log at the indices given")
    return decoded


def _iso(time_ms: int) -> str:
    """A checkpoint's time as the lender's tools print times (UTC, ISO 8601, milliseconds, Z)."""
    try:
        return iso_utc(time_ms / 1000)
    except (OverflowError, OSError, ValueError):
        return f"{time_ms} ms since the epoch"


def _what(raw: bytes) -> str:
    """ (envelope <device> seq <n>) for the message about an entry that may not even decode."""
    try:
        entry = LogEntry.decode(raw)
    except SchemaError:
        return ""
    if entry.kind is EntryKind.ENVELOPE:
        try:
            return f" (envelope {entry.device} seq {decode(entry.body).seq})"
        except SchemaError:
            return f" (envelope of {entry.device})"
    return f" ({entry.kind.name.lower()} of {entry.device})"


def _head(document: dict, device: str, seqs: list[int], target: SignedCheckpoint, report: BundleReport) -> None:
    row = _field(document, "head", dict)
    head = DeviceHead(device, _uint(row.get("count"), "head count"), _uint(row.get("last_index"), "head last_index"),
                      _uint(row.get("max_seq"), "head max_seq", null=True))
    slot, devices = _uint(row.get("slot"), "head slot"), _uint(row.get("devices"), "head devices")
    checkpoint = target.checkpoint
    if devices != checkpoint.heads_size or not verify_inclusion(head.leaf, slot, devices, _hexes(
            row.get("path_hex"), "head path_hex"), checkpoint.heads_root):
        report.fail("tail", f"the device head (count {head.count}, last entry {head.last_index}, highest seq "
                            f"{head.max_seq}) is not the one the checkpoint commits to for {device}")
        return
    rows = document["entries"]
    held = [r.get("index") for r in rows if isinstance(r, dict)]
    top = max(seqs, default=None)
    if len(held) != head.count or (held and held[-1] != head.last_index):
        report.fail("tail", f"the checkpoint commits to {head.count} entries of {device}, the last at index "
                            f"{head.last_index}; the bundle holds {len(held)}"
                            + (f", the last at index {held[-1]}" if held else "")
                            + ": entries were cut from the tail or the middle")
    elif top != head.max_seq:
        report.fail("tail", f"the checkpoint commits to seq {head.max_seq} as {device}'s highest; the bundle's "
                            f"highest is {top}")
    else:
        report.note("tail", f"complete as of {_iso(checkpoint.time_ms)}: all {head.count} entries of {device} in the "
                            f"log of {checkpoint.tree_size} entries, the highest seq {head.max_seq}")


# --- the device's own evidence -----------------------------------------------------------------------

@dataclass
class _Enrolled:
    public_key: bytes
    asset: str
    binding: bytes | None


def _evidence(device: str, entries: list[tuple[int, LogEntry]], lender_key: bytes, report: BundleReport,
              allow_gaps: bool) -> list[int]:
    """Check the device's registration, enrollment, envelopes and reviews; return the seqs of its envelopes."""
    for index, entry in entries:
        if entry.device != device:
            report.fail("device", f"entry {index} is {entry.device}'s {entry.kind.name.lower()}, not {device}'s: "
                                  "rows of another device", index)
    mine = [(index, entry) for index, entry in entries if entry.device == device]
    registrations = [(i, e) for i, e in mine if e.kind is EntryKind.REGISTRATION]
    if not registrations:
        report.fail("registration", f"the bundle holds no registration of {device}: its key cannot be established")
        return [seq for _, entry in mine if entry.kind is EntryKind.ENVELOPE
                for seq in [_seq(entry.body)] if seq is not None]
    first, registration = registrations[0]
    if len(registrations) > 1:
        report.fail("registration", f"{device} is registered {len(registrations)} times in the log", registrations[1][0])
    if mine[0][0] != first:
        report.fail("registration", f"entry {mine[0][0]} of {device} comes before its registration", mine[0][0])
    enrolled = _registration(device, first, registration, lender_key, report)
    ends = [(i, e) for i, e in mine if e.kind in (EntryKind.REVOCATION, EntryKind.RELEASE)]
    end_index, end = ends[0] if ends else (None, None)
    if end is not None:
        report.note(end.kind.name.lower(), f"{device} was {'revoked' if end.kind is EntryKind.REVOCATION else 'released'}"
                                           f" at {end.at} ms (log index {end_index})", end_index)
    # the enrolled key, and those its chain's key handovers (telemetry.rotation) put in force from their seqs on
    followed = follow((entry.body for _, entry in mine if entry.kind is EntryKind.ENVELOPE),
                      DeviceKey(device, enrolled.public_key))
    for problem in followed.problems:
        if "two hands" in problem or "handover" in problem:
            report.fail("rotation", problem)
    envelopes: list[Envelope] = []
    seqs: list[int] = []
    binding = enrolled.binding
    reviews: list[tuple[int, ReviewNote]] = []
    acks: list[tuple[int, AlarmAckNote]] = []
    for index, entry in mine:
        if entry.kind is EntryKind.ENROLLMENT:
            binding = _enrollment(device, index, entry, enrolled, lender_key, report)
            continue
        if entry.kind in (EntryKind.REVIEW, EntryKind.ALARM_ACK):
            (reviews if entry.kind is EntryKind.REVIEW else acks).append((index, entry.body))
            continue
        if entry.kind is not EntryKind.ENVELOPE:
            continue
        seq = _seq(entry.body)
        in_force = followed.key_at(seq if seq is not None else 0)
        verdict = verify(entry.body, {in_force.kid: in_force})
        if verdict.envelope is not None:
            seqs.append(verdict.envelope.seq)
        if not verdict.ok:
            report.fail("signature", f"entry {index}: {verdict.reason.name.lower()}: {verdict.detail}", index)
            continue
        envelope = verdict.envelope
        if envelope.version >= 2 and envelope.binding != binding:
            report.fail("binding", f"entry {index}: {device} seq {envelope.seq} names enrollment "
                                   f"{envelope.binding.hex() if envelope.binding else 'none'}, the log binds the device "
                                   f"to {binding.hex() if binding else 'none'}", index)
        if end is not None:
            _after_end(device, index, envelope, entry, end_index, end, report)
        envelopes.append(envelope)
    report.envelopes = len(envelopes)
    _chain(device, envelopes, allow_gaps, report)
    gaps = {e.seq for e in envelopes if e.gap is not None}
    for index, review in reviews:
        if review.seq not in gaps:
            report.fail("review", f"entry {index}: a review by {review.reviewer} of seq {review.seq}, which is not a "
                                  f"signed gap record of {device} in the bundle", index)
    _acks(device, acks, envelopes, report)
    return seqs


def _acks(device: str, acks: list[tuple[int, AlarmAckNote]], envelopes: list[Envelope],
          report: BundleReport) -> None:
    """Each ack names an alarm the device itself signed: a record of that name in its envelope of that seq."""
    signed = {(e.seq, r.name) for e in envelopes for r in e.records}
    unsigned = [(index, ack) for index, ack in acks if (ack.seq, ack.alarm) not in signed]
    for index, ack in unsigned:
        report.fail("alarm_ack", f"entry {index}: an ack by {ack.by} of {ack.alarm} at seq {ack.seq}, which is not an "
                           f"alarm {device} signed in the bundle", index)
    if acks and not unsigned:
        report.note("alarm_ack", f"{len(acks)} acknowledgement(s) of alarms by the lender's staff, each of an alarm "
                           f"{device} signed")


def _seq(raw: bytes) -> int | None:
    try:
        return decode(raw).seq
    except SchemaError:
        return None


def _registration(device: str, index: int, entry: LogEntry, lender_key: bytes, report: BundleReport) -> _Enrolled:
    body: Registration = entry.body
    if body.enrollment is None:
        if body.binding is None:
            report.note("enrollment", f"{device} was registered by the lender's staff (no technician-countersigned "
                                      "enrollment): its key rests on the lender's log alone", index)
        elif body.binding != binding_of(lender_key, body.public_key, body.asset):
            report.fail("enrollment", f"entry {index}: {device}'s registration names binding {body.binding.hex()}, "
                                      "which is not this lender's for this key and asset", index)
        else:  # logged when a store from before the log was upgraded: the request and response stayed in files
            report.note("enrollment", f"{device} is bound to this lender for asset {body.asset}, but the log holds no "
                                      "enrollment request: its key rests on the lender's log alone", index)
        return _Enrolled(body.public_key, body.asset, body.binding)
    binding = _checked_enrollment(device, index, body.enrollment, body.public_key, body.asset, body.binding,
                                  lender_key, report)
    return _Enrolled(body.public_key, body.asset, binding)


def _enrollment(device: str, index: int, entry: LogEntry, enrolled: _Enrolled, lender_key: bytes,
                report: BundleReport) -> bytes | None:
    body: Enrollment = entry.body
    return _checked_enrollment(device, index, body.enrollment, enrolled.public_key, enrolled.asset, body.binding,
                               lender_key, report)


def _checked_enrollment(device: str, index: int, evidence: EnrollmentEvidence, public_key: bytes, asset: str,
                        binding: bytes | None, lender_key: bytes, report: BundleReport) -> bytes | None:
    try:
        request = EnrollmentRequest.decode(evidence.request)
        response = EnrollmentResponse.verify(evidence.response, lender_key)
    except EnrollmentFormatError as exc:
        report.fail("enrollment", f"entry {index}: {device}'s enrollment does not verify: {exc}", index)
        return binding
    body = request.body
    problems = []
    if body.device != device or body.public_key != public_key:
        problems.append(f"the request is for {body.device} with key {body.kid.hex()}, not this device and key")
    if not request.device_signature_valid():
        problems.append("the device's own signature over the request does not verify")
    if request.technician_kid != kid_of(evidence.technician_key) or not signer_verifies(
            evidence.technician_key, request.payload, request.technician_signature or b"", REQUEST_AAD):
        problems.append(f"technician {body.technician}'s countersignature does not verify with the key the lender "
                        "registered for them")
    if response.device != device or response.request_digest != request.digest or response.asset != body.binding.asset:
        problems.append("the lender's response is not the answer to this request")
    if body.binding.asset != asset:
        problems.append(f"the request pledges asset {body.binding.asset}, the registration says {asset}")
    expected = binding_of(lender_key, public_key, asset)
    if binding != expected:
        problems.append(f"the binding {binding.hex() if binding else 'none'} is not this lender's for this key and "
                        f"asset ({expected.hex()})")
    if problems:
        report.fail("enrollment", f"entry {index}: {device}'s enrollment: " + "; ".join(problems), index)
    else:
        report.note("enrollment", f"{device} enrolled for asset {asset}, countersigned by technician "
                                  f"{body.technician}, answered by the lender; binding {expected.hex()}", index)
    return expected


def _after_end(device: str, index: int, envelope: Envelope, entry: LogEntry, end_index: int, end: LogEntry,
               report: BundleReport) -> None:
    event = "revoked" if end.kind is EntryKind.REVOCATION else "released"
    if index > end_index:
        report.fail("revocation", f"entry {index}: {device} seq {envelope.seq} was logged after the device was "
                                  f"{event} (entry {end_index})", index)
    end_s = end.at / 1000
    if envelope.token is not None and token_time(envelope.token) > end_s:
        report.fail("revocation", f"entry {index}: {device} seq {envelope.seq} carries a lender token issued after "
                                  f"the device was {event}: it was signed after", index)
    late = [r.time for r in envelope.records if isinstance(r.time, (int, float)) and r.time > end_s]
    if late:
        report.fail("revocation", f"entry {index}: {device} seq {envelope.seq} dates readings after the device was "
                                  f"{event}", index)


def _chain(device: str, envelopes: list[Envelope], allow_gaps: bool, report: BundleReport) -> None:
    if not envelopes:
        report.note("chain", f"{device} has no envelopes in the log")
        return
    chain = check_chain(envelopes)
    report.first_seq, report.last_seq = chain.first, chain.last
    for problem in chain.problems:
        tolerated = problem.kind in ("gap", "bad-start") and (problem.explained or allow_gaps)
        explained = f" (explained by signed gap record seq {problem.explained_by})" if problem.explained else ""
        (report.note if tolerated else report.fail)("chain", f"{device}: {problem.kind}: {problem.detail}{explained}")
    if chain.intact:
        report.note("chain", f"{device}: {chain.count} envelopes, seqs {chain.first}..{chain.last}, every signature "
                             "verified, the chain intact")
