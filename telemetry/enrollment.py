"""Enrollment messages: the request a device and a technician sign, the lender's response, site files, installation reports.

A device becomes known to the lender by an *enrollment request*: a COSE_Sign
(RFC 9052 §4.1) over an `EnrollmentBody`, signed by the device's own key
(proof of possession) and countersigned by a registered field technician
(someone accountable vouches for the device, its hardware and the pledged
asset), with the external AAD `REQUEST_AAD`. It holds no secret, so it travels
as plain CoAP or as a file.

The lender answers with an `EnrollmentResponse`: a COSE_Sign1 by the lender's
enrollment key over the device id, the SHA-256 of the request body, the time,
the asset, and the device's side of its OSCORE context sealed to the
request's one-time X25519 response key (libsodium ``crypto_box_seal``).

Site files are the lender's TOML for one asset, COSE_Sign1 with `SITE_AAD`,
handed only to a registered technician who asks with a `SiteRequest` (a
COSE_Sign1 by the technician's key with `SITE_REQUEST_AAD`, naming a one-time
X25519 response key), sealed to that response key (`seal_site` / `open_site`):
a site's address, geofence, sensors and access hours are never served in
clear. Installation reports are COSE_Sign by the device and the technician over
the pre-flight results, with `REPORT_AAD`. `docs/decisions.md`
("Enrollment") has the reasons; `tests/vectors/` pins the bytes.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.public
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telemetry import cbor, cose
from telemetry.cbor import Limits
from telemetry.exc import EnrollmentFormatError, WireFormatError
from telemetry.identity import DeviceKey, Identity, algorithm_of, kid_of
from telemetry.numbers import ALG_EDDSA, ALG_ES256, OSCORE_ALGORITHM, OSCORE_KDF_HASH

REQUEST_AAD = b"pledgewatch-enroll-request/1"
RESPONSE_AAD = b"pledgewatch-enroll-response/1"
REPORT_AAD = b"pledgewatch-installation-report/1"
SITE_AAD = b"pledgewatch-site/1"
SITE_REQUEST_AAD = b"pledgewatch-site-request/1"
CREDENTIAL_AAD = b"pledgewatch-credential/1"
MAX_REQUEST = 4096
MAX_REPORT = 16384
MAX_SITE = 32768
KINDS = ("gateway", "node")
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # device, technician and asset ids
_LIMITS = Limits(max_bytes=MAX_REQUEST, max_depth=6, max_items=256)
REPORT_LIMITS = Limits(max_bytes=MAX_REPORT, max_depth=6, max_items=2048)


BINDING_CONTEXT = b"pledgewatch-binding/1"


def binding_of(lender_public_key: bytes, device_public_key: bytes, asset: str) -> bytes:
    """The enrollment binding a device puts into each envelope: this device key, pledged for this asset, at this lender.

    8 bytes of SHA-256 over the three. It is the same for every response the
    lender signs for the same enrollment (a lost answer, a re-provisioned
    node), and differs at a second lender or for a second asset, so the same
    signed envelopes cannot serve as evidence in two pledges.
    """
    return hashlib.sha256(BINDING_CONTEXT + bytes(lender_public_key) + bytes(device_public_key)
                          + asset.encode("utf-8")).digest()[:8]


def valid_id(value: object) -> bool:
    """Whether `value` is an id: 1..64 of A-Z a-z 0-9 . _ -, starting with a letter or digit."""
    return isinstance(value, str) and IDENTIFIER.fullmatch(value) is not None


def check_id(value: object, what: str = "device id") -> str:
    """`value` if it is an id (see `valid_id`); EnrollmentFormatError naming `what` otherwise."""
    if not valid_id(value):
        raise EnrollmentFormatError(f"{what} {value!r}: use 1..64 of A-Z a-z 0-9 . _ - starting with a letter or digit")
    return value


def parse_sign(data: bytes, limits: Limits = _LIMITS) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(payload, [(kid, signature)]) of a COSE_Sign by EdDSA signers; EnrollmentFormatError otherwise."""
    try:
        return cose.parse_sign(data, limits)
    except WireFormatError as exc:
        raise EnrollmentFormatError(str(exc)) from exc


