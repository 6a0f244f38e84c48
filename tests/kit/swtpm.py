"""A software TPM 2.0 for tests: `swtpm` on two free TCP ports of 127.0.0.1, a fresh state directory, stopped after.

The TCTI string it hands out (``swtpm:host=127.0.0.1,port=P``) is what
`provision gateway --key-store tpm --tcti` and the agent's key store take; the
swtpm TCTI speaks the command channel on P and the control channel on P + 1,
so the two ports are chosen free together. `--flags startup-clear` makes the
TPM run TPM2_Startup itself, as firmware does on a real board.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def swtpm_available() -> bool:
    """Whether the Debian packages the TPM tests need are installed (swtpm; tpm2-pytss is the Python side)."""
    try:
        import tpm2_pytss  # noqa: F401
    except ImportError:
        return False
    return shutil.which("swtpm") is not None


def free_port_pair() -> int:
    """A port P with P and P + 1 both free on 127.0.0.1 (the swtpm TCTI's command and control ports)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free TCP ports on 127.0.0.1")


class Swtpm:
    """One running swtpm with its own state directory: `tcti` for clients, `stop()` (also on leaving a `with`)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port_pair()
        self.process = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._wait_listening()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"swtpm exited at start: {self.process.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port + 1), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("swtpm did not listen within 10 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Swtpm:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def manufacture(state_dir: Path, ca_dir: Path) -> list[Path]:
    """Make `state_dir` a TPM 'from the factory': `swtpm_setup --create-ek-cert` writes an RSA 2048 EK and its
    certificate (NV 0x01C00002), signed by a local test CA in `ca_dir` (swtpm_localca: a root and an issuing CA,
    made on first use and reused after) that stands in for a TPM manufacturer. The CA certificates to trust."""
    state_dir, ca_dir = Path(state_dir), Path(ca_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    (ca_dir / "localca.conf").write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\nissuercert = {ca_dir}/issuercert.pem\n"
        f"certserial = {ca_dir}/certserial\n")
    (ca_dir / "localca.options").write_text("--platform-manufacturer pledgewatch-tests\n--platform-version 2.1\n"
                                            "--platform-model swtpm\n")
    (ca_dir / "setup.conf").write_text(
        f"create_certs_tool = {shutil.which('swtpm_localca') or '/usr/bin/swtpm_localca'}\n"
        f"create_certs_tool_config = {ca_dir}/localca.conf\ncreate_certs_tool_options = {ca_dir}/localca.options\n"
        "active_pcr_banks = sha256\n")
    done = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state_dir), "--create-ek-cert",
                           "--config", str(ca_dir / "setup.conf"), "--overwrite"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"swtpm_setup failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    return [ca_dir / "issuercert.pem", ca_dir / "swtpm-localca-rootca-cert.pem"]


def manufacturing_available() -> bool:
    """Whether swtpm_setup and swtpm_localca (Debian's swtpm-tools) are installed."""
    return swtpm_available() and shutil.which("swtpm_setup") is not None and shutil.which("swtpm_localca") is not None
