"""Private key files: 32 secret bytes (an Ed25519 seed, an X25519 private key) in a file only its owner can read.

A key file is created with mode 0600 through an exclusive create of a
temporary file, fsync, then an atomic link (which refuses to overwrite an
existing key) or, when replacing on purpose, a rename; then the directory is
fsynced. Reading refuses a symlink, anything but a regular file, a file of
another size, and a file whose mode lets group or others read it, with the
``chmod 600 PATH`` that fixes it. The key's bytes never appear in a message.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from durable.exc import (
    KeyFileExistsError,
    KeyFileInvalidError,
    KeyFileMissingError,
    KeyFilePermissionError,
    KeyFileUnavailableError,
)
from durable.files import create_private, fsync_dir, temporary_name

KEY_BYTES = 32


def read_key(path: str | os.PathLike) -> bytes:
    """The 32 bytes of a key file, refusing one that is not a private regular file of exactly that size."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise KeyFileMissingError(
            f"key file {path} does not exist: create it with `pledgewatch provision gateway`") from exc
    except OSError as exc:
        error = KeyFileInvalidError if exc.errno == errno.ELOOP else KeyFileUnavailableError
        raise error(f"cannot open key file {path}: {exc.strerror} (a key file must not be a symlink)") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileInvalidError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFilePermissionError(
                f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; group and others must not read it. "
                f"Fix it with: chmod 600 {path}"
            )
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise KeyFileInvalidError(f"key file {path} holds {len(key)} bytes; a key file holds exactly {KEY_BYTES}")
    return key


def write_key(path: str | os.PathLike, key: bytes, *, replace: bool = False) -> None:
    """Write `key` to `path` with mode 0600, atomically; refuse to overwrite an existing file unless `replace`."""
    path = Path(path)
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise KeyFileInvalidError(f"a key file holds exactly {KEY_BYTES} bytes")
    tmp = temporary_name(path)
    try:
        try:
            create_private(tmp, key)
        except OSError as exc:
            raise KeyFileUnavailableError(f"cannot create key file in {path.parent}: {exc.strerror}") from exc
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if the file exists
            except FileExistsError as exc:
                raise KeyFileExistsError(f"key file {path} exists already; keep it, or rotate explicitly") from exc
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def create_key(path: str | os.PathLike, *, replace: bool = False) -> bytes:
    """A new random key from the operating system, written to `path` as by `write_key`; returns it."""
    key = os.urandom(KEY_BYTES)
    write_key(path, key, replace=replace)
    return key