def open_sign1(data: bytes, public_key: bytes, aad: bytes, limits: Limits = _LIMITS) -> bytes:
    """The payload of a COSE_Sign1 that `public_key` signed over `aad`; EnrollmentFormatError otherwise."""
    try:
        return cose.open_sign1(data, public_key, aad, limits)
    except WireFormatError as exc:
        raise EnrollmentFormatError(str(exc)) from exc


def signer_verifies(public_key: bytes, payload: bytes, signature: bytes, aad: bytes) -> bool:
    """Whether one COSE_Sign signature by `public_key` over `payload` and `aad` verifies (the signer header names
    the key's algorithm: EdDSA for an Ed25519 key, ES256 for a P-256 one)."""
    kid = kid_of(public_key)
    header = cose.signer_header(kid, algorithm_of(public_key))
    return DeviceKey("signer", public_key).verifies(cose.signer_structure(header, payload, aad), signature)


def countersignature(identity: Identity, payload: bytes, aad: bytes) -> bytes:
    """`identity`'s COSE_Sign signature over `payload` and `aad`."""
    return identity.sign(cose.signer_structure(cose.eddsa_header(identity.kid), payload, aad))


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


BODY_VERSION_KEY = 0     # absent: version 1 (Ed25519 key); 2: version 2 (the key may be P-256)
BODY_VERSIONS = (1, 2)
ATTESTATION_KEY = 10     # version 2: the TPM's proof that the device key is inside it (`TpmAttestation`)
CERTIFY_CONTEXT = b"pledgewatch-certify/1"
MAX_EK_CERTIFICATE = 2048


