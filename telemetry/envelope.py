"""The signed envelope: COSE_Sign1 (RFC 9052 §4.2) over a payload holding one SenML pack.

    18([ bstr .cbor {1: alg, 4: kid},     # protected: alg EdDSA (-8) or ES256 (-7), key id
         {},                              # unprotected: empty
         bstr .cbor {1: device, 2: boot, 3: seq, 4: prev, 5: pack, ?6: gap, ?7: clock},
         bstr .size 64 ])                 # Ed25519, or ES256 r || s, over Sig_structure

Version 3 (a node's compact envelope) is version 2 with key 5 holding the
node readings map of `telemetry.nodereadings` instead of a SenML pack, and
the counters (9) as [alarms, gaps] instead of a map.

The signature covers ["Signature1", protected, h'', payload] (RFC 9052 §4.4).
Verification always uses the protected and payload bytes as received, never
a re-encoding. `docs/wire-format.md` is the normative description.
"""
from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from telemetry import alarms, cbor, nodereadings
from telemetry.ack import Reason
from telemetry.cbor import DEFAULT_LIMITS, Limits
from telemetry.clock import ClockStatement
from telemetry.cose import parse_sign1, sig_structure, signer_header
from telemetry.enrollment import valid_id
from telemetry.exc import (
    ClockStatementError,
    OversizeError,
    SchemaError,
    WireFormatError,
)
from telemetry.freshness import check_token_shape
from telemetry.identity import DeviceKey, Signer, algorithm_name
from telemetry.numbers import ALG_EDDSA
from telemetry.senml import Record, encode_pack, records_from_cbor

# payload map keys; 8..11 are version 2 (an envelope without key 8 is version 1, "legacy: no freshness");
# version 3 (a node's compact envelope) has the same keys, key 5 holding node readings (telemetry.nodereadings)
# and key 9 the counters as [alarms, gaps]
DEVICE, BOOT, SEQ, PREV, PACK, GAP, CLOCK = 1, 2, 3, 4, 5, 6, 7
VERSION, COUNTERS, TOKEN, BINDING = 8, 9, 10, 11
# gap map keys; 5 and 6 are an overflow's own account: how full the spool was, how many alarms it dropped
GAP_REASON, GAP_FIRST, GAP_LAST, GAP_COUNT, GAP_QUEUED, GAP_ALARMS_DROPPED = 1, 2, 3, 4, 5, 6
# counters map keys
COUNT_ALARMS, COUNT_GAPS = 1, 2
LEGACY_VERSION, CURRENT_VERSION = 1, 2
NODE_VERSION = 3  # version 2's evidence, the readings as a telemetry.nodereadings map: what NB-IoT nodes sign
BINDING_BYTES = 8

DIGEST_BYTES = 16
GENESIS = bytes(DIGEST_BYTES)  # `prev` of a device's first envelope
MAX_DEVICE_ID = 64


def digest(raw: bytes) -> bytes:
    """The chain link of an envelope: the first 16 bytes of SHA-256 of its exact bytes."""
    return hashlib.sha256(raw).digest()[:DIGEST_BYTES]


class GapReason(str, enum.Enum):
    """Why readings are missing; the `reason` of a signed gap record."""

    OVERFLOW = "overflow"          # the spool was full: routine readings dropped oldest first
    POWER_LOSS = "power-loss"      # the device restarted without a clean shutdown
    SPOOL_RESET = "spool-reset"    # the spool was corrupt and moved aside; unacked readings lost
    STORAGE_FAILURE = "storage-failure"  # the spool could not store readings (disk full, failing card)
    REFUSED = "refused"            # a node let go envelopes the lender refused for good in an authenticated ack


