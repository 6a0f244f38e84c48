"""The lender's device registry: which devices may send telemetry, with which key, bound to which asset.

Data (`Device`, `DeviceStatus`), the interface any storage backend implements
for it (`Registry`; `lender.evidence.store.SQLiteStore` is the default one), and the two
staff operations, `register` and `revoke`, which keep the registry and the
device's OSCORE context (`lender.enrollment.contexts`) consistent: a device is never left
half-registered.

A revoked device stays in the registry (its key still verifies evidence it
signed before) and keeps its OSCORE context loaded, so that its requests get an
authenticated 4.03 Forbidden instead of a silent drop.

A key rotation (the rotate-key command, telemetry.rotation) switches the
device's key in force to the one its verified handover names, from the seq
after the handover (`Device.key_since`); the key it replaces is kept as a
`RetiredKey` for the evidence it signed up to the handover, and anything it
signs above that is refused. The enrolled key stays named
(`Device.enrolled_key`): an offline verifier follows the chain from it. The
device's OSCORE context does not change with its signing key.
"""
from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from lender.exc import InvalidDeviceError, UnknownDeviceError
from telemetry.clock import iso_utc
from telemetry.enrollment import valid_id
from telemetry.exc import IdentityError
from telemetry.identity import (
    ED25519_PUBLIC_BYTES,
    P256_PUBLIC_BYTES,
    DeviceKey,
    algorithm_name,
    algorithm_of,
    kid_of,
)
from telemetry.logentry import EnrollmentEvidence

# A registered device id also names its OSCORE context directory, so it is the
# safe subset of the wire format's 1..64-character device ids.


class DeviceStatus(str, enum.Enum):
    """Whether a device's telemetry is accepted."""

    ACTIVE = "active"
    REVOKED = "revoked"


class KeyStorage(str, enum.Enum):
    """Where the lender knows the device's signing key lives: what it can prove, not what it was told.

    A key is `software` (a seed file: whoever copies the gateway's disk can
    sign as it) unless the enrollment proved it TPM-resident (TPM2_Certify by
    an attestation key under an endorsement key certified by a TPM maker): a
    P-256 key a technician merely says is in a TPM is still `software` here.
    """

    SOFTWARE = "software"
    TPM_ATTESTED = "tpm-attested"


def check_device_id(device_id: object) -> str:
    """Return `device_id` if it can be registered (1..64 of A-Z a-z 0-9 . _ -, starting alphanumeric)."""
    if not valid_id(device_id):
        raise InvalidDeviceError(
            f"device id {device_id!r} cannot be registered: use 1..64 of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return device_id


def parse_public_key(text: str) -> bytes:
    """A public key from its hex (as `pledgewatch provision` prints it): 64 digits for Ed25519, 130 for a
    P-256 key (the uncompressed point 04 || X || Y)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise InvalidDeviceError(f"public key {text!r} is not hex") from exc
    check_public_key(key, "the public key")
    return key


def check_public_key(key: object, whose: str) -> int:
    """The COSE algorithm of a public key the registry can hold (Ed25519, or a point on P-256); InvalidDeviceError otherwise."""
    try:
        DeviceKey("check", key)
        return algorithm_of(key)
    except IdentityError as exc:
        size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise InvalidDeviceError(
            f"{whose} must be an Ed25519 key ({ED25519_PUBLIC_BYTES} bytes, {2 * ED25519_PUBLIC_BYTES} hex digits) or "
            f"a P-256 point ({P256_PUBLIC_BYTES} bytes starting 04, {2 * P256_PUBLIC_BYTES} hex digits), got {size}"
        ) from exc


def iso_time(seconds: float | None) -> str | None:
    """UTC ISO 8601 with a Z, to the millisecond: how the lender's tools print times."""
    return None if seconds is None else iso_utc(seconds)



_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])\Z")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ISO 8601 (UTC unless it names a zone), a number of Unix seconds, or an age (30m, 7d)."""
    text = text.strip()
    now = time.time() if now is None else now
    age = _AGE.match(text)
    if age:
        return now - float(age.group(1)) * _AGE_SECONDS[age.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"time {text!r} is not ISO 8601, Unix seconds or an age like 30m / 12h / 7d") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Device:
    """One registered device: its identity, its key, its asset, its OSCORE context and its status."""

    device: str
    public_key: bytes = field(repr=False)
    registered_at: float
    asset: str | None = None
    oscore_context: str | None = None  # the lender side's directory, relative to the data directory
    oscore_id: bytes | None = None     # the device's OSCORE sender id (the lender's recipient id)
    status: DeviceStatus = DeviceStatus.ACTIVE
    revoked_at: float | None = None
    binding: bytes | None = None       # the enrollment its envelopes must name (telemetry.enrollment.binding_of)
    key_storage: KeyStorage = KeyStorage.SOFTWARE
    algorithm: str | None = None       # `EdDSA` or `ES256`: follows from the key's encoding; when given, must agree
    key_since: int | None = None       # after a rotation: the handover's seq; the key signs the seqs above it
    enrolled_key: bytes | None = field(default=None, repr=False)  # after a rotation: the key it was registered with
    key_race: str | None = None        # two handovers answered one rotation: the old key is in two hands
    rotated_key_storage: str | None = None  # after a rotation: what the handover proved of the new key (None: software)
    key_storage_note: str | None = None     # a tpm-attested device's key handed over without that proof: why
    kid: bytes = field(init=False)

    def __post_init__(self) -> None:
        check_device_id(self.device)
        algorithm = algorithm_name(check_public_key(self.public_key, f"device {self.device}'s public key"))
        if self.algorithm not in (None, algorithm):
            raise InvalidDeviceError(f"device {self.device}: its key is an {algorithm} key, not {self.algorithm!r}")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "status", DeviceStatus(self.status))
        # an enrollment's attestation certified the enrolled key; a key a rotation made since is `tpm-attested`
        # only when its handover carried a certification by the same attestation key (lender.evidence.ingest)
        object.__setattr__(self, "key_storage", KeyStorage(self.rotated_key_storage or KeyStorage.SOFTWARE)
                           if self.key_since is not None else KeyStorage(self.key_storage))
        object.__setattr__(self, "kid", kid_of(self.public_key))

    @property
    def active(self) -> bool:
        return self.status is DeviceStatus.ACTIVE

    def key(self) -> DeviceKey:
        """What a verifier needs: the device id and its public key (the one in force)."""
        return DeviceKey(self.device, self.public_key)

    def enrolled(self) -> DeviceKey:
        """The key the device was registered with: where an offline verifier starts following its chain."""
        return DeviceKey(self.device, self.enrolled_key or self.public_key)

    def to_json(self) -> dict:
        """The row `lender devices --json` prints (and `lender verify --keys` reads back)."""
        return {
            "device": self.device,
            "kid": self.kid.hex(),
            "public_key_hex": self.public_key.hex(),
            "status": self.status.value,
            "asset": self.asset,
            "oscore_context": self.oscore_context,
            "oscore_id_hex": None if self.oscore_id is None else self.oscore_id.hex(),
            "registered_at": iso_time(self.registered_at),
            "revoked_at": iso_time(self.revoked_at),
            "binding_hex": None if self.binding is None else self.binding.hex(),
            "algorithm": self.algorithm,
            "key_storage": self.key_storage.value,
            "key_since_seq": self.key_since,
            "enrolled_public_key_hex": (self.enrolled_key or self.public_key).hex(),
            "key_race": self.key_race,
            "key_storage_note": self.key_storage_note,
        }


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """A device key a rotation replaced: it verifies what the device signed up to `through_seq` (the handover)."""

    device: str
    public_key: bytes = field(repr=False)
    through_seq: int
    retired_at: float
    command_digest: bytes = field(repr=False)

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)

    def key(self) -> DeviceKey:
        return DeviceKey(self.device, self.public_key)


