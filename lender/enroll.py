"""Enrollment at the lender: the request and response format, the technician registry, and the CoAP resources.

A device becomes known to the lender by an *enrollment request* that two
keys sign (docs/decisions.md, "Enrollment", has the layout and the reasons):

* the device's own Ed25519 key (proof that whoever asks holds the key), and
* a registered field technician's Ed25519 key (someone accountable vouches
  for the device, its IMEI/ICCID and the pledged asset it watches).

The request is a COSE_Sign (RFC 9052 §4.1, tag 98) over a CBOR body, one
COSE_Signature per signer (kid = SHA-256(public key)[0:8], alg EdDSA), with
the external AAD ``pledgewatch-enroll-request/1``. It travels as plain CoAP
(``POST /enroll``, the device has no OSCORE context yet) or as a file carried
to any network (``pledgewatch provision submit``): it holds no secret.

The lender checks both signatures against its registries, registers the
device (lender.registry) with a fresh OSCORE context (lender.oscore) when
the body carries a response key, and answers with an *enrollment response*:
a COSE_Sign1 (tag 18) by the lender's enrollment key
(``DATA/enroll/lender.key``; technicians pin its public key) over the device
id, the SHA-256 of the request body it answers, and the device's side of the
OSCORE context sealed to the request's response key — an X25519 public key
the device made for this enrollment alone (libsodium ``crypto_box_seal``:
ephemeral X25519 + XSalsa20-Poly1305). Only the device can open it; only the
lender can have signed it. The exact same request again gets the exact same
response (a lost answer, a second ``submit``), so retrying is always safe.

Site files (``GET /enroll/sites/<asset id>``): the asset binding and the
sensors of a pledged asset as the lender's staff wrote them
(``DATA/enroll/sites/<asset id>.toml``), signed with the enrollment key so a
gateway can take its binding from the lender instead of a file.

Installation reports (``POST /installations``) are COSE_Sign over the
pre-flight results, signed by the enrolled device and the technician, and
kept under ``DATA/enroll/reports/<device>/``.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiocoap
import aiocoap.resource
import nacl.exceptions
import nacl.public
from aiocoap import interfaces
from aiocoap.numbers import ContentFormat, codes

from lender import oscore
from lender.exc import (
    DeviceExistsError,
    EnrollmentFormatError,
    InvalidTechnicianError,
    LenderError,
    TechnicianExistsError,
    UnknownTechnicianError,
)
from lender.registry import Device, check_device_id, iso_time
from telemetry import cbor
from telemetry.cbor import Limits, Tag
from telemetry.exc import IdentityError, WireFormatError
from telemetry.identity import DeviceKey, Identity, kid_of

log = logging.getLogger(__name__)

ENROLL_PATH = ("enroll",)
REPORTS_PATH = ("installations",)
SITES_PATH = ("enroll", "sites")  # GET /enroll/sites/<asset id>: the lender's site file for that asset, signed
CBOR_FORMAT = 60
REQUEST_AAD = b"pledgewatch-enroll-request/1"
RESPONSE_AAD = b"pledgewatch-enroll-response/1"
REPORT_AAD = b"pledgewatch-installation-report/1"
SITE_AAD = b"pledgewatch-site/1"
MAX_SITE = 32768
COSE_SIGN, COSE_SIGN1, EDDSA = 98, 18, -8
MAX_REQUEST = 4096
MAX_REPORT = 16384
MAX_AGE_S = 30 * 86400      # a request carried around offline is accepted for 30 days
MAX_FUTURE_S = 86400        # and up to a day "from the future" (a gateway clock before its first sync)
ENROLL_DIR = "enroll"
KINDS = ("gateway", "node")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LIMITS = Limits(max_bytes=MAX_REQUEST, max_depth=6, max_items=256)


# --- COSE_Sign / COSE_Sign1 with EdDSA -----------------------------------------------------

def signer_header(kid: bytes) -> bytes:
    """A signer's protected header: {1: -8 (EdDSA), 4: kid}."""
    return cbor.encode({1: EDDSA, 4: kid})


def to_be_signed(payload: bytes, kid: bytes, aad: bytes) -> bytes:
    """The COSE_Sign Sig_structure (RFC 9052 §4.4) one signer signs; the body's protected header is empty."""
    return cbor.encode(["Signature", b"", signer_header(kid), aad, payload])


def to_be_signed1(payload: bytes, kid: bytes, aad: bytes) -> bytes:
    """The COSE_Sign1 Sig_structure ("Signature1")."""
    return cbor.encode(["Signature1", signer_header(kid), aad, payload])


def encode_sign(payload: bytes, signatures: list[tuple[bytes, bytes]]) -> bytes:
    """COSE_Sign: tag 98 around [h'', {}, payload, [[protected, {}, signature], ...]]."""
    return cbor.encode(Tag(COSE_SIGN, [b"", {}, payload, [[signer_header(kid), {}, sig] for kid, sig in signatures]]))


