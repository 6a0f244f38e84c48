"""The lender log's entries and device heads: what each leaf of its transparency log holds, encoded once.

    entry = [kind, device, at, body]      deterministic CBOR; at = the lender's time, ms since the Unix epoch

    kind 1 envelope      body = the envelope's exact bytes, as received; at = its arrival
    kind 2 registration  body = {1: device public key, 2: asset, ?3: binding, ?4: enrollment request,
                                 ?5: enrollment response, ?6: technician public key}
    kind 3 enrollment    body = {3: binding, 4: request, 5: response, 6: technician public key}
                         (a device registered by hand, enrolled later: from now on bound)
    kind 4 revocation    body = {}
    kind 5 release       body = {}     (the pledge released; reserved for the lender's commands)
    kind 6 review        body = {1: seq of the signed gap record, 2: reviewer, 3: note}
    kind 7 alarm ack     body = {1: seq of the envelope that raised the alarm, 2: who acknowledged it, 3: note,
                                 4: the alarm's name}
                         (kinds are only ever added: 7 came with the console's acks, issue 16; a reader
                         refuses a kind it does not know rather than pass what it cannot check)

A device head is what a signed checkpoint commits to for each device:
``[device, count of its entries, index of its last entry, its highest envelope seq or null]``,
one leaf per device (in the order devices first appeared) of a second RFC 9162
tree whose head the checkpoint signs. docs/evidence.md is the normative text;
tests/vectors/ pins the bytes.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from telemetry import cbor
from telemetry.cbor import Limits
from telemetry.exc import SchemaError, WireFormatError
from telemetry.identity import ED25519_PUBLIC_BYTES, P256_PUBLIC_BYTES
from telemetry.merkle import leaf_hash

MAX_ENTRY = 64 * 1024
ENTRY_LIMITS = Limits(max_bytes=MAX_ENTRY, max_depth=4, max_items=64)


class EntryKind(enum.IntEnum):
    """What a log entry records."""

    ENVELOPE = 1
    REGISTRATION = 2
    ENROLLMENT = 3
    REVOCATION = 4
    RELEASE = 5
    REVIEW = 6
    ALARM_ACK = 7


def at_ms(seconds: float) -> int:
    """A lender time (Unix seconds, as the store keeps it) in the log's whole milliseconds."""
    return int(round(seconds * 1000))


def envelope_entry(device: str, at: int, raw: bytes) -> bytes:
    """The entry of a stored envelope: [1, device, at, envelope bytes] (== cbor.encode of that list; assembled
    directly, since every stored envelope needs one)."""
    return b"".join((b"\x84\x01", _text(device), cbor.encode(at), cbor.bstr_head(len(raw)), raw))


@functools.lru_cache(maxsize=4096)
def _text(device: str) -> bytes:
    return cbor.encode(device)


@dataclass(frozen=True, slots=True)
class EnrollmentEvidence:
    """What makes an enrollment checkable by a third party: the countersigned request, the lender-signed
    response, and the key of the technician who countersigned (as the lender registered it)."""

    request: bytes
    response: bytes
    technician_key: bytes

    def to_cbor(self) -> dict:
        return {4: self.request, 5: self.response, 6: self.technician_key}


@dataclass(frozen=True, slots=True)
class Registration:
    """A registration entry's body: the device's key and asset, its binding and enrollment, when it has them."""

    public_key: bytes
    asset: str = ""
    binding: bytes | None = None
    enrollment: EnrollmentEvidence | None = None

    def to_cbor(self) -> dict:
        body: dict = {1: self.public_key, 2: self.asset}
        if self.binding is not None:
            body[3] = self.binding
        if self.enrollment is not None:
            body.update(self.enrollment.to_cbor())
        return body

    @classmethod
    def from_cbor(cls, body: object) -> Registration:
        if not isinstance(body, dict) or not {1, 2} <= set(body) <= {1, 2, 3, 4, 5, 6}:
            raise SchemaError("a registration body is {1: public key, 2: asset, ?3: binding, ?4..6: enrollment}")
        if not isinstance(body[1], bytes) or len(body[1]) not in (ED25519_PUBLIC_BYTES, P256_PUBLIC_BYTES) \
                or not isinstance(body[2], str):
            raise SchemaError("a registration names a public key (1: 32 bytes Ed25519, or a 65-byte P-256 point) "
                              "and an asset text (2)")
        return cls(body[1], body[2], _binding(body.get(3)), _enrollment(body, required=False))


@dataclass(frozen=True, slots=True)
class Enrollment:
    """An enrollment entry's body: a device registered by hand is enrolled, and bound, from now on."""

    binding: bytes
    enrollment: EnrollmentEvidence

    def to_cbor(self) -> dict:
        return {3: self.binding, **self.enrollment.to_cbor()}

    @classmethod
    def from_cbor(cls, body: object) -> Enrollment:
        if not isinstance(body, dict) or set(body) != {3, 4, 5, 6}:
            raise SchemaError("an enrollment body is {3: binding, 4: request, 5: response, 6: technician key}")
        return cls(_binding(body[3]), _enrollment(body, required=True))