@dataclass(frozen=True, slots=True)
class Gap:
    """A signed statement that readings were lost: which seqs (if known), how many, and why."""

    reason: str
    first: int | None = None
    last: int | None = None
    count: int | None = None
    queued: int | None = None          # overflow: envelopes the spool held when it dropped
    alarms_dropped: int | None = None  # overflow: alarms among the dropped; never more than 0 by design

    def to_cbor(self) -> dict:
        item: dict = {GAP_REASON: str(self.reason.value if isinstance(self.reason, GapReason) else self.reason)}
        for key, value in ((GAP_FIRST, self.first), (GAP_LAST, self.last), (GAP_COUNT, self.count),
                           (GAP_QUEUED, self.queued), (GAP_ALARMS_DROPPED, self.alarms_dropped)):
            if value is not None:
                item[key] = value
        return item

    @classmethod
    def from_cbor(cls, item: object) -> Gap:
        if not isinstance(item, dict) or not isinstance(item.get(GAP_REASON), str):
            raise SchemaError("gap record: expected a map with a text reason (key 1)")
        values = [item.get(key) for key in (GAP_FIRST, GAP_LAST, GAP_COUNT, GAP_QUEUED, GAP_ALARMS_DROPPED)]
        if any(v is not None and not _is_uint(v) for v in values):
            raise SchemaError("gap record: first, last, count, queued and alarms dropped must be unsigned integers")
        first, last, count, queued, alarms_dropped = values
        if first is not None and last is not None and last < first:
            raise SchemaError(f"gap record: last seq {last} is before first seq {first}")
        return cls(item[GAP_REASON], first, last, count, queued, alarms_dropped)


_COUNTER_KEYS = frozenset((COUNT_ALARMS, COUNT_GAPS))


@dataclass(frozen=True, slots=True)
class Counters:
    """Signed cumulative counts (version 2): alarm envelopes and gap records this device has signed, this one included.

    They never go down along a device's chain; the lender compares them with
    what it holds, so an alarm that was signed and never arrived is countable
    even when a gap record claims to cover it.
    """

    alarms: int
    gaps: int

    def to_cbor(self) -> dict:
        return {COUNT_ALARMS: self.alarms, COUNT_GAPS: self.gaps}

    def to_compact(self) -> list:
        """Version 3's form: [alarms, gaps]."""
        return [self.alarms, self.gaps]

    @classmethod
    def from_cbor(cls, item: object) -> Counters:
        if not isinstance(item, dict) or item.keys() != _COUNTER_KEYS \
                or not (_is_uint(item[COUNT_ALARMS]) and _is_uint(item[COUNT_GAPS])):
            raise SchemaError("payload counters (9) must be {1: alarms, 2: gaps}, unsigned integers")
        return cls(item[COUNT_ALARMS], item[COUNT_GAPS])

    @classmethod
    def from_compact(cls, item: object) -> Counters:
        if not isinstance(item, list) or len(item) != 2 or not all(_is_uint(v) for v in item):
            raise SchemaError("version 3 payload counters (9) must be [alarms, gaps], unsigned integers")
        return cls(item[0], item[1])

    def after(self, records: tuple[Record, ...] | list[Record], gap: Gap | None) -> Counters:
        """The counters of the next envelope, holding `records` and `gap`, signed after one with these."""
        return Counters(self.alarms + int(carries_alarm(records)), self.gaps + int(gap is not None))


def carries_alarm(records: tuple[Record, ...] | list[Record]) -> bool:
    """Whether an envelope holding `records` is an alarm envelope (counted in `Counters.alarms`)."""
    return any(r.name.startswith(alarms.PREFIX) for r in records)


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


@dataclass(frozen=True, slots=True)
class Envelope:
    """One signed envelope: its decoded fields and the exact bytes they came from."""

    device: str
    boot: int
    seq: int
    prev: bytes
    records: tuple[Record, ...]
    gap: Gap | None
    clock: dict | None
    kid: bytes
    raw: bytes = field(repr=False)
    protected: bytes = field(repr=False)
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    version: int = LEGACY_VERSION
    counters: Counters | None = None
    token: bytes | None = None       # the newest lender token the device held when it signed
    binding: bytes | None = None     # the enrollment this device is bound to (telemetry.enrollment.binding_of)
    algorithm: int = ALG_EDDSA       # the protected header's alg: EdDSA (-8) or ES256 (-7)

    @property
    def alarm(self) -> bool:
        """Alarms and gap records skip the batching delay and are never dropped by the spool."""
        return self.gap is not None or carries_alarm(self.records)

    @property
    def clock_statement(self) -> ClockStatement | None:
        """The device's clock statement, or None when there is none or it is not the contract's map."""
        try:
            return None if self.clock is None else ClockStatement.from_cbor(self.clock)
        except ClockStatementError:
            return None

    def signed_bytes(self) -> bytes:
        """The Sig_structure this envelope's signature covers, built from the received bytes."""
        return sig_structure(self.protected, self.payload)


