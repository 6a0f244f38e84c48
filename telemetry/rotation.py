"""A device's key handover (the lender's `rotate-key` command), version 1: old key to new, in the chain.

When a device acts on a rotate-key command (telemetry.command.RotateKey) it
makes a new key and signs, with its OLD key, one ordinary envelope of its
chain whose records are the command's outcome records (command.seq, kind
"rotate-key", the command's digest, outcome "applied") and two more:

    key.next         data: the new public key (32 bytes Ed25519, or a 65-byte uncompressed P-256 point)
    key.next.proof   data: the NEW key's 64-byte signature (Ed25519, or ES256 r || s) of `statement`

    statement = "pledgewatch-rotation/1" || CBOR [device, old kid, new public key, command digest]

The old key's signature (the envelope's) says the device names this key; the
new key's proof says the device holds it (nobody can hand over to a key whose
holder did not sign this very handover); the command digest ties the handover
to one command the lender issued, under its per-device seq and expiry. Every
envelope after the handover's seq is signed by the new key; the old key is
retired. `follow` verifies a chain across any number of handovers from the
enrolled key alone, as an offline verifier does.

A thief holding the old key can hand over to nothing after the rotation (the
old key is retired: anything it signs above the handover's seq is refused,
including a second handover), and cannot race one without the lender's
command digest (delivered only under the device's OSCORE context); if the
same command is answered by two different handovers, the old key is in two
hands, and `follow` says so rather than choosing one. Pure: no I/O, no clock.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from telemetry import cbor
from telemetry.command import RECORD_PREFIX, Command, Kind, Outcome, outcome_records
from telemetry.envelope import Envelope, verify
from telemetry.exc import IdentityError, TelemetryError
from telemetry.identity import DeviceKey, Signer
from telemetry.senml import Record

ROTATION_AAD = b"pledgewatch-rotation/1"
NEXT_KEY = "key.next"
NEXT_PROOF = "key.next.proof"


class RotationError(TelemetryError):
    """A handover that is malformed, or whose new key did not sign it."""


def statement(device: str, old_kid: bytes, new_public_key: bytes, command_digest: bytes) -> bytes:
    """What the new key signs: the device, the key it replaces, itself and the command that asked for it."""
    return ROTATION_AAD + cbor.encode([device, old_kid, new_public_key, command_digest])


def handover_records(command: Command, old_kid: bytes, new: Signer, at: float) -> list[Record]:
    """The records a device signs with its OLD key (kid `old_kid`) to hand over to `new`, for `command`."""
    if command.kind is not Kind.ROTATE_KEY:
        raise RotationError(f"a handover answers a rotate-key command, not {command.kind}")
    proof = new.sign(statement(command.device, old_kid, new.public_key, command.digest))
    return outcome_records(command, Outcome.APPLIED, at) + [
        Record(NEXT_KEY, data=new.public_key, time=at), Record(NEXT_PROOF, data=proof, time=at)]


@dataclass(frozen=True, slots=True)
class Handover:
    """A verified handover: envelope `seq` of `device`, signed by `old_kid`, names `new_key` for `command_digest`."""

    device: str
    seq: int
    old_kid: bytes
    new_key: DeviceKey
    command_seq: int
    command_digest: bytes


def read_handover(envelope: Envelope) -> Handover | None:
    """The handover in an envelope (whose signature the caller verified), None if it carries none.

    RotationError if it carries one that is not whole: no command digest or
    seq, not a rotate-key command's answer, not applied, a new key that is no
    key, the same key again, or a proof the new key did not make.
    """
    named = {}
    for record in envelope.records:
        if record.name in (NEXT_KEY, NEXT_PROOF) or record.name.startswith(RECORD_PREFIX):
            if record.name in named:
                raise RotationError(f"seq {envelope.seq}: {record.name} twice in one handover")
            named[record.name] = record
    if NEXT_KEY not in named:
        return None
    key, proof = named[NEXT_KEY].data, named.get(NEXT_PROOF)
    digest, seq = named.get(RECORD_PREFIX + "digest"), named.get(RECORD_PREFIX + "seq")
    kind, outcome = named.get(RECORD_PREFIX + "kind"), named.get(RECORD_PREFIX + "outcome")
    if (proof is None or proof.data is None or digest is None or digest.data is None or seq is None
            or not isinstance(seq.value, int) or isinstance(seq.value, bool) or seq.value < 1):
        raise RotationError(f"seq {envelope.seq}: a handover names its new key, its proof, the command's seq and digest")
    if kind is None or kind.string != str(Kind.ROTATE_KEY) or outcome is None or outcome.string != str(Outcome.APPLIED):
        raise RotationError(f"seq {envelope.seq}: a handover answers a rotate-key command, applied")
    try:
        new_key = DeviceKey(envelope.device, key)
    except (IdentityError, TypeError) as exc:
        raise RotationError(f"seq {envelope.seq}: the new key is no key: {exc}") from None
    if new_key.kid == envelope.kid:
        raise RotationError(f"seq {envelope.seq}: a handover to the same key")
    if not new_key.verifies(statement(envelope.device, envelope.kid, key, digest.data), proof.data):
        raise RotationError(f"seq {envelope.seq}: the new key {new_key.kid.hex()} did not sign this handover")
    return Handover(envelope.device, envelope.seq, envelope.kid, new_key, seq.value, digest.data)


@dataclass(frozen=True, slots=True)
class Followed:
    """A chain verified across its handovers: the keys in force from each seq, the envelopes, what failed."""

    keys: tuple[tuple[int, DeviceKey], ...]          # (first seq signed by it, key): the enrolled key from 0
    envelopes: tuple[Envelope, ...]                  # every envelope that verified, by seq
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    def key_at(self, seq: int) -> DeviceKey:
        """The key that must have signed envelope `seq`."""
        return [key for first, key in self.keys if first <= seq][-1]


def follow(raws: Iterable[bytes], enrolled: DeviceKey) -> Followed:
    """Verify one device's envelopes (any order) from its enrolled key alone, switching keys at each handover.

    Each envelope must verify with the key in force at its seq; a verified
    handover puts its new key in force for every later seq and retires the old
    one. Problems: an envelope no key in force signed (a retired key's, or a
    stranger's), a broken handover, two handovers for one command (the old key
    in two hands).
    """
    decoded = []
    problems: list[str] = []
    for raw in raws:
        verdict = verify(raw, {})   # decoded only; the key in force is known once the seqs are in order
        if verdict.envelope is None:
            problems.append(f"an envelope that does not decode: {verdict.detail}")
        else:
            decoded.append((verdict.envelope.seq, raw, verdict.envelope))
    decoded.sort(key=lambda item: item[0])
    active, keys, retired, seen, good = enrolled, [(0, enrolled)], set(), {}, []
    for seq, raw, envelope in decoded:
        verdict = verify(raw, {active.kid: active})
        if not verdict.ok:
            who = "a retired key" if envelope.kid in retired else f"key {envelope.kid.hex()}"
            problems.append(f"seq {seq} is signed by {who}, not the key in force ({active.kid.hex()}): {verdict.detail}")
            continue
        good.append(verdict.envelope)
        try:
            handover = read_handover(verdict.envelope)
        except RotationError as exc:
            problems.append(str(exc))
            continue
        if handover is None:
            continue
        if handover.command_digest in seen:
            problems.append(f"seq {seq}: command {handover.command_seq} was already answered by the handover at "
                            f"seq {seen[handover.command_digest]}: the old key is in two hands")
            continue
        seen[handover.command_digest] = seq
        retired.add(active.kid)
        active = handover.new_key
        keys.append((seq + 1, active))
    return Followed(tuple(keys), tuple(good), tuple(problems))
