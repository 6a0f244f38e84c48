"""A device's key handover (the lender's `rotate-key` command), version 1: old key to new, in the chain.

When a device acts on a rotate-key command (telemetry.command.RotateKey) it
makes a new key and signs, with its OLD key, one ordinary envelope of its
chain whose records are the command's outcome records (command.seq, kind
"rotate-key", the command's digest, outcome "applied") and two more:

    key.next         data: the new public key (32 bytes Ed25519, or a 65-byte uncompressed P-256 point)
    key.next.proof   data: the NEW key's 64-byte signature (Ed25519, or ES256 r || s) of `statement`

    statement = "pledgewatch-rotation/1" || CBOR [device, old kid, new public key, command digest]

A TPM gateway adds a third, optional record (a v1 reader ignores it; the handover stays version 1):

    key.next.certify data: CBOR [1, key_public, attest, signature]: TPM2_Certify of the new key by the device's
                     attestation key (the one its enrollment proved, re-derived in the same TPM) over
                     `certify_data(device, old kid, new public key, command digest)`; `key_public` is the new
                     key's TPM2B_PUBLIC, `attest` the TPMS_ATTEST, `signature` its TPMT_SIGNATURE

`read_certification` checks it against the enrolled attestation key (65-byte P-256 point): the AK's ECDSA
signature, TPM_GENERATED and TPM_ST_ATTEST_CERTIFY, the qualifying data, the certified name = the carried public
area's SHA-256 name, that area = the handover's new key with fixedTPM, fixedParent and sensitiveDataOrigin: the
new key is in the same TPM as the enrolled one, so a lender keeps such a device `tpm-attested` across rotations.

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

import hashlib
import struct

from telemetry import cbor
from telemetry.command import RECORD_PREFIX, Command, Kind, Outcome, outcome_records
from telemetry.envelope import Envelope, verify
from telemetry.exc import IdentityError, TelemetryError
from telemetry.identity import DeviceKey, Signer
from telemetry.senml import Record
from telemetry.tpm import ALG_SHA256, Reader, attested

ROTATION_AAD = b"pledgewatch-rotation/1"
NEXT_KEY = "key.next"
NEXT_PROOF = "key.next.proof"
NEXT_CERTIFY = "key.next.certify"
CERTIFY_VERSION = 1
CERTIFY_AAD = b"pledgewatch-rotation-certify/1"
ST_ATTEST_CERTIFY = 0x8017
ALG_ECC, ALG_NULL, CURVE_P256 = 0x0023, 0x0010, 0x0003
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN, SIGN = 0x2, 0x10, 0x20, 0x40000


class RotationError(TelemetryError):
    """A handover that is malformed, or whose new key did not sign it."""


def statement(device: str, old_kid: bytes, new_public_key: bytes, command_digest: bytes) -> bytes:
    """What the new key signs: the device, the key it replaces, itself and the command that asked for it."""
    return ROTATION_AAD + cbor.encode([device, old_kid, new_public_key, command_digest])


def certify_data(device: str, old_kid: bytes, new_public_key: bytes, command_digest: bytes) -> bytes:
    """The qualifying data of the new key's TPM2_Certify: SHA-256 of the prefix and CBOR [device, old kid, new
    public key, command digest] (a certification made for one handover names no other)."""
    return hashlib.sha256(CERTIFY_AAD + cbor.encode([device, old_kid, new_public_key, command_digest])).digest()


def encode_certification(key_public: bytes, attest: bytes, signature: bytes) -> bytes:
    """The `key.next.certify` record's data."""
    return cbor.encode([CERTIFY_VERSION, bytes(key_public), bytes(attest), bytes(signature)])


def handover_records(command: Command, old_kid: bytes, new: Signer, at: float,
                     certification: bytes | None = None) -> list[Record]:
    """The records a device signs with its OLD key (kid `old_kid`) to hand over to `new`, for `command`
    (with a TPM's `certification` of the new key, `encode_certification`, when it has one)."""
    if command.kind is not Kind.ROTATE_KEY:
        raise RotationError(f"a handover answers a rotate-key command, not {command.kind}")
    proof = new.sign(statement(command.device, old_kid, new.public_key, command.digest))
    records = outcome_records(command, Outcome.APPLIED, at) + [
        Record(NEXT_KEY, data=new.public_key, time=at), Record(NEXT_PROOF, data=proof, time=at)]
    if certification is not None:
        records.append(Record(NEXT_CERTIFY, data=certification, time=at))
    return records