def seal(
    identity: Signer,
    *,
    device: str,
    boot: int,
    seq: int,
    prev: bytes,
    records: tuple[Record, ...] | list[Record] = (),
    gap: Gap | None = None,
    clock: ClockStatement | None = None,
    counters: Counters | None = None,
    token: bytes | None = None,
    binding: bytes | None = None,
    compact: bool = False,
) -> Envelope:
    """Build and sign one envelope. Pure: the caller owns the chain state (seq, prev) and the counters.

    With `counters` the envelope is version 2 (and may carry a lender `token`
    and the enrollment `binding`); without, version 1, as before. `compact`
    makes it version 3, a node's: version 2 with the records as node readings
    (ValueError when they do not fit, see `telemetry.nodereadings.to_cbor`).
    """
    if not valid_id(device):
        raise ValueError(f"device id must be 1..{MAX_DEVICE_ID} of A-Z a-z 0-9 . _ - starting with a letter or "
                         f"digit, got {device!r}")
    if not (_is_uint(boot) and _is_uint(seq)):
        raise ValueError("boot and seq must be unsigned 64-bit integers")
    if len(prev) != DIGEST_BYTES:
        raise ValueError(f"prev must be {DIGEST_BYTES} bytes")
    if compact and counters is None:
        raise ValueError("a version 3 envelope carries version 2's counters: give them")
    # the SenML pack arrives encoded (== cbor.encode(pack_to_cbor(records))): the payload copies its bytes
    readings = nodereadings.to_cbor(records) if compact else encode_pack(records)
    body: list[tuple[int, object]] = [(DEVICE, device), (BOOT, boot), (SEQ, seq), (PREV, prev), (PACK, readings)]
    if gap is not None:
        body.append((GAP, gap.to_cbor()))
    if clock is not None:
        body.append((CLOCK, clock.to_cbor()))
    if counters is not None:
        body += [(VERSION, NODE_VERSION if compact else CURRENT_VERSION),
                 (COUNTERS, counters.to_compact() if compact else  # == counters.to_cbor(), encoded directly
                  cbor.Encoded(cbor.encode_labelled([(COUNT_ALARMS, counters.alarms), (COUNT_GAPS, counters.gaps)])))]
        if token is not None:
            body.append((TOKEN, check_token_shape(token)))
        if binding is not None:
            if len(binding) != BINDING_BYTES:
                raise ValueError(f"binding must be {BINDING_BYTES} bytes")
            body.append((BINDING, binding))
    elif token is not None or binding is not None:
        raise ValueError("a token or a binding needs a version 2 envelope: give its counters")
    protected = signer_header(identity.kid, identity.algorithm)
    payload = cbor.encode_labelled(body)  # == cbor.encode(dict(body)): keys 1..11 in order
    signature = identity.sign(sig_structure(protected, payload))
    # == cbor.encode(Tag(18, [protected, {}, payload, signature])), assembled directly (hot path)
    raw = b"".join((
        b"\xd2\x84", cbor.bstr_head(len(protected)), protected, b"\xa0",
        cbor.bstr_head(len(payload)), payload, b"\x58\x40", signature,
    ))
    return Envelope(
        device=device, boot=boot, seq=seq, prev=prev, records=tuple(records), gap=gap,
        clock=None if clock is None else clock.to_cbor(),
        kid=identity.kid, raw=raw, protected=protected, payload=payload, signature=signature, digest=digest(raw),
        version=(NODE_VERSION if compact else CURRENT_VERSION) if counters is not None else LEGACY_VERSION,
        counters=counters,
        token=token if counters is not None else None, binding=binding if counters is not None else None,
        algorithm=identity.algorithm,
    )


_V1_KEYS = frozenset((DEVICE, BOOT, SEQ, PREV, PACK, GAP, CLOCK))
_V2_KEYS = _V1_KEYS | {VERSION, COUNTERS, TOKEN, BINDING}


