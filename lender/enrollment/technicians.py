"""The lender's enrollment floor, its people and keys: registered field technicians and the lender's enrollment key.

A technician's countersignature is what makes an enrollment request
acceptable (telemetry.enrollment); technicians live in
``DATA/enroll/technicians.json`` (0600), changed under a lock and replaced
atomically. The enrollment key (``DATA/enroll/lender.key``, 0600, `lender_identity`) signs
responses, site files and the evidence log's checkpoints; technicians pin its public key.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from durable.files import atomic_write
from lender.evidence.log import lender_identity  # noqa: F401 (its home now; re-exported for older callers)
from lender.evidence.registry import iso_time
from lender.exc import (
    InvalidTechnicianError,
    TechnicianExistsError,
    UnknownTechnicianError,
)
from telemetry.enrollment import valid_id
from telemetry.identity import kid_of

ENROLL_DIR = "enroll"


def enroll_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / ENROLL_DIR


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
        atomic_write(self.path, json.dumps({"technicians": rows}, indent=1).encode() + b"\n")

    def get(self, technician: str) -> Technician | None:
        return self._read().get(technician)

    def all(self) -> list[Technician]:
        return sorted(self._read().values(), key=lambda t: t.technician)

    def add(self, technician: str, public_key: bytes, name: str = "", *, now: float | None = None) -> Technician:
        if not isinstance(technician, str) or not valid_id(technician):
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
