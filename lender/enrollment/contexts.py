"""OSCORE security contexts (RFC 8613) on disk, and the lender's CoAP server's view of them.

One context pair per device, created at enrollment: a fresh master secret
(``os.urandom``) and salt, the lender's sender id (empty) and the device's
sender id (a short integer unique among this lender's devices). Each side is an
aiocoap ``FilesystemSecurityContext`` directory (mode 0700) holding

* ``settings.json`` (0600): sender id, recipient id, AEAD algorithm, KDF hash;
* ``secret.json`` (0600): master secret and salt;
* ``sequence.json`` (0600, written by aiocoap): the next sender sequence number
  and the replay window; ``lock`` while a process uses the context.

The lender's side lives at ``<contexts root>/<device id>/``; the device's side
wherever provisioning puts it (``write_context`` writes either).

What survives a restart (aiocoap 0.4.17, read in ``aiocoap/oscore.py``):

* Sender sequence numbers are *reserved* before use (RFC 8613 Appendix B.1.1):
  ``sequence.json`` holds a number above every one handed out, written with
  fsync before the first number past the old reservation is used, in chunks
  growing 10, 20, 40 ... 10000. After a SIGKILL the process resumes at the
  reservation, skipping the unused rest; never reusing one. aiocoap does not
  fsync the directory after its atomic rename, so ``DurableSecurityContext``
  adds that (a power cut could otherwise bring back the older reservation).
* The replay window is marked ``"unknown"`` on disk at the first accepted
  request after loading and written exactly only by a clean close
  (``close_context``). After a crash the lender answers the device's next
  request with 4.01 + Echo (Appendix B.1.2); aiocoap's client repeats the
  request with the Echo value by itself, so the device is never locked out,
  and an old captured request cannot be replayed because it cannot carry the
  fresh Echo.
"""
from __future__ import annotations

import binascii
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import filelock
from aiocoap import error as coap_error
from aiocoap import interfaces
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore import FilesystemSecurityContext, algorithms
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress

from lender.coap.routing import Wrapper
from lender.exc import (
    OscoreContextError,
    OscoreContextExistsError,
    OscoreContextInUseError,
    OscoreContextInvalidError,
    OscoreContextPermissionError,
)

log = logging.getLogger(__name__)

ALGORITHM = "AES-CCM-16-64-128"  # aiocoap's default and RFC 8613's mandatory-to-implement AEAD
KDF_HASH = "sha256"
MASTER_SECRET_BYTES = 32
MASTER_SALT_BYTES = 8
LENDER_SENDER_ID = b""  # one per context, so the lender needs no distinct id per device
MAX_ID_BYTES = algorithms[ALGORITHM].iv_bytes - 6  # RFC 8613 §5.2: 7 bytes for a 13-byte nonce
SETTINGS_FILE = "settings.json"
SECRET_FILE = "secret.json"
SEQUENCE_FILE = "sequence.json"
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ALLOCATION_LOCK = ".allocate.lock"


@dataclass(frozen=True, slots=True)
class ContextParameters:
    """One side's view of an OSCORE context: its own id, its peer's id, and the shared secret and salt."""

    sender_id: bytes
    recipient_id: bytes
    master_secret: bytes = field(repr=False)
    master_salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("sender_id", "recipient_id", "master_secret", "master_salt"):
            if not isinstance(getattr(self, name), bytes):
                raise OscoreContextInvalidError(f"OSCORE {name.replace('_', ' ')} must be bytes")
        for name, value in (("sender id", self.sender_id), ("recipient id", self.recipient_id)):
            if len(value) > MAX_ID_BYTES:
                raise OscoreContextInvalidError(
                    f"OSCORE {name} {value.hex()} is {len(value)} bytes; {ALGORITHM} allows at most {MAX_ID_BYTES}"
                )
        if self.sender_id == self.recipient_id:
            raise OscoreContextInvalidError("OSCORE sender and recipient ids must differ (RFC 8613 §3.3)")
        if len(self.master_secret) < 16:
            raise OscoreContextInvalidError(
                f"OSCORE master secret is {len(self.master_secret)} bytes; use at least 16 (a fresh os.urandom(32))"
            )

    @classmethod
    def generate(cls, sender_id: bytes, recipient_id: bytes) -> ContextParameters:
        """A fresh context: random master secret and salt from the operating system."""
        return cls(sender_id, recipient_id, os.urandom(MASTER_SECRET_BYTES), os.urandom(MASTER_SALT_BYTES))

    def for_peer(self) -> ContextParameters:
        """The same context seen from the other end (ids swapped)."""
        return ContextParameters(self.recipient_id, self.sender_id, self.master_secret, self.master_salt)


