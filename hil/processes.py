"""hil.processes — the bench's real processes: the lender, the agent, the socat bridge in front of a modem.

Each is a `ManagedProcess`: an argv started in its own session with its
output appended to a log file in the run directory (kept for the report),
stopped with SIGTERM (then SIGKILL after a grace period), or killed
outright. A power cut of the agent is `AgentProcess.power_cut()`: SIGKILL,
then the same command again.

The lender is driven only through its command line, like a lender's staff
would: `pledgewatch lender register`, `serve`, `devices --json`, `export`.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from hil.exc import BenchError

PLEDGEWATCH = (sys.executable, "-m", "pledgewatch")
_SERVING = re.compile(r"lender: serving coap://(\S+):(\d+)/t")
_CONSOLE = re.compile(r"^console: (http\S+)$", re.MULTILINE)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ('' if there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One child process of the rig, with its output in `log_path`."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self._copier: threading.Thread | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise BenchError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start #{self.starts + 1}: {' '.join(self.argv)}\n".encode())
        try:
            # Output through a pipe the rig copies into the log: the child's own file limits (a disk-full
            # quota on the agent) must not cost the log that explains what happened.
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                            start_new_session=True)
        except OSError as exc:
            raise BenchError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        self._copier = threading.Thread(target=_copy_output, args=(self.process.stdout, self.log_path),
                                        name=f"{self.name} log", daemon=True)
        self._copier.start()
        self.starts += 1

    def _wait(self, timeout: float) -> None:
        self.process.wait(timeout)
        if self._copier is not None:
            self._copier.join(5)
            self._copier = None

    def kill(self) -> None:
        """SIGKILL, no warning (a power cut); waits until it is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self._wait(10)

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not ended after `grace_s`; returns the exit code (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self._wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self._wait(10)
                raise BenchError(f"{self.name} ignored SIGTERM for {grace_s} s and was killed\n{self.log_tail()}") from None
        self._wait(10)
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)

    def check_alive(self) -> None:
        """Raise if the process ended on its own (a crash), with the end of its log."""
        if self.process is not None and self.process.poll() is not None:
            if self._copier is not None:
                self._copier.join(5)  # the last words, before they are quoted
            raise BenchError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")


def _copy_output(stream, log_path: Path) -> None:
    """Append a child's output to its log line by line until the child closes it."""
    with stream, open(log_path, "ab") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing uses right now (for a lender whose address must be known before it starts).

    Drawn below the kernel's ephemeral range: a port from bind(0) lies inside it, where any process's next client
    socket may take it before the lender binds it (seen in make test as "address already in use").
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free UDP port on 127.0.0.1 below the ephemeral range ({low})")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def run_cli(args: Sequence[str], *, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> str:
    """Run one `pledgewatch` command to completion and return its stdout; raise with its stderr if it fails."""
    argv = (*PLEDGEWATCH, *args)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`pledgewatch {' '.join(args)}` did not finish within {timeout} s") from exc
    if result.returncode != 0:
        raise BenchError(f"`pledgewatch {' '.join(args)}` failed with code {result.returncode}: "
                         f"{result.stderr.strip()[-2000:]}")
    return result.stdout