def decode_sign(data: bytes, limits: Limits = _LIMITS) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(payload, [(kid, signature), ...]) of a COSE_Sign with EdDSA signers; EnrollmentFormatError otherwise."""
    try:
        item = cbor.decode(bytes(data), limits)
    except WireFormatError as exc:
        raise EnrollmentFormatError(f"not well-formed CBOR: {exc}") from exc
    if not isinstance(item, Tag) or item.number != COSE_SIGN:
        raise EnrollmentFormatError("not a COSE_Sign (CBOR tag 98)")
    value = item.value
    if (not isinstance(value, list) or len(value) != 4 or value[0] != b"" or value[1] != {}
            or not isinstance(value[2], bytes) or not isinstance(value[3], list) or not 1 <= len(value[3]) <= 4):
        raise EnrollmentFormatError("COSE_Sign must be [h'', {}, payload, [1..4 signatures]]")
    signatures = []
    for entry in value[3]:
        if not isinstance(entry, list) or len(entry) != 3 or entry[1] != {} or not isinstance(entry[0], bytes) \
                or not isinstance(entry[2], bytes) or len(entry[2]) != 64:
            raise EnrollmentFormatError("each COSE_Signature must be [protected, {}, 64-byte signature]")
        kid = _signer_kid(entry[0])
        signatures.append((kid, entry[2]))
    return value[2], signatures


def _signer_kid(protected: bytes) -> bytes:
    try:
        header = cbor.decode(protected, Limits(max_bytes=64, max_depth=2, max_items=8))
    except WireFormatError as exc:
        raise EnrollmentFormatError(f"a signer's protected header is not CBOR: {exc}") from exc
    if not isinstance(header, dict) or header.get(1) != EDDSA or set(header) != {1, 4} \
            or not isinstance(header[4], bytes) or len(header[4]) != 8:
        raise EnrollmentFormatError("a signer's protected header must be {1: -8, 4: kid(8)}")
    if protected != signer_header(header[4]):
        raise EnrollmentFormatError("a signer's protected header is not deterministically encoded")
    return header[4]


def encode_sign1(identity: Identity, payload: bytes, aad: bytes) -> bytes:
    signature = identity.sign(to_be_signed1(payload, identity.kid, aad))
    return cbor.encode(Tag(COSE_SIGN1, [signer_header(identity.kid), {}, payload, signature]))


def decode_sign1(data: bytes, public_key: bytes, aad: bytes) -> bytes:
    """The payload of a COSE_Sign1 by `public_key`; EnrollmentFormatError if it is not one or does not verify."""
    try:
        item = cbor.decode(bytes(data), _LIMITS)
    except WireFormatError as exc:
        raise EnrollmentFormatError(f"not well-formed CBOR: {exc}") from exc
    if not isinstance(item, Tag) or item.number != COSE_SIGN1 or not isinstance(item.value, list) \
            or len(item.value) != 4:
        raise EnrollmentFormatError("not a COSE_Sign1 (CBOR tag 18)")
    protected, unprotected, payload, signature = item.value
    if not isinstance(protected, bytes) or unprotected != {} or not isinstance(payload, bytes) \
            or not isinstance(signature, bytes):
        raise EnrollmentFormatError("COSE_Sign1 must be [protected, {}, payload, signature]")
    kid = _signer_kid(protected)
    if kid != kid_of(public_key):
        raise EnrollmentFormatError(f"signed by key {kid.hex()}, not by the expected key {kid_of(public_key).hex()}")
    if not DeviceKey("lender", public_key).verifies(to_be_signed1(payload, kid, aad), signature):
        raise EnrollmentFormatError("the signature does not verify")
    return payload


# --- the request body ----------------------------------------------------------------------

def _text(value: object, what: str, *, limit: int = 200, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise EnrollmentFormatError(f"{what} must be text of {'0' if empty else '1'}..{limit} characters")
    if any(ord(c) < 0x20 for c in value):
        raise EnrollmentFormatError(f"{what} must not hold control characters")
    return value


def _number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise EnrollmentFormatError(f"{what} must be a number in {low}..{high}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Geofence:
    """A circle the pledged asset must stay in: centre (WGS 84 degrees) and radius in metres."""

    lat: float
    lon: float
    radius_m: float

    def __post_init__(self) -> None:
        _number(self.lat, "geofence lat", -90, 90)
        _number(self.lon, "geofence lon", -180, 180)
        _number(self.radius_m, "geofence radius_m", 1, 1_000_000)

    def to_map(self) -> dict:
        return {"lat": float(self.lat), "lon": float(self.lon), "radius_m": float(self.radius_m)}


@dataclass(frozen=True, slots=True)
class AssetBinding:
    """Which pledged asset a device watches: the lender's asset id, the site, and optionally a geofence."""

    asset: str
    site: str = ""
    geofence: Geofence | None = None

    def __post_init__(self) -> None:
        _text(self.asset, "asset id", limit=64)
        _text(self.site, "site", empty=True)

    def to_map(self) -> dict:
        data: dict = {"asset": self.asset, "site": self.site}
        if self.geofence is not None:
            data["geofence"] = self.geofence.to_map()
        return data

    @classmethod
    def from_map(cls, data: object, where: str = "asset binding") -> AssetBinding:
        if not isinstance(data, Mapping):
            raise EnrollmentFormatError(f"{where} must be a map with asset, site, geofence")
        unknown = set(data) - {"asset", "site", "geofence"}
        if unknown:
            raise EnrollmentFormatError(f"{where} has unknown key(s) {sorted(map(str, unknown))}; "
                                        "allowed: asset, site, geofence")
        fence = data.get("geofence")
        if fence is not None:
            if not isinstance(fence, Mapping) or set(fence) != {"lat", "lon", "radius_m"}:
                raise EnrollmentFormatError(f"{where}: geofence must have exactly lat, lon, radius_m")
            fence = Geofence(_number(fence["lat"], "geofence lat", -90, 90),
                             _number(fence["lon"], "geofence lon", -180, 180),
                             _number(fence["radius_m"], "geofence radius_m", 1, 1_000_000))
        return cls(_text(data.get("asset"), f"{where}: asset", limit=64),
                   _text(data.get("site", ""), f"{where}: site", empty=True), fence)


