"""Device identity: a signing key and what a verifier knows of it, for EdDSA (Ed25519) and ES256 (P-256).

A public key travels as its canonical encoding, which also names its algorithm:

* EdDSA (COSE -8): the 32-byte Ed25519 public key (RFC 8032 §5.1.5);
* ES256 (COSE -7): the 65-byte uncompressed SEC1 point of a P-256 key,
  0x04 || X || Y, each coordinate 32 bytes big-endian (SEC 1 v2 §2.3.3).

kid = the first 8 bytes of SHA-256 of that encoding, for both. An ES256
signature is r || s, 32 bytes each (RFC 9053 §2.1), 64 bytes like Ed25519's,
and "low-S" (s <= n/2): (r, n - s) would verify too and give one reading two
envelope digests, so signers normalise (`low_s`) and verifiers refuse high S.

The seed never appears in a repr, a log line or an exception message, and an
`Identity` cannot be pickled. Pure: the key file that holds the seed (mode
0600, refused when others can read it) is read and written by
`durable.keyfile`, so a key file becomes an identity with
``Identity(read_key(path))``. A TPM-resident key (agent and provisioning) is
another `Signer`: the same four attributes, its secret never in this process.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Protocol

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from telemetry.exc import IdentityError
from telemetry.numbers import ALG_EDDSA, ALG_ES256, ALGORITHM_NAMES

SEED_BYTES = 32
ED25519_PUBLIC_BYTES = 32
P256_PUBLIC_BYTES = 65   # 0x04 || X || Y
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def low_s(r: int, s: int) -> bytes:
    """An ECDSA P-256 signature (r, s) as the 64 bytes r || s, with s replaced by n - s when above n/2."""
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def kid_of(public_key: bytes) -> bytes:
    """The key id of a public key (Ed25519 raw, or P-256 uncompressed SEC1): the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8]


def algorithm_of(public_key: object) -> int:
    """The COSE algorithm a public key's encoding belongs to (EdDSA for 32 bytes, ES256 for a 65-byte 0x04 point)."""
    if isinstance(public_key, bytes):
        if len(public_key) == ED25519_PUBLIC_BYTES:
            return ALG_EDDSA
        if len(public_key) == P256_PUBLIC_BYTES and public_key[0] == 4:
            return ALG_ES256
    raise IdentityError("a public key is 32 bytes (Ed25519) or a 65-byte uncompressed P-256 point (0x04 || X || Y)")


def algorithm_name(algorithm: int) -> str:
    """`EdDSA` or `ES256`: how the registry, the CLI and the docs name a COSE algorithm."""
    try:
        return ALGORITHM_NAMES[algorithm]
    except KeyError:
        raise IdentityError(f"COSE algorithm {algorithm!r} is not one pledgewatch signs with (EdDSA -8, ES256 -7)") from None


def algorithm_named(name: str) -> int:
    """The COSE algorithm called `name` (`EdDSA` or `ES256`)."""
    for number, known in ALGORITHM_NAMES.items():
        if known == name:
            return number
    raise IdentityError(f"algorithm {name!r} is not EdDSA or ES256")


class Signer(Protocol):
    """What signs an envelope: a software `Identity`, a `P256Identity`, or a key inside a TPM."""

    public_key: bytes
    kid: bytes
    algorithm: int

    def sign(self, message: bytes) -> bytes:
        """The 64-byte COSE signature of `message` (Ed25519, or ES256 as r || s)."""


def _p256_verifier(public_key: bytes, device: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    except ValueError as exc:  # not a point on the curve
        raise IdentityError(f"device {device!r}: the ES256 public key is not a point on P-256") from exc


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What a verifier knows of a device: its id, its public key and the algorithm that key signs with.

    The algorithm follows from the key's encoding; when given, it must agree.
    """

    device: str
    public_key: bytes
    algorithm: int | None = None
    kid: bytes = field(init=False)
    _verify_key: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            algorithm = algorithm_of(self.public_key)
        except IdentityError as exc:
            raise IdentityError(f"device {self.device!r}: {exc}") from None
        if self.algorithm is not None and self.algorithm != algorithm:
            raise IdentityError(f"device {self.device!r}: a {algorithm_name(algorithm)} key cannot verify "
                                f"algorithm {self.algorithm!r}")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "kid", kid_of(self.public_key))
        verifier = (nacl.signing.VerifyKey(self.public_key) if algorithm == ALG_EDDSA
                    else _p256_verifier(self.public_key, self.device))
        object.__setattr__(self, "_verify_key", verifier)

    @property
    def algorithm_name(self) -> str:
        return algorithm_name(self.algorithm)

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """True if `signature` is this key's signature of `message` (Ed25519, or ES256 r || s)."""
        if self.algorithm == ALG_EDDSA:
            try:
                self._verify_key.verify(message, signature)
            except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
                return False
            return True
        if not isinstance(signature, bytes) or len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s <= P256_ORDER // 2):
            return False  # out of range, or the high-S twin of a signature
        try:
            self._verify_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, TypeError):
            return False
        return True


class Identity:
    """A device's Ed25519 signing key. Create from a 32-byte seed (a key file's content), or with `generate`."""

    __slots__ = ("_signing_key", "public_key", "kid")
    algorithm = ALG_EDDSA

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise IdentityError("an Ed25519 seed is exactly 32 bytes")
        self._signing_key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing_key.verify_key)
        self.kid: bytes = kid_of(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A new identity from the operating system's random source."""
        return cls(os.urandom(SEED_BYTES))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._signing_key.sign(message).signature

    def device_key(self, device: str) -> DeviceKey:
        """The verifier's view of this identity for `device`."""
        return DeviceKey(device, self.public_key)

    def __repr__(self) -> str:
        return f"Identity(kid={self.kid.hex()})"

    def __reduce__(self):
        raise TypeError("an Identity is not serialisable; keep its seed in a key file (durable.keyfile) instead")


class P256Identity:
    """A software ES256 signing key from its 32-byte private scalar: the test vectors' ES256 signer.

    Signatures are deterministic (RFC 6979), so a vector is reproduced byte for
    byte. A gateway's ES256 key lives in its TPM (agent.keystore), not here.
    """

    __slots__ = ("_private_key", "public_key", "kid")
    algorithm = ALG_ES256

    def __init__(self, secret: bytes) -> None:
        scalar = int.from_bytes(secret, "big") if isinstance(secret, bytes) and len(secret) == SEED_BYTES else 0
        if not 0 < scalar < P256_ORDER:
            raise IdentityError("a P-256 private key is 32 bytes, a number from 1 to the curve order - 1")
        self._private_key = ec.derive_private_key(scalar, ec.SECP256R1())
        self.public_key: bytes = self._private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.kid: bytes = kid_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte ES256 signature r || s of `message` (RFC 6979 deterministic, low S)."""
        return low_s(*decode_dss_signature(
            self._private_key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))))

    def device_key(self, device: str) -> DeviceKey:
        """The verifier's view of this identity for `device`."""
        return DeviceKey(device, self.public_key)

    def __repr__(self) -> str:
        return f"P256Identity(kid={self.kid.hex()})"

    def __reduce__(self):
        raise TypeError("a P256Identity is not serialisable")
