"""A lender as its own process on loopback, the way the demo, the benchmarks and the end-to-end tests run it.

It runs `pledgewatch lender serve` in a new session (so a terminal's Ctrl-C
reaches only its owner, which stops it), waits for its "serving" line, and
stops it with SIGTERM, then SIGKILL if it does not go.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from telemetry.identity import Identity


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pledgewatch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pledgewatch", *args]


class LenderProcess:
    """`pledgewatch lender serve --data DATA --bind 127.0.0.1:PORT` as a child process."""

    def __init__(self, data: Path, port: int | None = None, *, insecure: bool = False) -> None:
        self.data = Path(data)
        self.port = port or free_udp_port()
        self.insecure = insecure
        self.process: subprocess.Popen | None = None
        self.banner = ""

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    def register(self, device: str, identity: Identity, device_context: Path | None, *, asset: str | None = None) -> None:
        """Register `device` (and, unless `device_context` is None, create its OSCORE context pair there)."""
        command = pledgewatch_command("lender", "register", "--data", str(self.data), "--device", device,
                                      "--public-key", identity.public_key.hex())
        command += ["--oscore-out", str(device_context)] if device_context is not None else ["--no-oscore"]
        command += ["--asset", asset] if asset else []
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        """Start serving; returns once the lender says it serves, raises if it exits first."""
        command = pledgewatch_command("lender", "serve", "--data", str(self.data), "--bind", f"127.0.0.1:{self.port}")
        self.process = subprocess.Popen(command + (["--insecure"] if self.insecure else []), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        output = []
        for line in self.process.stdout:
            output.append(line)
            if "serving" in line:
                self.banner = line.rstrip()
                return
        code = self.process.wait()
        raise RuntimeError(f"the lender exited with code {code} before serving:\n{''.join(output)}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the whole process group, so nothing is left behind."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        finally:
            process.stdout.close()

    def __enter__(self) -> LenderProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