@dataclass(frozen=True, slots=True)
class EnrollmentBody:
    """What the device and the technician sign (CBOR map, integer keys 1..9)."""

    device: str
    kind: str
    public_key: bytes
    technician: str
    hardware: Mapping[str, str]
    binding: AssetBinding
    created: int
    nonce: bytes
    response_key: bytes | None = None  # X25519 public key to seal the OSCORE context to; None: no context wanted

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _ID.fullmatch(self.device):
            raise EnrollmentFormatError(f"device id {self.device!r}: use 1..64 of A-Z a-z 0-9 . _ - "
                                        "starting with a letter or digit")
        if self.kind not in KINDS:
            raise EnrollmentFormatError(f"kind {self.kind!r} must be one of {', '.join(KINDS)}")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise EnrollmentFormatError("the device public key must be 32 bytes (Ed25519)")
        if not isinstance(self.technician, str) or not _ID.fullmatch(self.technician):
            raise EnrollmentFormatError(f"technician id {self.technician!r} is not a valid id")
        if not isinstance(self.hardware, Mapping) or len(self.hardware) > 16:
            raise EnrollmentFormatError("hardware must be a map of at most 16 text entries")
        for key, value in self.hardware.items():
            _text(key, "a hardware key", limit=32)
            _text(value, f"hardware {key}", limit=128)
        if isinstance(self.created, bool) or not isinstance(self.created, int) or self.created < 0:
            raise EnrollmentFormatError("created must be Unix seconds")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 16:
            raise EnrollmentFormatError("nonce must be 16 bytes")
        if self.response_key is not None and (not isinstance(self.response_key, bytes) or len(self.response_key) != 32):
            raise EnrollmentFormatError("response key must be a 32-byte X25519 public key")

    def encode(self) -> bytes:
        data = {1: self.device, 2: self.kind, 3: self.public_key, 4: self.technician, 5: dict(self.hardware),
                6: self.binding.to_map(), 7: self.created, 8: self.nonce}
        if self.response_key is not None:
            data[9] = self.response_key
        return cbor.encode(data)

    @classmethod
    def decode(cls, payload: bytes) -> EnrollmentBody:
        try:
            data = cbor.decode(payload, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"the request body is not CBOR: {exc}") from exc
        if not isinstance(data, dict) or not set(data) <= set(range(1, 10)) or not set(range(1, 9)) <= set(data):
            raise EnrollmentFormatError("the request body must be a map with keys 1..8 (and 9)")
        body = cls(data[1], data[2], data[3], data[4], data[5], AssetBinding.from_map(data[6]), data[7], data[8],
                   data.get(9))
        if body.encode() != bytes(payload):
            raise EnrollmentFormatError("the request body is not in deterministic CBOR")
        return body

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)


