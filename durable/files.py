"""Atomic file writes: after a power cut a file is the old one or the new one, whole.

A write goes to a temporary file in the target's directory, which is fsynced,
given its exact mode (and owner), renamed over the target, and then the
directory is fsynced so that the rename itself survives a power cut.
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename, a new or removed file in it) to the disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than asked) and fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def create_private(path: str | os.PathLike, data: bytes) -> None:
    """Create `path`, which must not exist yet (nor be a link), with mode 0600 exactly, holding `data`, fsynced.

    Raises FileExistsError if it exists, OSError otherwise. The directory is
    not fsynced: the caller renames, links or fsyncs it as its layout needs.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact, whatever the umask
        write_all(fd, data)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """The temporary file a write of `path` goes through: hidden, in the same directory, one per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600, *,
                 owner: tuple[int, int] | None = None, temporary: str | os.PathLike | None = None) -> None:
    """Replace `path` with `data`, with exactly `mode` (whatever the umask) and, if given, `owner` (uid, gid).

    The temporary file is a hidden per-process name beside `path`, removed
    again when the write fails; or `temporary`, a fixed name for a file only
    one process writes, which is left where a failed write put it (as a power
    cut would) for its owner to clean up when it next opens. Raises OSError.
    """
    path = Path(path)
    tmp = Path(temporary) if temporary is not None else temporary_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if temporary is None:
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
