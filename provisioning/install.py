"""Putting files in place on a gateway: atomic writes with exact modes and owners, and undo for a failed run.

Every file is written by `durable.files.atomic_write`: to a temporary name in
its directory, fsynced, given its mode and owner, then renamed over the
target, and the directory fsynced: after a power cut a file is the old one or
the new one, whole. `Rollback`
records how to undo each step of a provisioning run; if the run fails, the
steps are undone in reverse, so the gateway is left as it was, never half
provisioned.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from durable.files import atomic_write
from provisioning.exc import InstallError, SetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who the agent runs as: its files belong to this uid/gid."""

    uid: int
    gid: int
    name: str

    @classmethod
    def of(cls, user: str | None) -> Owner:
        """The named user (the ``pledgewatch`` service user by default when it exists, else whoever runs this)."""
        if user is None:
            try:
                entry = pwd.getpwnam("pledgewatch")
            except KeyError:
                entry = pwd.getpwuid(os.geteuid())
        else:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise SetupError(f"user {user!r} does not exist: create the agent's user first "
                                 f"(sudo useradd --system --groups dialout,gpio {user}) or pass --user") from None
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    @property
    def group(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)

    def apply(self, path: Path, *, group_only: bool = False) -> None:
        """chown `path` (no-op when it is ours already, and when we are not root: we cannot give files away)."""
        if os.geteuid() != 0:
            return
        os.chown(path, 0 if group_only else self.uid, self.gid, follow_symlinks=False)


def ensure_dir(path: Path, mode: int, owner: Owner | None = None, *, group_only: bool = False) -> bool:
    """Create `path` (and parents) if missing; set its mode and owner. True if it was created."""
    created = not path.exists()
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)
        if owner is not None:
            owner.apply(path, group_only=group_only)
    except OSError as exc:
        raise InstallError(f"cannot create {path}: {exc.strerror}; run as root (sudo) or choose another "
                           "directory") from exc
    return created


def write_file(path: Path, data: bytes, mode: int, owner: Owner | None = None, *, group_only: bool = False) -> None:
    """Write `data` to `path` atomically (`durable.files.atomic_write`) with exactly `mode` and `owner`."""
    uid_gid = (0 if group_only else owner.uid, owner.gid) if owner is not None and os.geteuid() == 0 else None
    try:
        atomic_write(path, data, mode, owner=uid_gid)
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror}; run as root (sudo) or check the disk") from exc


def chown_tree(path: Path, owner: Owner) -> None:
    """Give a directory tree (an OSCORE context) to the agent's user."""
    owner.apply(path)
    for child in path.rglob("*"):
        owner.apply(child)


class Rollback:
    """Undo steps of a run, in reverse, unless the run completed (`done()`)."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, undo: Callable[[], None]) -> None:
        self._steps.append((what, undo))

    def created_file(self, path: Path) -> None:
        self.add(f"remove {path}", lambda: path.unlink(missing_ok=True))

    def created_dir(self, path: Path) -> None:
        """Remove `path` on undo if it is empty by then (what else the run put there is undone first)."""
        def remove() -> None:
            try:
                path.rmdir()
            except OSError:
                pass
        self.add(f"remove {path}", remove)

    def created_tree(self, path: Path) -> None:
        self.add(f"remove {path}", lambda: shutil.rmtree(path, ignore_errors=True))

    def replaced_file(self, path: Path) -> None:
        """Remember `path`'s current content (or absence) to restore it."""
        if path.exists():
            old, mode, stat = path.read_bytes(), path.stat().st_mode & 0o7777, path.stat()

            def restore() -> None:
                write_file(path, old, mode)
                if os.geteuid() == 0:
                    os.chown(path, stat.st_uid, stat.st_gid)
            self.add(f"restore {path}", restore)
        else:
            self.created_file(path)

    def done(self) -> None:
        self._steps.clear()

    def undo(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep undoing the rest; say what could not be undone
                log.error("could not %s while undoing a failed run: %s", what, exc)

    def __enter__(self) -> Rollback:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.undo()