@dataclass(frozen=True, slots=True)
class EnrollmentRequest:
    """A signed enrollment request: the body's bytes, the device's signature and (once countersigned) the technician's."""

    payload: bytes
    device_signature: bytes
    technician_signature: bytes | None = None
    technician_kid: bytes | None = None
    body: EnrollmentBody = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body", EnrollmentBody.decode(self.payload))

    @staticmethod
    def device_message(body: EnrollmentBody) -> tuple[bytes, bytes]:
        """(payload, what the device signs): for a node, the second goes to the node and its signature comes back."""
        payload = body.encode()
        return payload, to_be_signed(payload, body.kid, REQUEST_AAD)

    @classmethod
    def create(cls, body: EnrollmentBody, device_sign: Callable[[bytes], bytes]) -> EnrollmentRequest:
        payload, message = cls.device_message(body)
        signature = device_sign(message)
        request = cls(payload, signature)
        if not request.device_signature_valid():
            raise EnrollmentFormatError("the device's signature over the request does not verify with its public key")
        return request

    def device_signature_valid(self) -> bool:
        return DeviceKey(self.body.device, self.body.public_key).verifies(
            to_be_signed(self.payload, self.body.kid, REQUEST_AAD), self.device_signature)

    def countersign(self, technician: Identity) -> EnrollmentRequest:
        """The same request with the technician's signature added (replacing an earlier one)."""
        signature = technician.sign(to_be_signed(self.payload, technician.kid, REQUEST_AAD))
        return EnrollmentRequest(self.payload, self.device_signature, signature, technician.kid)

    @property
    def countersigned(self) -> bool:
        return self.technician_signature is not None

    @property
    def digest(self) -> bytes:
        """SHA-256 of the body: what the response names."""
        return hashlib.sha256(self.payload).digest()

    def encode(self) -> bytes:
        signatures = [(self.body.kid, self.device_signature)]
        if self.technician_signature is not None:
            signatures.append((self.technician_kid, self.technician_signature))
        return encode_sign(self.payload, signatures)

    @classmethod
    def decode(cls, data: bytes) -> EnrollmentRequest:
        payload, signatures = decode_sign(data)
        body = EnrollmentBody.decode(payload)
        if len(signatures) > 2 or signatures[0][0] != body.kid:
            raise EnrollmentFormatError("the first signature must be the device's, and at most one more may follow")
        technician = signatures[1] if len(signatures) == 2 else (None, None)
        if technician[0] == body.kid:
            raise EnrollmentFormatError("the countersignature must be a technician's, not the device's own")
        return cls(payload, signatures[0][1], technician[1], technician[0])


# --- the response ---------------------------------------------------------------------------

def seal_context(params: oscore.ContextParameters, response_key: bytes) -> bytes:
    """The device's side of its OSCORE context, CBOR-encoded and sealed to the device's X25519 key."""
    plain = cbor.encode({1: params.sender_id, 2: params.recipient_id, 3: params.master_secret,
                         4: params.master_salt, 5: oscore.ALGORITHM, 6: oscore.KDF_HASH})
    return nacl.public.SealedBox(nacl.public.PublicKey(response_key)).encrypt(plain)


def open_context(sealed: bytes, response_private: nacl.public.PrivateKey) -> oscore.ContextParameters:
    try:
        plain = nacl.public.SealedBox(response_private).decrypt(sealed)
        data = cbor.decode(plain, Limits(max_bytes=512, max_depth=2, max_items=16))
    except (nacl.exceptions.CryptoError, WireFormatError) as exc:
        raise EnrollmentFormatError(f"the sealed OSCORE context cannot be opened with this device's key: {exc}") from exc
    if not isinstance(data, dict) or data.get(5) != oscore.ALGORITHM or data.get(6) != oscore.KDF_HASH:
        raise EnrollmentFormatError(f"the sealed OSCORE context is not {oscore.ALGORITHM} with {oscore.KDF_HASH}")
    try:
        return oscore.ContextParameters(data[1], data[2], data[3], data[4])
    except (KeyError, LenderError) as exc:
        raise EnrollmentFormatError(f"the sealed OSCORE context is malformed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class EnrollmentResponse:
    """The lender's signed answer: the device is enrolled, for this request, with this sealed context."""

    device: str
    request_digest: bytes
    registered_at: int
    asset: str
    sealed_context: bytes | None = None

    def payload(self) -> bytes:
        data = {1: self.device, 2: self.request_digest, 3: self.registered_at, 4: self.asset}
        if self.sealed_context is not None:
            data[5] = self.sealed_context
        return cbor.encode(data)

    def sign(self, lender: Identity) -> bytes:
        return encode_sign1(lender, self.payload(), RESPONSE_AAD)

    @classmethod
    def verify(cls, data: bytes, lender_public_key: bytes) -> EnrollmentResponse:
        payload = decode_sign1(data, lender_public_key, RESPONSE_AAD)
        try:
            fields = cbor.decode(payload, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"the response payload is not CBOR: {exc}") from exc
        if not isinstance(fields, dict) or not {1, 2, 3, 4} <= set(fields) <= {1, 2, 3, 4, 5}:
            raise EnrollmentFormatError("the response payload must be a map with keys 1..4 (and 5)")
        if not isinstance(fields[1], str) or not isinstance(fields[2], bytes) or type(fields[3]) is not int \
                or not isinstance(fields[4], str) or not isinstance(fields.get(5, b""), bytes):
            raise EnrollmentFormatError("the response payload has a field of the wrong type")
        return cls(fields[1], fields[2], fields[3], fields[4], fields.get(5))


# --- installation reports --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the pre-flight table."""

    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InstallationReport:
    """The pre-flight of one installation, as the device and the technician sign it."""

    device: str
    technician: str
    at: int
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def payload(self) -> bytes:
        return cbor.encode({1: self.device, 2: self.technician, 3: self.at,
                            4: [[r.name, r.passed, r.detail] for r in self.results], 5: self.passed})

    @classmethod
    def decode(cls, payload: bytes) -> InstallationReport:
        try:
            data = cbor.decode(payload, Limits(max_bytes=MAX_REPORT, max_depth=4, max_items=1024))
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"the report is not CBOR: {exc}") from exc
        if not isinstance(data, dict) or set(data) != {1, 2, 3, 4, 5} or not isinstance(data[4], list):
            raise EnrollmentFormatError("a report must be a map with keys 1..5")
        results = []
        for row in data[4]:
            if not isinstance(row, list) or len(row) != 3 or not isinstance(row[1], bool):
                raise EnrollmentFormatError("each report row must be [name, passed, detail]")
            results.append(CheckResult(_text(row[0], "check name", limit=64), row[1],
                                       _text(row[2], "check detail", limit=500, empty=True)))
        if not isinstance(data[1], str) or not isinstance(data[2], str) or type(data[3]) is not int:
            raise EnrollmentFormatError("a report's device, technician and time have the wrong types")
        report = cls(data[1], data[2], data[3], tuple(results))
        if data[5] != report.passed:
            raise EnrollmentFormatError("a report's overall verdict contradicts its rows")
        return report

    def sign(self, device: Identity | Callable[[bytes], bytes], device_kid: bytes, technician: Identity) -> bytes:
        payload = self.payload()
        device_sign = device.sign if isinstance(device, Identity) else device
        signatures = [(device_kid, device_sign(to_be_signed(payload, device_kid, REPORT_AAD))),
                      (technician.kid, technician.sign(to_be_signed(payload, technician.kid, REPORT_AAD)))]
        return encode_sign(payload, signatures)


