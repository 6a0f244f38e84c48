"""Signed commands from the lender to one device, and the records a device signs when it acts on one.

A command is a COSE_Sign1 (RFC 9052 §4.2) by the lender's enrollment key
(``DATA/enroll/lender.key``, the key a device already pins through its
enrollment binding), with the external AAD `COMMAND_AAD`, over a CBOR map:

    {1: device, 2: seq, 3: kind, 4: issued, 5: expires, 6: body}

`seq` is per device and strictly increasing: a device applies a command only
when its seq is above the last one it applied, so a replayed, reordered or
older command is refused. `issued` and `expires` are Unix seconds of the
lender's clock. The body depends on the kind:

    inspect     {1: nonce (8..32 bytes), 2: [asset, ...] (empty: every asset)}
    permit      {1: asset, 2: from, 3: until, 4: reason, 5: [input, ...] (empty: every input)}
    configure   {1: version, 2: document (UTF-8 TOML, the rules and sampling sections)}
    rotate-key  {1: nonce}

A device answers in its own signed chain: an ordinary envelope with the
`outcome_records` (the command's seq, kind, a digest of its exact bytes, the
outcome and, for inspect, the nonce; for configure, the new config digest),
so the lender's evidence shows which command the device acted on and how.
Pure: no I/O, no clock (the caller passes `now`).
"""
from __future__ import annotations

import enum
import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from telemetry import cbor, cose
from telemetry.cbor import Limits
from telemetry.enrollment import valid_id
from telemetry.exc import CommandError, CommandRefused, WireFormatError
from telemetry.identity import Identity
from telemetry.manifest import rules_digest
from telemetry.senml import Record

COMMAND_AAD = b"pledgewatch-command/1"
MAX_COMMAND = 16384
MAX_DOCUMENT = 12288
DIGEST_BYTES = 16
LIMITS = Limits(max_bytes=MAX_COMMAND, max_depth=4, max_items=256)
RECORD_PREFIX = "command."
# signed beside the manifest when the lender's configuration is in force and the [[assets]] and [rules] of the
# gateway's own agent.toml differ from it: string, their `telemetry.manifest.rules_digest` (a local edit)
LOCAL_RULES = "device.rules.local"


class Kind(enum.StrEnum):
    """What a command asks a device to do."""

    INSPECT = "inspect"
    PERMIT = "permit"
    CONFIGURE = "configure"
    ROTATE_KEY = "rotate-key"


class Outcome(enum.StrEnum):
    """What a device did with a command (signed into its chain)."""

    APPLIED = "applied"
    REFUSED = "refused"