class LenderProcess(ManagedProcess):
    """`pledgewatch lender serve` on its data directory; `address` once it said it is serving."""

    def __init__(self, data: Path, *, bind: str = "127.0.0.1:0", insecure: bool = False, max_body: int | None = None,
                 log_path: Path, http: str | None = None) -> None:
        argv = [*PLEDGEWATCH, "lender", "serve", "--data", str(data), "--bind", bind]
        if http is not None:  # the web console in the same process (`console_url` once it serves)
            argv += ["--http", http]
        if insecure:
            argv.append("--insecure")
        if max_body is not None:
            argv += ["--max-body", str(max_body)]
        super().__init__("lender", argv, log_path=log_path)
        self.bind = bind
        self.data = Path(data)
        self.insecure = insecure
        self.address: tuple[str, int] | None = None
        self.console_url: str | None = None

    def register(self, device: str, public_key_hex: str, *, asset: str = "hil bench") -> Path | None:
        """Register the gateway's key; returns the device-side OSCORE context directory (None when insecure)."""
        args = ["lender", "register", "--data", str(self.data), "--device", device, "--public-key", public_key_hex,
                "--asset", asset]
        if self.insecure:
            args.append("--no-oscore")
        run_cli(args)
        return None if self.insecure else self.data / "device-contexts" / device

    def register_node(self, device: str, public_key_hex: str) -> Path | None:
        """Register an NB-IoT node with its OSCORE context (nodes POST to /n under OSCORE); returns the node's side
        (``DATA/device-contexts/<device>``, what `hil.node.SimulatedNode` writes into its node.oscore), None when
        the lender is insecure (the node then runs with "insecure": true)."""
        args = ["lender", "register", "--data", str(self.data), "--device", device, "--public-key", public_key_hex,
                "--asset", "hil bench node"]
        if self.insecure:
            args.append("--no-oscore")
        run_cli(args)
        return None if self.insecure else self.data / "device-contexts" / device

    def start(self, timeout: float = 30.0) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
            match = _SERVING.search(text)
            if match:
                self.address = (match.group(1).strip("[]"), int(match.group(2)))
                console = _CONSOLE.search(text)
                self.console_url = console.group(1) if console else None
                return
            if not self.running:
                break
            time.sleep(0.05)
        self.kill()
        raise BenchError(f"the lender did not start serving within {timeout} s:\n{self.log_tail()}")

    @property
    def uri(self) -> str:
        """coap://host:port of the lender: where it serves, or, before it has started, its fixed bind address."""
        if self.address is not None:
            return f"coap://{self.address[0]}:{self.address[1]}"
        host, _, port = self.bind.rpartition(":")
        if port == "0":
            raise BenchError("the lender binds port 0: its address is known once it serves, start() it first")
        return f"coap://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.uri.rpartition(":")[2])

    def __enter__(self) -> LenderProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def devices(self) -> list[dict]:
        return json.loads(run_cli(["lender", "devices", "--data", str(self.data), "--json"]))

    def readings(self, device: str) -> list[dict]:
        """The device's verified readings (`lender readings --json`): name, value, time (ISO 8601), seq, ..."""
        out = run_cli(["lender", "readings", "--data", str(self.data), "--device", device, "--json"])
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def export(self, device: str, path: Path) -> Path:
        """The lender's evidence export for `device` (jsonl: device, seq, envelope_b64, ...) into `path`."""
        run_cli(["lender", "export", "--data", str(self.data), "--device", device, "--format", "jsonl",
                 "--output", str(path)])
        return path


class AgentProcess(ManagedProcess):
    """The gateway agent (`pledgewatch agent run --config FILE`, or the env's command)."""

    def __init__(self, command: Sequence[str], config: Path, *, log_path: Path, env: Mapping[str, str]) -> None:
        argv = [arg.replace("{python}", sys.executable).replace("{config}", str(config)) for arg in command]
        super().__init__("agent", argv, log_path=log_path, env=env)
        self.config = config
        self.power_cuts = 0

    def power_cut(self, off_s: float = 0.0) -> None:
        """Cut the power: SIGKILL (nothing flushed, no clean shutdown), stay off `off_s`, then start again."""
        self.kill()
        self.power_cuts += 1
        if off_s:
            time.sleep(off_s)
        self.start()

    def status(self, config: Path | None = None) -> dict:
        """`pledgewatch agent status --json` (only while the agent is stopped: the spool is single-writer)."""
        if self.running:
            raise BenchError("agent status reads the spool, which the running agent holds; stop the agent first")
        return json.loads(run_cli(["agent", "status", "--config", str(config or self.config), "--json"], env=self.env))


class SocatBridge(ManagedProcess):
    """socat relaying a modem's pseudo-terminal to another pty path, as a USB serial adapter would appear."""

    def __init__(self, source: str, link: Path, *, log_path: Path) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise BenchError("socat is not installed (apt-get install socat)")
        argv = [socat, "-d", f"PTY,link={link},raw,echo=0", f"FILE:{source},raw,echo=0"]
        super().__init__("socat", argv, log_path=log_path)
        self.link = Path(link)
        self.source = source

    def retarget(self, source: str) -> None:
        self.source = source
        self.argv = (*self.argv[:-1], f"FILE:{source},raw,echo=0")

    def start(self, timeout: float = 10.0) -> None:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.link):
                return
            if not self.running:
                break
            time.sleep(0.02)
        self.kill()
        raise BenchError(f"socat did not create {self.link} within {timeout} s:\n{self.log_tail()}")