@dataclass(frozen=True, slots=True)
class Handover:
    """A verified handover: envelope `seq` of `device`, signed by `old_kid`, names `new_key` for `command_digest`."""

    device: str
    seq: int
    old_kid: bytes
    new_key: DeviceKey
    command_seq: int
    command_digest: bytes
    certification: bytes | None = None   # the `key.next.certify` record's data, unchecked (`read_certification`)


def read_handover(envelope: Envelope) -> Handover | None:
    """The handover in an envelope (whose signature the caller verified), None if it carries none.

    RotationError if it carries one that is not whole: no command digest or
    seq, not a rotate-key command's answer, not applied, a new key that is no
    key, the same key again, or a proof the new key did not make.
    """
    named = {}
    for record in envelope.records:
        if record.name in (NEXT_KEY, NEXT_PROOF, NEXT_CERTIFY) or record.name.startswith(RECORD_PREFIX):
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
    certify = named.get(NEXT_CERTIFY)
    return Handover(envelope.device, envelope.seq, envelope.kid, new_key, seq.value, digest.data,
                    None if certify is None else certify.data)


def _ecc_public(key_public: bytes) -> tuple[bytes, int, bytes]:
    """(name, objectAttributes, 65-byte point) of a P-256 key's TPM2B_PUBLIC."""
    outer = Reader(key_public, "new key's public area", RotationError)
    area = outer.sized()
    outer.end()
    read = Reader(area, "new key's public area", RotationError)
    kind, name_alg, attributes = read.uint(2), read.uint(2), read.uint(4)
    if kind != ALG_ECC or name_alg != ALG_SHA256:
        raise RotationError("the certified key is not an ECC key named with SHA-256")
    read.sized()                                   # authPolicy
    if read.uint(2) != ALG_NULL:                   # symmetric: a signing key has none
        raise RotationError("the certified key is a storage key, not a signing key")
    if read.uint(2) != ALG_NULL:                   # scheme and its hash
        read.uint(2)
    if read.uint(2) != CURVE_P256:
        raise RotationError("the certified key is not a P-256 key")
    if read.uint(2) != ALG_NULL:                   # kdf and its hash
        read.uint(2)
    x, y = read.sized(), read.sized()
    read.end()
    if len(x) > 32 or len(y) > 32:
        raise RotationError("the certified key's point is not a P-256 point")
    point = b"\x04" + x.rjust(32, b"\0") + y.rjust(32, b"\0")
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(area).digest(), attributes, point


def read_certification(handover: Handover, attestation_key: bytes) -> None:
    """Check `handover`'s `key.next.certify` against the device's enrolled `attestation_key` (65-byte P-256
    point): RotationError says why it does not prove the new key is in that TPM (or that there is none)."""
    if handover.certification is None:
        raise RotationError(f"seq {handover.seq}: the handover carries no {NEXT_CERTIFY} (the new key's TPM2_Certify)")
    try:
        item = cbor.decode(bytes(handover.certification))
    except Exception as exc:  # telemetry.cbor raises its own errors on malformed input
        raise RotationError(f"the {NEXT_CERTIFY} record is not CBOR: {exc}") from None
    if not isinstance(item, list) or len(item) != 4 or type(item[0]) is not int \
            or not all(isinstance(part, bytes) for part in item[1:]):
        raise RotationError(f"the {NEXT_CERTIFY} record is not [version, key_public, attest, signature]")
    if item[0] != CERTIFY_VERSION:
        raise RotationError(f"the {NEXT_CERTIFY} record is version {item[0]}, this reader knows {CERTIFY_VERSION}")
    key_public, attest, signature = item[1], item[2], item[3]
    read = attested(attest, signature, attestation_key, ST_ATTEST_CERTIFY, "the new key's certification",
                    RotationError)
    read.sized()   # the attestation key's qualified name: its signature was checked above
    if read.sized() != certify_data(handover.device, handover.old_kid, handover.new_key.public_key,
                                    handover.command_digest):
        raise RotationError(f"seq {handover.seq}: the new key's certification was made for another handover "
                            "(its qualifying data differ)")
    read.take(17 + 8)   # clock info, firmware version
    certified_name = read.sized()
    read.sized()        # the key's qualified name
    read.end()
    name, attributes, point = _ecc_public(key_public)
    if certified_name != name:
        raise RotationError("the certification names another key than the public area it carries")
    if point != handover.new_key.public_key:
        raise RotationError("the certified key is not the handover's new key")
    fixed = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN
    if attributes & fixed != fixed or not attributes & SIGN:
        raise RotationError("the new key was not made inside the TPM to stay there "
                            "(fixedTPM, fixedParent, sensitiveDataOrigin)")


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