@dataclass(frozen=True, slots=True)
class TpmAttestation:
    """A TPM's evidence that the device key lives in it, as a version 2 body carries it (key 10, a map 1..5).

    `ek_certificate` is the endorsement key's X.509 certificate (DER, from the
    TPM's NV index 0x01C00002: RSA 2048) by which the TPM's maker vouches for
    the chip; `ak_public` the attestation key (a restricted ECDSA P-256 signing
    key, fixedTPM) and `key_public` the device key, each a marshalled
    TPM2B_PUBLIC; `certify_info` the TPMS_ATTEST that TPM2_Certify made of the
    device key with the attestation key over `certify_data` of the body, and
    `signature` its marshalled TPMT_SIGNATURE. Telemetry only carries the
    bytes; the lender checks them (lender.enrollment.attestation), and
    proves the attestation key shares the chip with the endorsement key by
    credential activation (the response's key 6).
    """

    ek_certificate: bytes
    ak_public: bytes
    key_public: bytes
    certify_info: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for name, limit in (("ek_certificate", MAX_EK_CERTIFICATE), ("ak_public", 512), ("key_public", 512),
                            ("certify_info", 512), ("signature", 256)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not 0 < len(value) <= limit:
                raise EnrollmentFormatError(f"attestation {name} must be 1..{limit} bytes")

    def to_map(self) -> dict:
        return {1: self.ek_certificate, 2: self.ak_public, 3: self.key_public, 4: self.certify_info,
                5: self.signature}

    @classmethod
    def from_map(cls, data: object) -> TpmAttestation:
        if not isinstance(data, dict) or set(data) != {1, 2, 3, 4, 5}:
            raise EnrollmentFormatError("an attestation must be a map with keys 1..5")
        return cls(data[1], data[2], data[3], data[4], data[5])


def certify_data(device: str, nonce: bytes) -> bytes:
    """The qualifying data of a device key's TPM2_Certify: SHA-256 of "pledgewatch-certify/1", the device id and
    the body's nonce, so a certification made for one request is not another's."""
    return hashlib.sha256(CERTIFY_CONTEXT + device.encode("utf-8") + b"\0" + nonce).digest()


@dataclass(frozen=True, slots=True)
class EnrollmentBody:
    """What the device and the technician sign (CBOR map, integer keys 1..9; version 2 adds key 0).

    Version 1 (no key 0) carries a 32-byte Ed25519 device key, as every
    request made before TPM keys did; its bytes are unchanged. Version 2 is
    the same map with ``0: 2``, and its device key (3) may be a TPM's P-256
    key (the 65-byte uncompressed point), whose COSE_Sign signer is ES256. A
    body with a P-256 key is always version 2, one with an Ed25519 key always
    version 1, so each request has one encoding. A lender that only knew
    version 1 refuses version 2 (key 0 unknown) rather than misread it.
    """

    device: str
    kind: str
    public_key: bytes
    technician: str
    hardware: Mapping[str, str]
    binding: AssetBinding
    created: int
    nonce: bytes
    response_key: bytes | None = None  # X25519 public key to seal the OSCORE context to; None: no context wanted
    attestation: TpmAttestation | None = None  # version 2 only: the TPM's proof that the key is in it

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not valid_id(self.device):
            raise EnrollmentFormatError(f"device id {self.device!r}: use 1..64 of A-Z a-z 0-9 . _ - "
                                        "starting with a letter or digit")
        if self.kind not in KINDS:
            raise EnrollmentFormatError(f"kind {self.kind!r} must be one of {', '.join(KINDS)}")
        try:
            algorithm_of(self.public_key)
        except ValueError as exc:
            raise EnrollmentFormatError(f"the device public key: {exc}") from exc
        if not isinstance(self.technician, str) or not valid_id(self.technician):
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
        if self.attestation is not None and (not isinstance(self.attestation, TpmAttestation)
                                             or algorithm_of(self.public_key) != ALG_ES256):
            raise EnrollmentFormatError("only a P-256 (TPM) device key comes with a TPM attestation")

    @property
    def algorithm(self) -> int:
        """The device key's COSE algorithm: EdDSA (-8) or ES256 (-7)."""
        return algorithm_of(self.public_key)

    @property
    def version(self) -> int:
        """1 for an Ed25519 device key (the original body), 2 for a P-256 one."""
        return 2 if self.algorithm == ALG_ES256 else 1

    def encode(self) -> bytes:
        data = {1: self.device, 2: self.kind, 3: self.public_key, 4: self.technician, 5: dict(self.hardware),
                6: self.binding.to_map(), 7: self.created, 8: self.nonce}
        if self.response_key is not None:
            data[9] = self.response_key
        if self.version >= 2:
            data[BODY_VERSION_KEY] = self.version
        if self.attestation is not None:
            data[ATTESTATION_KEY] = self.attestation.to_map()
        return cbor.encode(data)

    @classmethod
    def decode(cls, payload: bytes) -> EnrollmentBody:
        try:
            data = cbor.decode(payload, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"the request body is not CBOR: {exc}") from exc
        if not isinstance(data, dict) or not set(data) <= set(range(0, 11)) or not set(range(1, 9)) <= set(data):
            raise EnrollmentFormatError("the request body must be a map with keys 1..8 (and 9; 0 and 10 in version 2)")
        version = data.get(BODY_VERSION_KEY, 1)
        if type(version) is not int or version not in BODY_VERSIONS or version == 1 and BODY_VERSION_KEY in data:
            raise EnrollmentFormatError(f"request body version {version!r} is not one this lender reads (1: no key 0, "
                                        "or 0: 2)")
        attestation = data.get(ATTESTATION_KEY)
        if attestation is not None and version != 2:
            raise EnrollmentFormatError("an attestation (key 10) belongs to a version 2 body")
        body = cls(data[1], data[2], data[3], data[4], data[5], AssetBinding.from_map(data[6]), data[7], data[8],
                   data.get(9), None if attestation is None else TpmAttestation.from_map(attestation))
        if body.version != version:
            raise EnrollmentFormatError(f"a version {version} request body must not carry "
                                        f"{'a P-256' if body.algorithm == ALG_ES256 else 'an Ed25519'} device key "
                                        "(version 1: Ed25519, version 2: P-256)")
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
        return payload, cose.signer_structure(cose.signer_header(body.kid, body.algorithm), payload, REQUEST_AAD)

    @classmethod
    def create(cls, body: EnrollmentBody, device_sign: Callable[[bytes], bytes]) -> EnrollmentRequest:
        payload, message = cls.device_message(body)
        signature = device_sign(message)
        request = cls(payload, signature)
        if not request.device_signature_valid():
            raise EnrollmentFormatError("the device's signature over the request does not verify with its public key")
        return request

    def device_signature_valid(self) -> bool:
        return signer_verifies(self.body.public_key, self.payload, self.device_signature, REQUEST_AAD)

    def countersign(self, technician: Identity) -> EnrollmentRequest:
        """The same request with the technician's signature added (replacing an earlier one)."""
        signature = countersignature(technician, self.payload, REQUEST_AAD)
        return EnrollmentRequest(self.payload, self.device_signature, signature, technician.kid)

    @property
    def countersigned(self) -> bool:
        return self.technician_signature is not None

    @property
    def digest(self) -> bytes:
        """SHA-256 of the body: what the response names."""
        return hashlib.sha256(self.payload).digest()

    def encode(self) -> bytes:
        signatures = [(self.body.kid, self.device_signature, self.body.algorithm)]
        if self.technician_signature is not None:
            signatures.append((self.technician_kid, self.technician_signature))
        return cose.sign(self.payload, signatures)

    @classmethod
    def decode(cls, data: bytes) -> EnrollmentRequest:
        try:
            payload, signers = cose.parse_sign_signers(data, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(str(exc)) from exc
        body = EnrollmentBody.decode(payload)
        if len(signers) > 2 or signers[0][0] != body.kid:
            raise EnrollmentFormatError("the first signature must be the device's, and at most one more may follow")
        if signers[0][2] != body.algorithm:
            raise EnrollmentFormatError("the device's signer header names another algorithm than its key's")
        technician = signers[1] if len(signers) == 2 else (None, None, ALG_EDDSA)
        if technician[2] != ALG_EDDSA:
            raise EnrollmentFormatError("a technician countersigns with an Ed25519 key (EdDSA)")
        if technician[0] == body.kid:
            raise EnrollmentFormatError("the countersignature must be a technician's, not the device's own")
        return cls(payload, signers[0][1], technician[1], technician[0])


# --- the response ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ContextKeys:
    """The device's side of its OSCORE context as the response carries it (sealed): ids, master secret and salt."""

    sender_id: bytes
    recipient_id: bytes
    master_secret: bytes = field(repr=False)
    master_salt: bytes = field(repr=False)

    def encode(self) -> bytes:
        """The CBOR map {1: sender id, 2: recipient id, 3: master secret, 4: master salt, 5: AEAD, 6: KDF hash}.

        What `seal` encrypts, and what a node keeps in the header of its node.oscore (docs/firmware.md).
        """
        return cbor.encode({1: self.sender_id, 2: self.recipient_id, 3: self.master_secret,
                            4: self.master_salt, 5: OSCORE_ALGORITHM, 6: OSCORE_KDF_HASH})

    def seal(self, response_key: bytes, credential_secret: bytes | None = None) -> bytes:
        """CBOR-encoded and sealed to the device's one-time X25519 key: only that device can open it. With a
        `credential_secret` (an attested enrollment: what only the attested TPM recovers by TPM2_ActivateCredential)
        the CBOR is first encrypted under it (AES-256-GCM, a zero nonce: each secret is used once)."""
        plain = self.encode()
        if credential_secret is not None:
            plain = AESGCM(credential_secret).encrypt(bytes(12), plain, CREDENTIAL_AAD)
        return nacl.public.SealedBox(nacl.public.PublicKey(response_key)).encrypt(plain)

    @classmethod
    def open(cls, sealed: bytes, response_private: nacl.public.PrivateKey,
             credential_secret: bytes | None = None) -> ContextKeys:
        try:
            plain = nacl.public.SealedBox(response_private).decrypt(sealed)
            if credential_secret is not None:
                plain = AESGCM(credential_secret).decrypt(bytes(12), plain, CREDENTIAL_AAD)
            data = cbor.decode(plain, Limits(max_bytes=512, max_depth=2, max_items=16))
        except InvalidTag as exc:
            raise EnrollmentFormatError("the sealed OSCORE context does not open with the TPM's activated "
                                        "credential: not the TPM the lender attested") from exc
        except (nacl.exceptions.CryptoError, WireFormatError) as exc:
            raise EnrollmentFormatError(f"the sealed OSCORE context cannot be opened with this device's key: {exc}") from exc
        if not isinstance(data, dict) or data.get(5) != OSCORE_ALGORITHM or data.get(6) != OSCORE_KDF_HASH:
            raise EnrollmentFormatError(f"the sealed OSCORE context is not {OSCORE_ALGORITHM} with {OSCORE_KDF_HASH}")
        if set(data) != {1, 2, 3, 4, 5, 6} or not all(isinstance(data[k], bytes) for k in (1, 2, 3, 4)):
            raise EnrollmentFormatError("the sealed OSCORE context is malformed: keys 1..4 must be byte strings")
        return cls(data[1], data[2], data[3], data[4])


@dataclass(frozen=True, slots=True)
class EnrollmentResponse:
    """The lender's signed answer: the device is enrolled, for this request, with this sealed context."""

    device: str
    request_digest: bytes
    registered_at: int
    asset: str
    sealed_context: bytes | None = None
    # an attested request's answer: (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) of TPM2_MakeCredential for the
    # endorsement key and the attestation key's name; the sealed context is then also encrypted under the
    # credential (`open_with_credential`), so only that TPM can read it
    credential: tuple[bytes, bytes] | None = None

    def payload(self) -> bytes:
        data = {1: self.device, 2: self.request_digest, 3: self.registered_at, 4: self.asset}
        if self.sealed_context is not None:
            data[5] = self.sealed_context
        if self.credential is not None:
            data[6] = [self.credential[0], self.credential[1]]
        return cbor.encode(data)

    def sign(self, lender: Identity) -> bytes:
        return cose.sign1(lender, self.payload(), RESPONSE_AAD)

    @classmethod
    def verify(cls, data: bytes, lender_public_key: bytes) -> EnrollmentResponse:
        payload = open_sign1(data, lender_public_key, RESPONSE_AAD)
        try:
            fields = cbor.decode(payload, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"the response payload is not CBOR: {exc}") from exc
        if not isinstance(fields, dict) or not {1, 2, 3, 4} <= set(fields) <= {1, 2, 3, 4, 5, 6}:
            raise EnrollmentFormatError("the response payload must be a map with keys 1..4 (and 5, 6)")
        if not isinstance(fields[1], str) or not isinstance(fields[2], bytes) or type(fields[3]) is not int \
                or not isinstance(fields[4], str) or not isinstance(fields.get(5, b""), bytes):
            raise EnrollmentFormatError("the response payload has a field of the wrong type")
        credential = fields.get(6)
        if credential is not None and (not isinstance(credential, list) or len(credential) != 2
                                       or not all(isinstance(c, bytes) for c in credential) or 5 not in fields):
            raise EnrollmentFormatError("the response's credential must be [id object, encrypted secret] "
                                        "beside a sealed context")
        return cls(fields[1], fields[2], fields[3], fields[4], fields.get(5),
                   None if credential is None else (credential[0], credential[1]))


# --- site files -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SiteRequest:
    """A technician asks for the site file of `asset`, at `created`, to be sealed to `response_key` (X25519).

    Signed (COSE_Sign1, `SITE_REQUEST_AAD`) by the technician's key: the
    lender answers only a registered, active technician whose signature
    verifies, and only to the response key that signature covers, so a
    stranger learns nothing, and a request replayed by one gets an answer only
    the technician can open.
    """

    technician: str
    asset: str
    created: int
    response_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_id(self.technician, "technician id")
        check_id(self.asset, "asset id")
        if type(self.created) is not int or self.created < 0:
            raise EnrollmentFormatError("a site request's time must be unsigned integer seconds")
        if not isinstance(self.response_key, bytes) or len(self.response_key) != 32:
            raise EnrollmentFormatError("a site request's response key must be 32 bytes (X25519)")

    def payload(self) -> bytes:
        return cbor.encode({1: self.technician, 2: self.asset, 3: self.created, 4: self.response_key})

    def sign(self, technician: Identity) -> bytes:
        return cose.sign1(technician, self.payload(), SITE_REQUEST_AAD)

    @classmethod
    def parse(cls, data: bytes) -> tuple[SiteRequest, cose.Sign1]:
        """The request and its COSE_Sign1 (kid, signature), the signature not checked yet: `verify` does."""
        try:
            message = cose.parse_sign1(data, _LIMITS)
            fields = cbor.decode(message.payload, _LIMITS)
        except WireFormatError as exc:
            raise EnrollmentFormatError(f"not a site request: {exc}") from exc
        if not isinstance(fields, dict) or set(fields) != {1, 2, 3, 4}:
            raise EnrollmentFormatError("a site request's payload must be a map with keys 1..4")
        return cls(fields[1], fields[2], fields[3], fields[4]), message

    @staticmethod
    def verify(message: cose.Sign1, technician_public_key: bytes) -> bool:
        """Whether `technician_public_key` made the request's signature."""
        return message.kid == kid_of(technician_public_key) and DeviceKey("technician", technician_public_key).verifies(
            message.signed_bytes(SITE_REQUEST_AAD), message.signature)


def seal_site(signed_site: bytes, response_key: bytes) -> bytes:
    """The lender's answer to a site request: the signed site file sealed to the request's response key."""
    return nacl.public.SealedBox(nacl.public.PublicKey(response_key)).encrypt(signed_site)


def open_site(sealed: bytes, response_private: nacl.public.PrivateKey, lender_public_key: bytes) -> bytes:
    """The site file's TOML bytes from the lender's sealed answer, its signature checked against the pinned key."""
    try:
        signed = nacl.public.SealedBox(response_private).decrypt(sealed)
    except nacl.exceptions.CryptoError as exc:
        raise EnrollmentFormatError(f"the answer is not sealed to this request's response key: {exc}") from exc
    return open_sign1(signed, lender_public_key, SITE_AAD, Limits(max_bytes=MAX_SITE + 256, max_depth=2, max_items=8))


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

    def sign(self, device: Identity | Callable[[bytes], bytes], device_kid: bytes, technician: Identity,
             device_algorithm: int | None = None) -> bytes:
        """Signed by the device (its algorithm: `device.algorithm`, or `device_algorithm` for a bare function;
        EdDSA by default) and countersigned by the technician."""
        payload = self.payload()
        device_sign = device if callable(device) and not hasattr(device, "sign") else device.sign
        algorithm = device_algorithm or getattr(device, "algorithm", ALG_EDDSA)
        header = cose.signer_header(device_kid, algorithm)
        signatures = [(device_kid, device_sign(cose.signer_structure(header, payload, REPORT_AAD)), algorithm),
                      (technician.kid, countersignature(technician, payload, REPORT_AAD))]
        return cose.sign(payload, signatures)
