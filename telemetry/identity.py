"""Device identity: an Ed25519 key pair (PyNaCl), its key id, and its key file.

The private key is stored as its 32-byte seed in a file created with mode 0600
(exclusive create of a temporary file, fsync, then an atomic link or rename),
and loading refuses a file that group or others can read. kid = the first 8
bytes of SHA-256 of the public key. The seed never appears in a repr, a log
line or an exception message.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing

from telemetry.exc import IdentityError, KeyFilePermissionError

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
    """A device's signing key. Create from a 32-byte seed, or with `generate` or `load`."""

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

    @classmethod
    def load(cls, path: str | os.PathLike) -> Identity:
        """Load a key file, refusing one that is not a private regular file of 32 bytes."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise IdentityError(f"key file {path} does not exist: create it with `pledgewatch provision gateway`") from exc
        except OSError as exc:
            raise IdentityError(f"cannot open key file {path}: {exc.strerror} (a key file must not be a symlink)") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError(f"key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyFilePermissionError(
                    f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; group and others must not read it. "
                    f"Fix it with: chmod 600 {path}"
                )
            seed = os.read(fd, SEED_BYTES + 1)
        finally:
            os.close(fd)
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"key file {path} holds {len(seed)} bytes; an Ed25519 seed is {SEED_BYTES}")
        return cls(seed)

    def save(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        """Write the seed to `path` with mode 0600, atomically; refuse to overwrite unless `replace`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise IdentityError(f"cannot create key file in {path.parent}: {exc.strerror}") from exc
        try:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask said
                os.write(fd, bytes(self._signing_key))
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic, and fails if the file exists
                except FileExistsError as exc:
                    raise IdentityError(f"key file {path} exists already; keep it, or rotate explicitly") from exc
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self._signing_key.sign(message).signature

    def device_key(self, device: str) -> DeviceKey:
        """The verifier's view of this identity for `device`."""
        return DeviceKey(device, self.public_key)

    def __repr__(self) -> str:
        return f"Identity(kid={self.kid.hex()})"

    def __reduce__(self):
        raise TypeError("an Identity is not serialisable; save it to a key file instead")
