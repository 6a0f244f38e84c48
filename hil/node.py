"""hil.node — an NB-IoT node on the bench: the real firmware under the MicroPython unix port, on a simulated NB-IoT modem.

A `SimulatedNode` is provisioned like a field node (a root folder with
``node.json``, ``node.key`` and ``node.oscore``, the node's side of the OSCORE
context the bench's lender made when it registered the node), and run cycle
by cycle under MicroPython with a device-sized heap. Against an insecure
lender (no context) it runs with ``"insecure": true``, plain CoAP. The firmware's modules are
compiled with mpy-cross for the host, as a device holds them; the board
(UART, pins, 1-Wire, ADC, RTC memory) is the firmware team's fake ``machine``
module, and the cycle harness is theirs too (`firmware/tests/node_cycles.py`:
``node.run(root)``, the real main minus the final deep sleep). The modem is a
`hil.sim.modem.ModemSimulator` whose UDP sockets are real sockets on
127.0.0.1, pointed at the bench's proxy so network faults reach the node too.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hil.env import REPO, NodeSpec
from hil.exc import BenchError

FIRMWARE = REPO / "firmware"
HARNESS = FIRMWARE / "tests" / "node_cycles.py"
FAKES = FIRMWARE / "tests" / "fakes"
HEAPSIZE = "128k"
# Pins the cycle harness wires its simulated devices to (firmware/tests/node_cycles.py).
NODE_PINS = {"onewire_pin": 13, "tamper_pin": 4, "battery_adc_pin": 34, "i2c": {"id": 0, "scl": 22, "sda": 21}}
RESET_PIN = 5
PWRON_RESET, DEEPSLEEP_RESET, PIN_WAKE = 1, 4, 2


def tool(name: str) -> str:
    """A console tool beside this interpreter (the project's venv), or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def modem_model(key: str):
    """The simulated NB-IoT modem model `key` (bc66, bc95, sim7080g), from hil.sim.models."""
    from hil.sim.models import MODELS

    if key not in MODELS:
        raise BenchError(f"no simulated modem model {key!r} in hil.sim.models; known: {', '.join(sorted(MODELS))}")
    return MODELS[key]


def compile_firmware(target: Path) -> Path:
    """The firmware's modules, the fake board and the cycle harness as host .mpy files in `target`."""
    target.mkdir(parents=True, exist_ok=True)
    sources = [*sorted((FIRMWARE / "src" / "lib").glob("*.py")), *sorted(FAKES.glob("*.py")), HARNESS,
               FIRMWARE / "tests" / "flashcut.py"]
    for source in sources:
        result = subprocess.run([tool("mpy-cross"), "-march=host", "-o", str(target / (source.stem + ".mpy")),
                                 str(source)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise BenchError(f"mpy-cross cannot compile {source}:\n{result.stdout}{result.stderr}")
    (target / "run_cycles.py").write_text("import node_cycles\n")
    return target


class SimulatedNode:
    """One provisioned node and the way to run its cycles (see the module docstring)."""

    def __init__(self, spec: NodeSpec, root: Path, *, lender_port: int, seed: bytes | None = None,
                 context: Path | None = None) -> None:
        """context: the node's side of its OSCORE context (`LenderProcess.register_node`); None: the bench's own
        layout is looked at (``<workdir>/lender/device-contexts/<name>`` beside ``<workdir>/nodes/<name>``), and
        without one there the node runs insecure."""
        import nacl.signing

        from durable.oscore import read_parameters
        from provisioning.node import NODE_CONTEXT, node_context_file

        self.spec = spec
        self.name = spec.name
        self.root = Path(root)
        self.seed = seed or os.urandom(32)
        self.public_key = bytes(nacl.signing.SigningKey(self.seed).verify_key)
        self.model = modem_model(spec.modem_model)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = {
            "device": spec.name,
            "interval_s": 900,
            "lender": {"host": "127.0.0.1", "port": lender_port, "path": "n"},
            "modem": {"model": spec.modem_model, "uart": 1, "reset_pin": RESET_PIN, "reset_active": 0,
                      "timeout_ms": 500, "network_timeout_ms": 2000, "reset_pulse_ms": 20, "boot_ms": 200,
                      "psm": {"tau": "00111000", "active": "00000001"}},
            "coap": {"ack_timeout_ms": 300, "max_retransmit": 2},
            "sensors": dict(NODE_PINS),
        }
        if context is None:
            beside = self.root.parent.parent / "lender" / "device-contexts" / spec.name
            context = beside if beside.is_dir() else None
        self.context = read_parameters(context) if context is not None else None
        if self.context is None:
            self.config["insecure"] = True
        else:
            (self.root / NODE_CONTEXT).write_bytes(node_context_file(self.context))
        (self.root / "node.json").write_text(json.dumps(self.config))
        key = self.root / "node.key"
        key.write_bytes(self.seed)
        os.chmod(key, 0o600)
        self.mpy: Path | None = None
        self.reports: list[dict] = []
        self.log = ""

    def run(self, uart_path: str, cycles: list[dict], *, timeout: float = 300.0) -> list[dict]:
        """Run `cycles` (plans for node_cycles.py) in one MicroPython process; one result per cycle."""
        if self.mpy is None:
            self.mpy = compile_firmware(self.root.parent / f"{self.name}-mpy")
        plan = json.dumps({"root": str(self.root), "cycles": cycles})
        try:
            result = subprocess.run([tool("micropython"), "-X", f"heapsize={HEAPSIZE}", str(self.mpy / "run_cycles.py")],
                                    input=plan, capture_output=True, text=True, timeout=timeout,
                                    env=dict(os.environ, MICROPYPATH=str(self.mpy), PLEDGEWATCH_UART1=uart_path))
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"node {self.name}: {len(cycles)} cycle(s) did not finish within {timeout} s") from exc
        self.log += result.stderr
        lines = [line[len("CYCLE "):] for line in result.stdout.splitlines() if line.startswith("CYCLE ")]
        if result.returncode != 0 or len(lines) != len(cycles):
            raise BenchError(f"node {self.name} failed under MicroPython (exit {result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        done = [json.loads(line) for line in lines]
        self.reports += [c["report"] for c in done if c.get("report")]
        return done

    @property
    def head_seq(self) -> int:
        """The highest seq the node has used (from its cycle reports)."""
        return max((r.get("seq") or 0 for r in self.reports), default=0)

    @property
    def buffered(self) -> list[int]:
        """What the node still holds in its outbox after its last cycle."""
        return list(self.reports[-1].get("buffered", [])) if self.reports else []