def decode(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse untrusted envelope bytes without checking the signature; raise WireFormatError if malformed."""
    message = parse_sign1(raw, limits)
    kid, protected, payload, signature = message.kid, message.protected, message.payload, message.signature
    body = cbor.decode(payload, limits)
    if not isinstance(body, dict):
        raise SchemaError("payload must be a map")
    device, boot, seq, prev = body.get(DEVICE), body.get(BOOT), body.get(SEQ), body.get(PREV)
    if not valid_id(device):
        # the registry's pattern: an id that reaches a log line, a terminal or a file name is plain text
        shown = repr(device)[:80] if isinstance(device, str) else f"of type {type(device).__name__}"
        raise SchemaError(f"payload device id (1) {shown} is not an id: 1..{MAX_DEVICE_ID} of A-Z a-z 0-9 . _ - "
                          "starting with a letter or digit")
    if not _is_uint(boot) or not _is_uint(seq):
        raise SchemaError("payload boot (2) and seq (3) must be unsigned integers")
    if not isinstance(prev, bytes) or len(prev) != DIGEST_BYTES:
        raise SchemaError(f"payload prev (4) must be {DIGEST_BYTES} bytes")
    if PACK not in body:
        raise SchemaError("payload has no SenML pack (5)")
    version = body.get(VERSION, LEGACY_VERSION)
    known = _V1_KEYS
    if VERSION in body:
        if version not in (CURRENT_VERSION, NODE_VERSION):
            raise SchemaError(f"payload version (8) {version!r} is not one this lender reads (1, 2 or 3)")
        if COUNTERS not in body:
            raise SchemaError(f"a version {version} payload must carry its counters (9)")
        known = _V2_KEYS
    unknown = None if body.keys() <= known else set(body) - known
    if unknown:
        raise SchemaError(f"payload has unknown keys {sorted(unknown, key=repr)}")
    clock = body.get(CLOCK)
    if clock is not None and not isinstance(clock, dict):
        raise SchemaError("payload clock (7) must be a map")
    token, binding = body.get(TOKEN), body.get(BINDING)
    if token is not None:
        try:
            check_token_shape(token)
        except ValueError as exc:
            raise SchemaError(f"payload token (10): {exc}") from None
    if binding is not None and (not isinstance(binding, bytes) or len(binding) != BINDING_BYTES):
        raise SchemaError(f"payload binding (11) must be {BINDING_BYTES} bytes")
    return Envelope(
        device=device, boot=boot, seq=seq, prev=prev,
        records=nodereadings.from_cbor(body[PACK]) if version == NODE_VERSION else records_from_cbor(body[PACK]),
        gap=Gap.from_cbor(body[GAP]) if GAP in body else None, clock=clock, kid=kid,
        raw=bytes(raw), protected=protected, payload=payload, signature=signature, digest=digest(raw),
        version=version,
        counters=None if COUNTERS not in body else
        Counters.from_compact(body[COUNTERS]) if version == NODE_VERSION else Counters.from_cbor(body[COUNTERS]),
        token=token, binding=binding, algorithm=message.algorithm,
    )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of verifying one envelope, as data: `ok`, a `reason`, a human `detail`."""

    reason: Reason
    detail: str
    envelope: Envelope | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


def verify(raw: bytes, keys: Mapping[bytes, DeviceKey], limits: Limits = DEFAULT_LIMITS) -> Verdict:
    """Decode and verify one envelope against the known device keys (by kid).

    The key must belong to the device the payload names (a device cannot sign
    for another) and be of the algorithm the header names (an ES256 header is
    never checked against an Ed25519 key, nor the reverse). Never raises for
    bad input: the verdict says what is wrong.
    """
    try:
        envelope = decode(raw, limits)
    except WireFormatError as exc:
        reason = Reason.OVERSIZE if isinstance(exc, OversizeError) else Reason.MALFORMED
        return Verdict(reason, str(exc))
    key = keys.get(envelope.kid)
    if key is None:
        return Verdict(Reason.UNKNOWN_KEY, f"no device key with kid {envelope.kid.hex()}", envelope)
    if key.device != envelope.device:
        return Verdict(
            Reason.BAD_SIGNATURE,
            f"kid {envelope.kid.hex()} belongs to device {key.device!r}, not {envelope.device!r}",
            envelope,
        )
    if key.algorithm != envelope.algorithm:
        return Verdict(Reason.BAD_SIGNATURE, f"kid {envelope.kid.hex()} is an {key.algorithm_name} key, the envelope "
                       f"names {algorithm_name(envelope.algorithm)}", envelope)
    if not key.verifies(envelope.signed_bytes(), envelope.signature):
        return Verdict(Reason.BAD_SIGNATURE, f"signature of {envelope.device} seq {envelope.seq} does not verify", envelope)
    return Verdict(Reason.OK, "verified", envelope)
