"""OSCORE security contexts (RFC 8613) on disk: one side of a context as an aiocoap context directory.

Each side is an aiocoap ``FilesystemSecurityContext`` directory (mode 0700) holding

* ``settings.json`` (0600): sender id, recipient id, AEAD algorithm, KDF hash;
* ``secret.json`` (0600): master secret and salt;
* ``sequence.json`` (0600, written by aiocoap): the next sender sequence number
  and the replay window; ``lock`` while a process uses the context.

`write_context` creates such a directory complete or not at all and never
over an existing one; `open_context` loads it for one process after refusing
a directory that others could read; `close_context` writes its state back.
Who allocates the ids and where the directories live is the caller's business
(the lender's per-device contexts, the gateway's one context).

What survives a restart (aiocoap 0.4.17, read in ``aiocoap/oscore.py``):

* Sender sequence numbers are *reserved* before use (RFC 8613 Appendix B.1.1):
  ``sequence.json`` holds a number above every one handed out, written with
  fsync before the first number past the old reservation is used, in chunks
  growing 10, 20, 40 ... 10000. After a SIGKILL the process resumes at the
  reservation, skipping the unused rest; never reusing one. aiocoap does not
  fsync the directory after its atomic rename, so `DurableSecurityContext`
  adds that (a power cut could otherwise bring back the older reservation).
* The replay window is marked ``"unknown"`` on disk at the first accepted
  request after loading and written exactly only by a clean close
  (`close_context`). After a crash the server answers the client's next
  request with 4.01 + Echo (Appendix B.1.2); aiocoap's client repeats the
  request with the Echo value by itself, so the client is never locked out,
  and an old captured request cannot be replayed because it cannot carry the
  fresh Echo.
"""
from __future__ import annotations

import binascii
import errno
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import filelock
from aiocoap.oscore import FilesystemSecurityContext, algorithms

from durable.exc import (
    OscoreContextError,
    OscoreContextExistsError,
    OscoreContextInUseError,
    OscoreContextInvalidError,
    OscoreContextPermissionError,
)
from durable.files import create_private, fsync_dir
from telemetry.enrollment import ContextKeys
from telemetry.numbers import OSCORE_ALGORITHM, OSCORE_KDF_HASH

ALGORITHM = OSCORE_ALGORITHM  # aiocoap's default and RFC 8613's mandatory-to-implement AEAD
KDF_HASH = OSCORE_KDF_HASH
MASTER_SECRET_BYTES = 32
MASTER_SALT_BYTES = 8
MAX_ID_BYTES = algorithms[ALGORITHM].iv_bytes - 6  # RFC 8613 §5.2: 7 bytes for a 13-byte nonce
SETTINGS_FILE = "settings.json"
SECRET_FILE = "secret.json"
SEQUENCE_FILE = "sequence.json"


@dataclass(frozen=True, slots=True)
class ContextParameters(ContextKeys):
    """One side's view of an OSCORE context, checked: its own id, its peer's id, and the shared secret and salt.

    The same four values the enrollment response seals for the device
    (telemetry.enrollment.ContextKeys), with what a usable context needs.
    """

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

def _json(data: dict) -> bytes:
    return json.dumps(data, indent=1).encode("ascii") + b"\n"


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
        create_private(staging / SETTINGS_FILE, _json({
            "sender-id_hex": params.sender_id.hex(),
            "recipient-id_hex": params.recipient_id.hex(),
            "algorithm": ALGORITHM,
            "kdf-hashfun": KDF_HASH,
        }))
        create_private(staging / SECRET_FILE, _json({
            "secret_hex": params.master_secret.hex(),
            "salt_hex": params.master_salt.hex(),
        }))
        fsync_dir(staging)
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OscoreContextExistsError(
                    f"OSCORE context {target} appeared while it was being written; refusing to overwrite it"
                ) from exc
            raise
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_private(directory: str | os.PathLike) -> None:
    """Refuse a context that others could read: the directory must be 0700 and its files 0600, all ours.

    ``secret.json`` must exist; ``settings.json`` may be absent (aiocoap also
    takes the static parameters from ``secret.json``), and ``sequence.json``
    is absent until the context is first used.
    """
    base = Path(directory)
    me = os.geteuid()
    entries = [(base, True)] + [(base / name, False) for name in (SETTINGS_FILE, SECRET_FILE, SEQUENCE_FILE)]
    for path, is_dir in entries:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if path.name in (SETTINGS_FILE, SEQUENCE_FILE):
                continue
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
    come back, which would reuse nonces.
    """

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
        fsync_dir(self.basedir)


def open_context(directory: str | os.PathLike) -> DurableSecurityContext:
    """Load a context directory for use by this process, after checking its permissions (`check_private`)."""
    base = Path(directory)
    check_private(base)
    try:
        return DurableSecurityContext(os.fspath(base))
    except filelock.Timeout as exc:
        raise OscoreContextInUseError(
            f"OSCORE context {base} is in use by another process or object; one context, one user "
            "(two would reuse sequence numbers)"
        ) from exc
    except (FilesystemSecurityContext.LoadError, ValueError, KeyError, binascii.Error) as exc:
        raise OscoreContextInvalidError(f"OSCORE context {base} cannot be loaded: {exc}") from exc
    except OSError as exc:
        raise OscoreContextError(f"OSCORE context {base} cannot be opened: {exc}") from exc


def close_context(context: FilesystemSecurityContext) -> None:
    """Write the exact sequence number and replay window back and release the lock (clean shutdown).

    Without this the state is written only when the object is garbage
    collected, and a server that stops without it leaves every replay window
    "unknown" (one extra Echo round trip per client after the restart).
    """
    if getattr(context, "lockfile", None) is not None:
        context._destroy()  # aiocoap 0.4.17's own shutdown path (also what __del__ runs)