@dataclass(frozen=True, slots=True)
class ReviewNote:
    """A review entry's body: a staff member looked at the signed gap record `seq` and wrote `note`."""

    seq: int
    reviewer: str
    note: str

    def to_cbor(self) -> dict:
        return {1: self.seq, 2: self.reviewer, 3: self.note}

    @classmethod
    def from_cbor(cls, body: object) -> ReviewNote:
        return cls(*_staff_note(body, (), "a review body is {1: seq, 2: reviewer, 3: note}"))


@dataclass(frozen=True, slots=True)
class AlarmAckNote:
    """An alarm ack entry's body: a staff member acknowledged the alarm `alarm` that the device raised in its envelope
    `seq`, and wrote `note`."""

    seq: int
    by: str
    note: str
    alarm: str

    def to_cbor(self) -> dict:
        return {1: self.seq, 2: self.by, 3: self.note, 4: self.alarm}

    @classmethod
    def from_cbor(cls, body: object) -> AlarmAckNote:
        return cls(*_staff_note(body, (4,), "an alarm ack body is {1: seq, 2: acknowledged by, 3: note, 4: alarm name}"))


def _staff_note(body: object, more: tuple[int, ...], shape: str) -> list:
    """The values of a staff member's note about a device's seq: {1: seq, 2: who, 3: note, *more: non-empty text}."""
    keys = (1, 2, 3, *more)
    if not isinstance(body, dict) or set(body) != set(keys) or type(body[1]) is not int or body[1] < 0 \
            or not all(isinstance(body[key], str) for key in keys[1:]) or not all(body[key] for key in more):
        raise SchemaError(shape)
    return [body[key] for key in keys]


def _binding(value: object) -> bytes | None:
    if value is not None and (not isinstance(value, bytes) or len(value) != 8):
        raise SchemaError("a binding is 8 bytes")
    return value


def _enrollment(body: dict, *, required: bool) -> EnrollmentEvidence | None:
    present = [key in body for key in (4, 5, 6)]
    if not any(present) and not required:
        return None
    if not all(present) or not all(isinstance(body[key], bytes) for key in (4, 5, 6)) or len(body[6]) != 32:
        raise SchemaError("enrollment evidence is 4: request, 5: response and 6: a 32-byte technician key, all three")
    return EnrollmentEvidence(body[4], body[5], body[6])


_BODIES = {EntryKind.REGISTRATION: Registration, EntryKind.ENROLLMENT: Enrollment, EntryKind.REVIEW: ReviewNote,
           EntryKind.ALARM_ACK: AlarmAckNote}


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log entry, decoded: its kind, device, lender time (ms) and body (envelope bytes, or a body type)."""

    kind: EntryKind
    device: str
    at: int
    body: bytes | Registration | Enrollment | ReviewNote | AlarmAckNote | None

    def encode(self) -> bytes:
        if self.kind is EntryKind.ENVELOPE:
            return envelope_entry(self.device, self.at, self.body)
        body = {} if self.body is None else self.body.to_cbor()
        return cbor.encode([self.kind.value, self.device, self.at, body])

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> LogEntry:
        """Parse untrusted entry bytes; SchemaError unless they are an entry in its one deterministic encoding."""
        try:
            item = cbor.decode(bytes(data), ENTRY_LIMITS)
        except WireFormatError as exc:
            raise SchemaError(f"a log entry must be CBOR: {exc}") from exc
        if not isinstance(item, list) or len(item) != 4:
            raise SchemaError("a log entry is [kind, device, at, body]")
        kind, device, at, body = item
        try:
            kind = EntryKind(kind) if type(kind) is int else None
        except ValueError:
            kind = None
        if kind is None:
            raise SchemaError(f"log entry kind {item[0]!r} is not one of {[k.value for k in EntryKind]}")
        if not isinstance(device, str) or not device or type(at) is not int or at < 0:
            raise SchemaError("a log entry names a device (text) and a lender time (ms, unsigned)")
        if kind is EntryKind.ENVELOPE:
            if not isinstance(body, bytes):
                raise SchemaError("an envelope entry's body is the envelope's bytes")
            decoded = body
        elif kind in _BODIES:
            decoded = _BODIES[kind].from_cbor(body)
        elif body != {}:
            raise SchemaError(f"a {kind.name.lower()} entry's body is an empty map")
        else:
            decoded = None
        entry = cls(kind, device, at, decoded)
        if entry.encode() != bytes(data):
            raise SchemaError("the log entry is not in its deterministic encoding")
        return entry


@dataclass(frozen=True, slots=True)
class DeviceHead:
    """What a checkpoint commits to for one device: how many entries it has, its last one, its highest seq."""

    device: str
    count: int
    last_index: int
    max_seq: int | None

    def encode(self) -> bytes:
        return cbor.encode([self.device, self.count, self.last_index, self.max_seq])

    @property
    def leaf(self) -> bytes:
        return leaf_hash(self.encode())

    def after(self, index: int, seq: int | None) -> DeviceHead:
        """This head once the entry at `index` (an envelope's `seq`, if it is one) is appended."""
        high = self.max_seq if seq is None or (self.max_seq is not None and self.max_seq >= seq) else seq
        return DeviceHead(self.device, self.count + 1, index, high)