# --- small private files -----------------------------------------------------------------------

def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def enroll_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / ENROLL_DIR


def lender_identity(data_dir: str | os.PathLike, *, create: bool = True) -> Identity:
    """The lender's enrollment signing key (``DATA/enroll/lender.key``, 0600), made on first use."""
    path = enroll_dir(data_dir) / "lender.key"
    if not path.exists() and create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(IdentityError):
            Identity.generate().save(path)  # a concurrent creator may win the link: then load theirs
    return Identity.load(path)


# --- the technician registry --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Technician:
    """A field technician whose countersignature the lender accepts."""

    technician: str
    public_key: bytes = field(repr=False)
    name: str = ""
    added_at: float = 0.0
    revoked_at: float | None = None

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict:
        return {"technician": self.technician, "kid": self.kid.hex(), "public_key_hex": self.public_key.hex(),
                "name": self.name, "added_at": iso_time(self.added_at), "revoked_at": iso_time(self.revoked_at),
                "status": "active" if self.active else "revoked"}


class TechnicianRegistry:
    """Technicians in ``DATA/enroll/technicians.json`` (0600), changed under a lock, replaced atomically."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.path = enroll_dir(data_dir) / "technicians.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.parent / ".technicians.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Technician]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidTechnicianError(f"technician registry {self.path} cannot be read: {exc}") from exc
        return {t["technician"]: Technician(t["technician"], bytes.fromhex(t["public_key_hex"]), t.get("name", ""),
                                            t.get("added_at", 0.0), t.get("revoked_at"))
                for t in data.get("technicians", [])}

    def _write(self, technicians: dict[str, Technician]) -> None:
        rows = [{"technician": t.technician, "public_key_hex": t.public_key.hex(), "name": t.name,
                 "added_at": t.added_at, "revoked_at": t.revoked_at} for t in sorted(technicians.values(),
                                                                                     key=lambda t: t.technician)]
        _atomic_write(self.path, json.dumps({"technicians": rows}, indent=1).encode() + b"\n")

    def get(self, technician: str) -> Technician | None:
        return self._read().get(technician)

    def all(self) -> list[Technician]:
        return sorted(self._read().values(), key=lambda t: t.technician)

    def add(self, technician: str, public_key: bytes, name: str = "", *, now: float | None = None) -> Technician:
        if not isinstance(technician, str) or not _ID.fullmatch(technician):
            raise InvalidTechnicianError(f"technician id {technician!r}: use 1..64 of A-Z a-z 0-9 . _ - "
                                         "starting with a letter or digit")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise InvalidTechnicianError("a technician's Ed25519 public key is 32 bytes (64 hex digits)")
        with self._locked():
            known = self._read()
            if technician in known:
                raise TechnicianExistsError(f"technician {technician} is registered already "
                                            "(see `pledgewatch lender technicians list`)")
            holder = next((t for t in known.values() if t.public_key == public_key), None)
            if holder is not None:
                raise TechnicianExistsError(f"that key is registered already, to technician {holder.technician}")
            entry = Technician(technician, public_key, name, time.time() if now is None else now)
            known[technician] = entry
            self._write(known)
        return entry

    def revoke(self, technician: str, *, now: float | None = None) -> Technician:
        with self._locked():
            known = self._read()
            entry = known.get(technician)
            if entry is None:
                raise UnknownTechnicianError(f"no technician {technician!r} is registered")
            if entry.active:
                entry = Technician(entry.technician, entry.public_key, entry.name, entry.added_at,
                                   time.time() if now is None else now)
                known[technician] = entry
                self._write(known)
        return entry


# --- the lender's decisions (pure of CoAP; run in the store's thread) ----------------------------

@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back: a CoAP code and a payload (the signed response, or a one-line reason)."""

    code: aiocoap.numbers.codes.Code
    payload: bytes
    device: str | None = None
    signed: bool = False  # the payload is CBOR (a signed response), not a text reason

    @property
    def text(self) -> str:
        return "" if self.signed else self.payload.decode("utf-8", "replace")