def _text(value: object, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or any(ord(c) < 0x20 for c in value):
        raise CommandError(f"{what} must be text of 1..{limit} characters without control characters")
    return value


def _ids(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 32 or not all(valid_id(v) for v in value):
        raise CommandError(f"{what} must be a list of up to 32 ids")
    return tuple(value)


def _nonce(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or not 8 <= len(value) <= 32:
        raise CommandError(f"{what} is 8..32 bytes")
    return value


def _uint(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise CommandError(f"{what} must be an unsigned integer")
    return value


@dataclass(frozen=True, slots=True)
class Inspect:
    """Sample every sensor of the named assets (all when empty) now, and sign a snapshot carrying `nonce`."""

    nonce: bytes
    assets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _nonce(self.nonce, "an inspection nonce")
        _ids(list(self.assets), "inspect assets")

    def to_cbor(self) -> dict:
        return {1: self.nonce, 2: list(self.assets)}

    @classmethod
    def from_cbor(cls, body: dict) -> Inspect:
        if set(body) != {1, 2}:
            raise CommandError("an inspect body is {1: nonce, 2: [asset, ...]}")
        return cls(body[1], _ids(body[2], "inspect assets"))


@dataclass(frozen=True, slots=True)
class Permit:
    """An access window for one asset: openings of its inputs (all when empty) in [start, until) are events, not alarms."""

    asset: str
    start: int
    until: int
    reason: str
    inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not valid_id(self.asset):
            raise CommandError(f"permit asset {self.asset!r} is not an id")
        _uint(self.start, "permit from")
        _uint(self.until, "permit until")
        if self.until <= self.start:
            raise CommandError("a permit must end after it starts")
        _text(self.reason, "permit reason")
        _ids(list(self.inputs), "permit inputs")

    def covers(self, asset: str, at: float, sensor: str | None = None) -> bool:
        """Whether an opening of `sensor` on `asset` at `at` (Unix seconds) is inside this window."""
        return (asset == self.asset and self.start <= at < self.until
                and (not self.inputs or sensor is None or sensor in self.inputs))

    def to_cbor(self) -> dict:
        return {1: self.asset, 2: self.start, 3: self.until, 4: self.reason, 5: list(self.inputs)}

    @classmethod
    def from_cbor(cls, body: dict) -> Permit:
        if set(body) != {1, 2, 3, 4, 5}:
            raise CommandError("a permit body is {1: asset, 2: from, 3: until, 4: reason, 5: [input, ...]}")
        return cls(body[1], _uint(body[2], "permit from"), _uint(body[3], "permit until"), body[4],
                   _ids(body[5], "permit inputs"))


@dataclass(frozen=True, slots=True)
class Configure:
    """A new rules and sampling configuration: a versioned TOML document the device validates before applying."""

    version: int
    document: bytes

    def __post_init__(self) -> None:
        _uint(self.version, "configure version")
        if not isinstance(self.document, bytes) or not 1 <= len(self.document) <= MAX_DOCUMENT:
            raise CommandError(f"a configuration document is 1..{MAX_DOCUMENT} bytes")
        try:
            self.document.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CommandError("a configuration document is UTF-8 text") from exc

    @property
    def digest(self) -> bytes:
        """The document's digest, as the device reports it once applied."""
        return config_digest(self.document)

    def to_cbor(self) -> dict:
        return {1: self.version, 2: self.document}

    @classmethod
    def from_cbor(cls, body: dict) -> Configure:
        if set(body) != {1, 2}:
            raise CommandError("a configure body is {1: version, 2: document}")
        return cls(body[1], body[2])


@dataclass(frozen=True, slots=True)
class RotateKey:
    """Make a new key in the same key store and sign the handover with the old one."""

    nonce: bytes

    def __post_init__(self) -> None:
        _nonce(self.nonce, "a rotate-key nonce")

    def to_cbor(self) -> dict:
        return {1: self.nonce}

    @classmethod
    def from_cbor(cls, body: dict) -> RotateKey:
        if set(body) != {1}:
            raise CommandError("a rotate-key body is {1: nonce}")
        return cls(body[1])


Body = Inspect | Permit | Configure | RotateKey
_BODIES: dict[Kind, type] = {Kind.INSPECT: Inspect, Kind.PERMIT: Permit, Kind.CONFIGURE: Configure,
                             Kind.ROTATE_KEY: RotateKey}


def config_digest(document: bytes) -> bytes:
    """The 16-byte digest that names a configuration document (SHA-256, truncated)."""
    return hashlib.sha256(document).digest()[:DIGEST_BYTES]


def configuration_rules_digest(document: bytes) -> str:
    """The `telemetry.manifest.rules_digest` of a configuration document's [[assets]] and [rules] tables.

    What a gateway declares in its manifest (device.rules) while that
    configuration is in force, so the lender compares like with like.
    ValueError if the document is not TOML (a device never applies one).
    """
    try:
        data = tomllib.loads(document.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"not a TOML configuration document: {exc}") from exc
    return rules_digest(data.get("assets", []), data.get("rules", {}))


@dataclass(frozen=True, slots=True)
class Command:
    """One command for one device; `raw` is set on a command that was signed or verified."""

    device: str
    seq: int
    issued: int
    expires: int
    body: Body
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not valid_id(self.device):
            raise CommandError(f"command device {self.device!r} is not an id")
        if _uint(self.seq, "command seq") < 1:
            raise CommandError("command seq starts at 1")
        _uint(self.issued, "command issued")
        if _uint(self.expires, "command expires") <= self.issued:
            raise CommandError("a command must expire after it is issued")
        if type(self.body) not in _BODIES.values():
            raise CommandError(f"unknown command body {type(self.body).__name__}")

    @property
    def kind(self) -> Kind:
        return next(k for k, t in _BODIES.items() if t is type(self.body))

    @property
    def digest(self) -> bytes:
        """The digest of the exact signed bytes: the device names the command by it in its chain."""
        return hashlib.sha256(self.raw).digest()[:DIGEST_BYTES]

    def payload(self) -> bytes:
        return cbor.encode({1: self.device, 2: self.seq, 3: str(self.kind), 4: self.issued, 5: self.expires,
                            6: self.body.to_cbor()})

    def sign(self, lender: Identity) -> Command:
        """This command signed by the lender's key, with `raw` set."""
        raw = cose.sign1(lender, self.payload(), COMMAND_AAD)
        return Command(self.device, self.seq, self.issued, self.expires, self.body, raw)

    @classmethod
    def verify(cls, data: bytes, lender_public_key: bytes) -> Command:
        """The command in `data` if the lender's key signed it and it is well formed; CommandError otherwise.

        Checks the signature and the shape only: whether it is for this
        device, new and unexpired is `accept`'s question.
        """
        try:
            payload = cose.open_sign1(bytes(data), lender_public_key, COMMAND_AAD, LIMITS)
            fields = cbor.decode(payload, LIMITS)
        except WireFormatError as exc:
            raise CommandError(f"not a command signed by the lender: {exc}") from exc
        if not isinstance(fields, dict) or set(fields) != {1, 2, 3, 4, 5, 6} or not isinstance(fields[6], dict):
            raise CommandError("a command payload is {1: device, 2: seq, 3: kind, 4: issued, 5: expires, 6: body}")
        try:
            kind = Kind(fields[3])
        except (ValueError, TypeError) as exc:
            raise CommandError(f"unknown command kind {fields[3]!r}") from exc
        body = _BODIES[kind].from_cbor(fields[6])
        return cls(fields[1], fields[2], fields[4], fields[5], body, bytes(data))


def accept(data: bytes, lender_public_key: bytes, device: str, last_seq: int, now: float) -> Command:
    """The command in `data` if this device may apply it now; CommandRefused (with the reason) otherwise.

    Refused: not signed by the lender (or malformed), for another device, a
    seq not above `last_seq` (replayed, reordered or old), expired at `now`.
    """
    command = Command.verify(data, lender_public_key)
    if command.device != device:
        raise CommandRefused(f"command {command.seq} is for device {command.device!r}, not {device!r}")
    if command.seq <= last_seq:
        raise CommandRefused(f"command {command.seq} is not newer than the last applied ({last_seq}): replayed or old")
    if now >= command.expires:
        raise CommandRefused(f"command {command.seq} expired at {command.expires}")
    return command


def outcome_records(command: Command, outcome: Outcome, at: float, *, detail: str | None = None,
                    config: bytes | None = None) -> list[Record]:
    """The SenML records a device signs into its chain for a command it applied or refused.

    `config` is the digest of the configuration in force after a configure;
    `detail` the refusal's reason (e.g. the validation errors), cut to 200 characters.
    """
    records = [
        Record(RECORD_PREFIX + "seq", value=command.seq, time=at),
        Record(RECORD_PREFIX + "kind", string=str(command.kind), time=at),
        Record(RECORD_PREFIX + "digest", data=command.digest, time=at),
        Record(RECORD_PREFIX + "outcome", string=str(outcome), time=at),
    ]
    if isinstance(command.body, Inspect):
        records.append(Record(RECORD_PREFIX + "nonce", data=command.body.nonce, time=at))
    if isinstance(command.body, Permit):
        permit = command.body
        records += [Record(RECORD_PREFIX + "permit.asset", string=permit.asset, time=at),
                    Record(RECORD_PREFIX + "permit.from", value=permit.start, time=at),
                    Record(RECORD_PREFIX + "permit.until", value=permit.until, time=at)]
    if config is not None:
        records.append(Record(RECORD_PREFIX + "config", data=config, time=at))
    if detail:
        records.append(Record(RECORD_PREFIX + "detail", string=detail[:200], time=at))
    return records


MAX_FETCH_ANSWER = 1024   # bytes of commands in one /c answer; the gateway asks again for the rest
_FETCH_LIMITS = Limits(max_bytes=32, max_depth=2, max_items=4)
_ANSWER_LIMITS = Limits(max_bytes=MAX_FETCH_ANSWER + 64, max_depth=2, max_items=64)


def encode_fetch(last_applied: int) -> bytes:
    """The body a gateway POSTs to /c: {1: the last command seq it applied}."""
    return cbor.encode({1: _uint(last_applied, "last applied seq")})


def decode_fetch(body: bytes) -> int:
    """The last applied seq in a /c request body; CommandError if it is not {1: uint}."""
    try:
        fields = cbor.decode(bytes(body), _FETCH_LIMITS)
    except WireFormatError as exc:
        raise CommandError(f"a /c request is not CBOR: {exc}") from exc
    if not isinstance(fields, dict) or set(fields) != {1}:
        raise CommandError("a /c request is {1: last applied command seq}")
    return _uint(fields[1], "last applied seq")


def encode_commands(commands: Sequence[bytes]) -> bytes:
    """A /c answer: the commands' exact signed bytes, oldest first."""
    return cbor.encode(list(commands))


def decode_commands(payload: bytes) -> list[bytes]:
    """The commands in a /c answer (each still to be verified by the device); CommandError if malformed."""
    try:
        items = cbor.decode(bytes(payload), _ANSWER_LIMITS)
    except WireFormatError as exc:
        raise CommandError(f"a /c answer is not CBOR: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        raise CommandError("a /c answer is a CBOR array of byte strings")
    return items


def inspection_nonce(records: Sequence[Record]) -> bytes | None:
    """The nonce of the inspection that a signed envelope's records answer, if they answer one."""
    for record in records:
        if record.name == RECORD_PREFIX + "nonce" and record.data is not None:
            return record.data
    return None