class Registry(Protocol):
    """What the lender needs from wherever devices are kept (SQLite by default, see lender.evidence.store)."""

    def registry_generation(self) -> int:
        """A number that changes whenever a device is added or changes status (cheap: read per request)."""

    def device(self, device_id: str) -> Device | None:
        """The device registered under `device_id`, active or revoked, or None."""

    def device_by_kid(self, kid: bytes) -> Device | None:
        """The device whose public key has key id `kid`, or None."""

    def devices(self) -> list[Device]:
        """Every registered device, by id."""

    def add_device(self, device: Device, enrollment: EnrollmentEvidence | None = None) -> None:
        """Register `device` (with the enrollment that made it, if any: both go into the lender's log); raise
        DeviceExistsError if its id or kid is taken."""

    def set_revoked(self, device_id: str, at: float) -> Device:
        """Mark the device revoked at `at` (idempotent); raise UnknownDeviceError if absent."""

    def bind(self, device_id: str, binding: bytes, enrollment: EnrollmentEvidence | None = None) -> Device:
        """Give a device registered without an enrollment its first enrollment binding (never replaces one),
        logging the enrollment that made it."""

    def retired_keys(self, device_id: str | None = None) -> list[RetiredKey]:
        """The keys rotations replaced (of one device, or all), oldest handover first."""

    def switch_key(self, device_id: str, public_key: bytes, handover_seq: int, command_digest: bytes,
                   at: float, *, key_storage: KeyStorage = KeyStorage.SOFTWARE, note: str | None = None) -> Device:
        """A verified handover at `handover_seq`: `public_key` is in force above it, the key it replaces retired
        (kept for what it signed); inside the caller's transaction, with the handover envelope's insert.
        `key_storage`: what the handover proved of the new key; `note`: why a tpm-attested device's new key is
        `software` (kept until a later note replaces it)."""

    def flag_key_race(self, device_id: str, detail: str) -> None:
        """Two handovers answered one rotation (the old key is in two hands): say so on the device (the first kept)."""


def revoke(registry: Registry, device_id: str, *, now: float | None = None) -> Device:
    """Revoke a device: its envelopes are refused from now on (reason 4), its past evidence stays."""
    if registry.device(device_id) is None:
        raise UnknownDeviceError(f"no device {device_id!r} is registered (see `pledgewatch lender devices`)")
    return registry.set_revoked(device_id, time.time() if now is None else now)
