"""Fixtures for the firmware checks: the MicroPython unix port, mpy-cross, and per-board stub folders for basedpyright."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
SOURCES = FIRMWARE / "src"
# A device-sized heap. An ESP32 without PSRAM leaves MicroPython ~110 KB of heap, an RP2040
# ~190 KB; objects on this 64-bit host are up to twice their size on those 32-bit chips, and
# the suite compiles its test modules from source, so 128 KB here is the tighter budget.
HEAPSIZE = "128k"
MICROPYPATH = os.pathsep.join(str(p) for p in (FIRMWARE / "tests" / "fakes", SOURCES / "lib", SOURCES))

# The board stub packages both ship machine.pyi, time.pyi, ... at the top level, so
# they cannot share one site-packages: each is installed into its own folder.
BOARD_STUBS = {
    "esp32": ("micropython-esp32-stubs==1.29.0.post1", "micropython-stdlib-stubs==1.29.0.post2"),
    "rp2": ("micropython-rp2-stubs==1.29.0.post1", "micropython-stdlib-stubs==1.29.0.post2"),
}
STUBS_HOME = ROOT / ".venv" / "firmware-stubs"


def tool(name: str) -> str:
    """The path of a console tool installed beside this interpreter (the project's venv), or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make test` (or pip install -e '.[test]') to install the test dependencies")
    return found


def _run_micropython(
    *args: str, heapsize: str = HEAPSIZE, stdin: str | None = None, timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env or {}), MICROPYPATH=MICROPYPATH)
    return subprocess.run(
        [tool("micropython"), "-X", f"heapsize={heapsize}", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_micropython():
    """run_micropython(*args, heapsize=, stdin=, env=): the MicroPython unix port with the firmware's
    module path (fakes first) and a device-sized heap, from the repository root."""
    return _run_micropython


@pytest.fixture(scope="session")
def firmware_root() -> Path:
    return FIRMWARE


def _install_stubs(board: str) -> Path:
    requirements = BOARD_STUBS[board]
    target = STUBS_HOME / "-".join([board, *(r.split("==")[1] for r in requirements)])
    if (target / ".complete").exists():
        return target
    STUBS_HOME.mkdir(parents=True, exist_ok=True)
    # Install beside the final folder, then rename: concurrent test runs never see half a folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{board}-", dir=STUBS_HOME))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
         "--target", str(staging), *requirements],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"could not install the {board} stubs ({' '.join(requirements)}):\n{result.stdout}{result.stderr}")
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:  # another run installed them first
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session", params=sorted(BOARD_STUBS))
def board_stubs(request) -> tuple[str, Path]:
    """(board, folder holding that board's MicroPython stubs and their stdlib typeshed)."""
    return request.param, _install_stubs(request.param)


@pytest.fixture(scope="session")
def firmware_sources() -> list[Path]:
    """Every file that goes onto a device: everything under firmware/src."""
    return sorted(SOURCES.rglob("*.py"))


@pytest.fixture(scope="session")
def installed_tool():
    """installed_tool(name): the path of a console tool from the test dependencies (fails with a how-to if missing)."""
    return tool