def _refuse(code, text: str) -> Answer:
    return Answer(code, text.encode("utf-8"))


class EnrollmentDesk:
    """Checks enrollment requests and installation reports against the registries, and records them."""

    def __init__(self, data_dir: str | os.PathLike, registry, *, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.technicians = TechnicianRegistry(data_dir)
        self.identity = lender_identity(data_dir)
        self.clock = clock

    def _responses(self) -> Path:
        return enroll_dir(self.data_dir) / "responses"

    def _technician_checked(self, technician_id: str, kid: bytes | None, signature: bytes | None, payload: bytes,
                            aad: bytes) -> Answer | None:
        technician = self.technicians.get(technician_id)
        if technician is None:
            return _refuse(codes.FORBIDDEN, f"technician {technician_id} is not registered at this lender "
                                            "(pledgewatch lender technicians add)")
        if not technician.active:
            return _refuse(codes.FORBIDDEN, f"technician {technician_id} was revoked at "
                                            f"{iso_time(technician.revoked_at)}")
        if signature is None:
            return _refuse(codes.UNAUTHORIZED, "the request is not countersigned by a technician "
                                               "(pledgewatch provision submit countersigns it)")
        if kid != technician.kid or not DeviceKey(technician_id, technician.public_key).verifies(
                to_be_signed(payload, kid, aad), signature):
            return _refuse(codes.UNAUTHORIZED, f"the technician signature does not verify with the key registered "
                                               f"for technician {technician_id} (kid {technician.kid.hex()})")
        return None

    def enroll(self, data: bytes) -> Answer:
        """Decide on one enrollment request (the bytes of a COSE_Sign)."""
        try:
            request = EnrollmentRequest.decode(data)
        except EnrollmentFormatError as exc:
            return _refuse(codes.BAD_REQUEST, f"not an enrollment request: {exc}")
        body = request.body
        if not request.device_signature_valid():
            return _refuse(codes.UNAUTHORIZED, f"the device signature does not verify with the public key in the "
                                               f"request (device {body.device})")
        refused = self._technician_checked(body.technician, request.technician_kid, request.technician_signature,
                                           request.payload, REQUEST_AAD)
        if refused is not None:
            return refused
        saved = self._responses() / f"{body.device}.cbor"
        existing = self.registry.device(body.device)
        if existing is not None:
            if existing.public_key == body.public_key and saved.exists():
                stored = saved.read_bytes()
                answer = EnrollmentResponse.verify(stored, self.identity.public_key)
                if answer.request_digest == request.digest:
                    return Answer(codes.CREATED, stored, body.device, signed=True)  # the same request again: the same answer
            if existing.public_key == body.public_key and body.response_key is None:
                response = EnrollmentResponse(body.device, request.digest, int(existing.registered_at),
                                              existing.asset or "")
                return Answer(codes.CREATED, response.sign(self.identity), body.device, signed=True)
            return _refuse(codes.CONFLICT, f"device {body.device} is enrolled already (kid {existing.kid.hex()}, "
                                           f"{existing.status.value}); enroll a replacement under a new device id")
        now = self.clock()
        if body.created < now - MAX_AGE_S or body.created > now + MAX_FUTURE_S:
            return _refuse(codes.FORBIDDEN, f"the request was made at {iso_time(body.created)}, outside the "
                                            f"{MAX_AGE_S // 86400}-day window; make a new one")
        if self.registry.device_by_kid(body.kid) is not None:
            return _refuse(codes.CONFLICT, f"the device key {body.kid.hex()} is registered to another device")
        return self._register(request, now, saved)

    def _register(self, request: EnrollmentRequest, now: float, saved: Path) -> Answer:
        body = request.body
        contexts = self.data_dir / "oscore"
        params = None
        try:
            if body.response_key is not None:
                params = oscore.new_device_context(contexts, body.device)
            device = Device(device=body.device, public_key=body.public_key, registered_at=now,
                            asset=body.binding.asset,
                            oscore_context=f"oscore/{body.device}" if params is not None else None,
                            oscore_id=params.sender_id if params is not None else None)
            response = EnrollmentResponse(
                body.device, request.digest, int(now), body.binding.asset,
                seal_context(params, body.response_key) if params is not None else None)
            signed = response.sign(self.identity)
            record = {"request_b64": _b64(request.encode()), "technician": body.technician, "kind": body.kind,
                      "hardware": dict(body.hardware), "binding": body.binding.to_map(), "enrolled_at": iso_time(now)}
            _atomic_write(enroll_dir(self.data_dir) / "requests" / f"{body.device}.json",
                          json.dumps(record, indent=1).encode())
            _atomic_write(saved, signed)
            self.registry.add_device(device)
        except DeviceExistsError as exc:
            self._undo(body.device, params is not None, saved)
            return _refuse(codes.CONFLICT, str(exc))
        except BaseException:
            self._undo(body.device, params is not None, saved)
            raise
        log.info("enrolled %s %s (kid %s) for asset %s, countersigned by technician %s", body.kind, body.device,
                 body.kid.hex(), body.binding.asset, body.technician)
        return Answer(codes.CREATED, signed, body.device, signed=True)

    def _undo(self, device: str, had_context: bool, saved: Path) -> None:
        if had_context:
            shutil.rmtree(self.data_dir / "oscore" / device, ignore_errors=True)
        saved.unlink(missing_ok=True)
        (enroll_dir(self.data_dir) / "requests" / f"{device}.json").unlink(missing_ok=True)

    def site(self, asset: str) -> Answer:
        """The site file staff keep for `asset` (``DATA/enroll/sites/<asset>.toml``), signed by the enrollment key."""
        if not _ID.fullmatch(asset or ""):
            return _refuse(codes.BAD_REQUEST, f"asset id {asset!r} is not a valid id")
        path = enroll_dir(self.data_dir) / "sites" / f"{asset}.toml"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return _refuse(codes.NOT_FOUND, f"the lender has no site file for asset {asset} "
                                            f"(staff: put it in {path.parent}/)")
        if len(data) > MAX_SITE:
            return _refuse(codes.INTERNAL_SERVER_ERROR, f"the site file for {asset} is over {MAX_SITE} bytes")
        return Answer(codes.CONTENT, encode_sign1(self.identity, data, SITE_AAD), asset, signed=True)

    def report(self, data: bytes) -> Answer:
        """Check and keep one signed installation report."""
        try:
            payload, signatures = decode_sign(data, Limits(max_bytes=MAX_REPORT, max_depth=6, max_items=2048))
            report = InstallationReport.decode(payload)
        except EnrollmentFormatError as exc:
            return _refuse(codes.BAD_REQUEST, f"not an installation report: {exc}")
        device = self.registry.device(report.device)
        if device is None or not device.active:
            return _refuse(codes.FORBIDDEN, f"device {report.device} is not an enrolled, active device")
        if len(signatures) != 2 or signatures[0][0] != device.kid or not device.key().verifies(
                to_be_signed(payload, device.kid, REPORT_AAD), signatures[0][1]):
            return _refuse(codes.UNAUTHORIZED, f"the report is not signed by device {report.device}'s registered key")
        refused = self._technician_checked(report.technician, signatures[1][0], signatures[1][1], payload, REPORT_AAD)
        if refused is not None:
            return refused
        name = f"{report.at}-{hashlib.sha256(data).hexdigest()[:12]}.cbor"
        _atomic_write(enroll_dir(self.data_dir) / "reports" / report.device / name, bytes(data), 0o640)
        verdict = "passed" if report.passed else "FAILED"
        log.info("installation report for %s by %s: %s (%d checks)", report.device, report.technician, verdict,
                 len(report.results))
        return Answer(codes.CREATED, f"report stored as {report.device}/{name}".encode(), report.device)


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode("ascii")


def installation_reports(data_dir: str | os.PathLike, device: str) -> list[tuple[Path, InstallationReport]]:
    """The stored reports of `device`, oldest first (re-read and decoded; their signatures were checked on arrival)."""
    folder = enroll_dir(data_dir) / "reports" / check_device_id(device)
    found = []
    for path in sorted(folder.glob("*.cbor")) if folder.is_dir() else ():
        payload, _ = decode_sign(path.read_bytes(), Limits(max_bytes=MAX_REPORT, max_depth=6, max_items=2048))
        found.append((path, InstallationReport.decode(payload)))
    return found


# --- CoAP ------------------------------------------------------------------------------------

class _DeskResource(interfaces.Resource):
    """POST only, CBOR, Block1 reassembled with a cap (lender.server.BlockAssembly); the decision runs in the store's thread."""

    def __init__(self, thread, decide: Callable[[bytes], Answer], max_body: int) -> None:
        super().__init__()
        from lender.server import BlockAssembly  # lender.server imports this module
        self._thread = thread
        self._decide = decide
        self._assembly = BlockAssembly(max_body, max_uploads=32)

    async def render(self, request):
        raise RuntimeError("only render_to_pipe is used")

    async def needs_blockwise_assembly(self, request):
        return False

    async def render_to_pipe(self, pipe) -> None:
        pipe.add_response(await self._respond(pipe.request), is_last=True)

    async def _respond(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.code != codes.POST:
            return aiocoap.Message(code=codes.METHOD_NOT_ALLOWED, payload=b"only POST is allowed here")
        if request.opt.content_format not in (None, CBOR_FORMAT):
            return aiocoap.Message(code=codes.UNSUPPORTED_CONTENT_FORMAT, payload=b"send application/cbor (60)")
        from lender.server import Answer as BlockAnswer
        step = self._assembly.feed(request)
        if isinstance(step, BlockAnswer):
            response = aiocoap.Message(code=step.code, payload=step.text.encode())
            if step.code == codes.CONTINUE:
                response.opt.block1 = request.opt.block1
            if step.oversize is not None:
                response.opt.size1 = self._assembly.max_body
            return response
        try:
            answer = await self._thread.call(self._decide, step.body)
        except Exception:
            log.exception("enrollment desk failed on a request")
            return aiocoap.Message(code=codes.INTERNAL_SERVER_ERROR, payload=b"the lender failed; nothing was recorded")
        if answer.code != codes.CREATED:
            log.warning("refused %s: %s %s", "/".join(request.opt.uri_path), answer.code, answer.text)
        response = aiocoap.Message(code=answer.code, payload=answer.payload)
        if answer.signed:
            response.opt.content_format = ContentFormat(CBOR_FORMAT)
        response.opt.block1 = request.opt.block1
        return response


class _SiteResource(aiocoap.resource.Resource):
    """``GET /enroll/sites/<asset id>``: small, so aiocoap's own Block2 handling serves it."""

    def __init__(self, thread, desk: EnrollmentDesk) -> None:
        super().__init__()
        self._thread = thread
        self._desk = desk

    async def render_get(self, request):
        path = request.opt.uri_path
        if len(path) != 3:
            return aiocoap.Message(code=codes.NOT_FOUND, payload=b"GET /enroll/sites/<asset id>")
        answer = await self._thread.call(self._desk.site, path[2])
        response = aiocoap.Message(code=answer.code, payload=answer.payload)
        if answer.signed:
            response.opt.content_format = ContentFormat(CBOR_FORMAT)
        return response


def enrollment_routes(thread, store, data_dir: str | os.PathLike) -> tuple[dict, dict]:
    """The plain-CoAP routes lender.server puts in front of the OSCORE site: a device has no OSCORE context
    before it is enrolled, so ``/enroll`` and ``/installations`` are served without one (their messages are
    signed end to end instead), and the signed site files under ``/enroll/sites/``. Returns (routes, prefixes)."""
    desk = EnrollmentDesk(data_dir, store)
    routes = {ENROLL_PATH: _DeskResource(thread, desk.enroll, MAX_REQUEST), REPORTS_PATH: _DeskResource(thread, desk.report, MAX_REPORT)}
    return routes, {SITES_PATH: _SiteResource(thread, desk)}


# --- `pledgewatch lender technicians` --------------------------------------------------------------

def configure_cli(sub, guarded: Callable, default_data: str) -> None:
    """Add `lender technicians add|list|revoke` to the lender's sub-command parser."""
    technicians = sub.add_parser("technicians", help="field technicians whose countersignature enrolls devices",
                                 description="field technicians whose countersignature enrolls devices")
    actions = technicians.add_subparsers(dest="technicians_command", required=True, metavar="ACTION")

    def action(name: str, run, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data", type=Path, default=Path(default_data), metavar="DIR",
                       help=f"the lender's data directory (default {default_data})")
        p.set_defaults(run=guarded(run))
        return p

    p = action("add", _cli_add, "register a technician's Ed25519 public key (prints the lender's enrollment key)")
    p.add_argument("--id", required=True, dest="technician", help="technician id (1..64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--public-key", required=True, metavar="HEX",
                   help="the technician's public key, as `pledgewatch provision technician init` printed it")
    p.add_argument("--name", default="", help="the person's name, for the record")
    p = action("list", _cli_list, "list the registered technicians")
    p.add_argument("--json", action="store_true")
    p = action("revoke", _cli_revoke, "refuse a technician's countersignature from now on")
    p.add_argument("--id", required=True, dest="technician")


def _cli_add(args: argparse.Namespace) -> int:
    try:
        key = bytes.fromhex(args.public_key.strip())
    except ValueError:
        raise InvalidTechnicianError(f"public key {args.public_key!r} is not hex") from None
    technician = TechnicianRegistry(args.data).add(args.technician, key, args.name)
    lender = lender_identity(args.data)
    print(f"registered technician {technician.technician} (kid {technician.kid.hex()})")
    print(f"lender enrollment key: {lender.public_key.hex()}")
    print("give the technician this key: pledgewatch provision technician init --lender-key "
          f"{lender.public_key.hex()}")
    return 0


def _cli_list(args: argparse.Namespace) -> int:
    rows = TechnicianRegistry(args.data).all()
    if args.json:
        print(json.dumps([t.to_json() for t in rows], indent=1))
        return 0
    for t in rows:
        print(f"{t.technician:<20} {t.kid.hex()}  {'active' if t.active else 'revoked':<8} {t.name}")
    return 0


def _cli_revoke(args: argparse.Namespace) -> int:
    technician = TechnicianRegistry(args.data).revoke(args.technician)
    print(f"revoked technician {technician.technician} at {iso_time(technician.revoked_at)}")
    return 0