# --- files ---------------------------------------------------------------

def _fsync_dir(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_json(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact, whatever the umask
        os.write(fd, json.dumps(data, indent=1).encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_context(directory: str | os.PathLike, params: ContextParameters) -> Path:
    """Write one side of a context as a new aiocoap context directory (0700, files 0600).

    The directory appears complete or not at all (written aside, then renamed).
    An existing directory is never overwritten: a second context under an old
    name would restart sequence numbers that a peer may still hold, and reusing
    a master secret with a reset sequence number reuses AEAD nonces.
    """
    target = Path(directory)
    if os.path.lexists(target):
        raise OscoreContextExistsError(f"OSCORE context {target} already exists; refusing to overwrite it")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new", dir=parent))  # mode 0700
    try:
        _write_private_json(staging / SETTINGS_FILE, {
            "sender-id_hex": params.sender_id.hex(),
            "recipient-id_hex": params.recipient_id.hex(),
            "algorithm": ALGORITHM,
            "kdf-hashfun": KDF_HASH,
        })
        _write_private_json(staging / SECRET_FILE, {
            "secret_hex": params.master_secret.hex(),
            "salt_hex": params.master_salt.hex(),
        })
        _fsync_dir(staging)
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OscoreContextExistsError(
                    f"OSCORE context {target} appeared while it was being written; refusing to overwrite it"
                ) from exc
            raise
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_private(directory: str | os.PathLike) -> None:
    """Refuse a context that others could read: the directory must be 0700 and its files 0600, all ours."""
    base = Path(directory)
    me = os.geteuid()
    entries = [(base, True)] + [(base / name, False) for name in (SETTINGS_FILE, SECRET_FILE, SEQUENCE_FILE)]
    for path, is_dir in entries:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if path.name == SEQUENCE_FILE:
                continue  # a context that was never used yet
            raise OscoreContextInvalidError(f"OSCORE context {base}: {path.name} is missing") from None
        kind_ok = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
        if not kind_ok:
            raise OscoreContextPermissionError(
                f"OSCORE context {path} must be a plain {'directory' if is_dir else 'file'}, not a link or device"
            )
        if st.st_mode & 0o077 or st.st_uid != me:
            raise OscoreContextPermissionError(
                f"OSCORE context {path} has mode {stat.S_IMODE(st.st_mode):04o} and owner uid {st.st_uid}; "
                f"it must be {'0700' if is_dir else '0600'} and owned by uid {me} (chmod it, or re-enroll)"
            )


def read_parameters(directory: str | os.PathLike) -> ContextParameters:
    """The static parameters of a context directory written by `write_context` (for registries and tools)."""
    base = Path(directory)
    try:
        settings = json.loads((base / SETTINGS_FILE).read_text("ascii"))
        secret = json.loads((base / SECRET_FILE).read_text("ascii"))
        return ContextParameters(
            bytes.fromhex(settings["sender-id_hex"]),
            bytes.fromhex(settings["recipient-id_hex"]),
            bytes.fromhex(secret["secret_hex"]),
            bytes.fromhex(secret["salt_hex"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OscoreContextInvalidError(f"OSCORE context {base} cannot be read: {exc}") from exc


# --- loading and closing ---------------------------------------------------

class DurableSecurityContext(FilesystemSecurityContext):
    """aiocoap's file-backed context, plus an fsync of the directory after each sequence-file replace.

    aiocoap writes ``sequence.json`` to a temporary file, fsyncs it and renames
    it over the old one, but does not fsync the directory: after a power cut
    the rename may be lost and the older, lower sender-sequence reservation
    come back, which would reuse nonces. (The agent carries the same class.)
    """

    device_id: str | None = None

    def __init__(self, basedir: str, **kwargs) -> None:
        try:
            super().__init__(basedir, **kwargs)
        except BaseException:
            # aiocoap takes the lock before loading and keeps it when loading
            # fails; its __del__ would then crash on the half-built object.
            if getattr(self, "lockfile", None) is not None:
                self.lockfile.release()
                self.lockfile = None
            raise

    def _store(self) -> None:
        super()._store()
        _fsync_dir(self.basedir)


def open_context(directory: str | os.PathLike) -> DurableSecurityContext:
    """Load a context directory for use by this process, after checking its permissions."""
    base = Path(directory)
    check_private(base)
    try:
        return DurableSecurityContext(os.fspath(base))
    except filelock.Timeout as exc:
        raise OscoreContextInUseError(
            f"OSCORE context {base} is in use by another process or object; one context, one user"
        ) from exc
    except (FilesystemSecurityContext.LoadError, ValueError, KeyError, binascii.Error) as exc:
        raise OscoreContextInvalidError(f"OSCORE context {base} cannot be loaded: {exc}") from exc
    except OSError as exc:
        raise OscoreContextError(f"OSCORE context {base} cannot be opened: {exc}") from exc


def close_context(context: FilesystemSecurityContext) -> None:
    """Write the exact sequence number and replay window back and release the lock.

    Without this the state is written only when the object is garbage
    collected, and a lender that stops without it leaves every replay window
    "unknown" (one extra Echo round trip per device after the restart).
    """
    if getattr(context, "lockfile", None) is not None:
        context._destroy()  # aiocoap 0.4.17's own shutdown path (also what __del__ runs)


# --- enrollment --------------------------------------------------------------

def check_device_id(device_id: str) -> str:
    """A device id names a directory: letters, digits, dot, dash, underscore; 1..64; no leading dot."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise OscoreContextInvalidError(
            f"device id {device_id!r} cannot name an OSCORE context: use 1..64 of A-Z a-z 0-9 . _ - "
            "(not starting with . _ or -)"
        )
    return device_id


@contextlib.contextmanager
def _allocation_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / _ALLOCATION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _id_bytes(number: int) -> bytes:
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")


def _used_device_ids(root: Path) -> set[bytes]:
    used = set()
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        with contextlib.suppress(OscoreContextInvalidError):
            used.add(read_parameters(entry).recipient_id)
    return used


def new_device_context(contexts_root: str | os.PathLike, device_id: str) -> ContextParameters:
    """Create the lender's side of a new context for `device_id`; return the device's side to deliver.

    The device's OSCORE sender id is the smallest positive integer (1, 2, ...,
    big-endian, shortest) not used by another context under the root, so
    it costs one byte on air per request for the first 255 devices.
    """
    check_device_id(device_id)
    root = Path(contexts_root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _allocation_lock(root):
        if os.path.lexists(root / device_id):
            raise OscoreContextExistsError(
                f"device {device_id} already has an OSCORE context at {root / device_id}; revoke it first"
            )
        used = _used_device_ids(root)
        number = 1
        while _id_bytes(number) in used:
            number += 1
        lender_side = ContextParameters.generate(LENDER_SENDER_ID, _id_bytes(number))
        write_context(root / device_id, lender_side)
    return lender_side.for_peer()


def create_context_pair(
    contexts_root: str | os.PathLike, device_id: str, device_directory: str | os.PathLike
) -> ContextParameters:
    """Enroll one device end to end: the lender's side under the root, the device's side at `device_directory`.

    Returns the device's parameters. If the device's side cannot be written
    the lender's side is removed again (it was never used), so no device is
    left half-provisioned.
    """
    device_directory = Path(device_directory)
    if os.path.lexists(device_directory):
        raise OscoreContextExistsError(f"OSCORE context {device_directory} already exists; refusing to overwrite it")
    device_side = new_device_context(contexts_root, device_id)
    try:
        write_context(device_directory, device_side)
    except BaseException:
        shutil.rmtree(Path(contexts_root) / device_id, ignore_errors=True)
        raise
    return device_side


# --- the server's credentials ------------------------------------------------

class LenderCredentials:
    """The lender's loaded contexts, one per enrolled device, as the CredentialsMap its aiocoap server uses."""

    def __init__(self, contexts_root: str | os.PathLike) -> None:
        self.root = Path(contexts_root)
        self.map = CredentialsMap()
        self._contexts: dict[str, DurableSecurityContext] = {}

    @classmethod
    def load(cls, contexts_root: str | os.PathLike) -> LenderCredentials:
        """Load every device context under the root. A broken one is logged and skipped, never fatal."""
        credentials = cls(contexts_root)
        credentials.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in sorted(credentials.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                credentials.add(entry.name)
            except OscoreContextError as exc:
                log.error("OSCORE context of device %s not loaded, its requests will be refused: %s", entry.name, exc)
        return credentials

    def add(self, device_id: str) -> None:
        """Start accepting `device_id` (its context was just written under the root)."""
        check_device_id(device_id)
        if device_id in self._contexts:
            return
        context = open_context(self.root / device_id)
        context.device_id = device_id
        context.authenticated_claims = [f"device:{device_id}"]
        self._contexts[device_id] = context
        self.map[f":device:{device_id}"] = context

    def remove(self, device_id: str) -> None:
        """Stop accepting `device_id` (revocation); its directory stays on disk as a record."""
        context = self._contexts.pop(device_id, None)
        self.map.pop(f":device:{device_id}", None)
        if context is not None:
            close_context(context)

    def device_of(self, request) -> str | None:
        """The device whose OSCORE context protected `request`, or None for a plain CoAP request."""
        remote = getattr(request, "remote", None)
        if isinstance(remote, OSCOREAddress):
            return getattr(remote.security_context, "device_id", None)
        return None

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._contexts

    def __len__(self) -> int:
        return len(self._contexts)

    def close(self) -> None:
        """Persist every context's exact state and release the locks (clean shutdown)."""
        for device_id in list(self._contexts):
            self.remove(device_id)


class _OscoreRequired(Wrapper):
    """Refuses every request that did not arrive OSCORE-protected (aiocoap's wrapper passes them through)."""

    async def render_to_pipe(self, pipe) -> None:
        if not isinstance(pipe.request.remote, OSCOREAddress):
            raise coap_error.Unauthorized("OSCORE required")
        await self.inner.render_to_pipe(pipe)


def protected_site(site: interfaces.Resource, credentials: LenderCredentials, *, insecure: bool = False):
    """The resource tree to serve: OSCORE-protected, and plain CoAP refused with 4.01 unless `insecure`.

    aiocoap's ``OscoreSiteWrapper`` alone enforces nothing: a request without
    the OSCORE option goes straight to the inner site. Resources learn the
    sending device from `LenderCredentials.device_of(request)`.
    """
    if insecure:
        log.warning(
            "insecure = true: plain CoAP requests are accepted without OSCORE; anyone on the path can read, "
            "alter or inject telemetry requests (envelope signatures are still checked)"
        )
        return OscoreSiteWrapper(site, credentials.map)
    return OscoreSiteWrapper(_OscoreRequired(site), credentials.map)
