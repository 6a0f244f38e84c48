"""Device identity: an Ed25519 key pair (PyNaCl) built from its 32-byte seed, and its key id.

kid = the first 8 bytes of SHA-256 of the public key. The seed never appears
in a repr, a log line or an exception message, and an `Identity` cannot be
pickled. Pure: the key file that holds the seed (mode 0600, refused when
others can read it) is read and written by `durable.keyfile`, so a key file
becomes an identity with ``Identity(read_key(path))``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from telemetry.exc import IdentityError

SEED_BYTES = 32


def kid_of(public_key: bytes) -> bytes:
    """The key id of an Ed25519 public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8]


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What a verifier knows of a device: its id and its Ed25519 public key."""

    device: str
    public_key: bytes
    kid: bytes = field(init=False)
    _verify_key: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 32:
            raise IdentityError(f"device {self.device!r}: an Ed25519 public key is 32 bytes")
        object.__setattr__(self, "kid", kid_of(self.public_key))
        object.__setattr__(self, "_verify_key", nacl.signing.VerifyKey(self.public_key))

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """True if `signature` is this key's Ed25519 signature of `message`."""
        try:
            self._verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
            return False
        return True


class Identity:
    """A device's signing key. Create from a 32-byte seed (a key file's content), or with `generate`."""

    __slots__ = ("_signing_key", "public_key", "kid")

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
