"""Fixtures for the provisioning tests: simulated MicroPython boards and modems on pseudo-terminals, a real lender."""
from __future__ import annotations

from pathlib import Path

import pytest

from hil.sim.rawrepl import RawReplSimulator

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_SOURCE = ROOT / "firmware" / "src"


@pytest.fixture
def board(tmp_path):
    """A simulated MicroPython board (real `micropython` behind a raw REPL on a pty), empty filesystem."""
    with RawReplSimulator(tmp_path / "board-fs", link=tmp_path / "ttyACM0") as simulated:
        yield simulated


import datetime as dt  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from hil.sim.modem import ModemSimulator  # noqa: E402
from hil.sim.onewire import OneWireTree  # noqa: E402
from lender.enrollment.technicians import TechnicianRegistry, lender_identity  # noqa: E402
from lender.evidence.store import SQLiteStore  # noqa: E402
from pledgewatch.cli import main as pledgewatch_main  # noqa: E402
from hil.processes import LenderProcess, free_udp_port  # noqa: E402
from provisioning.technician import TechnicianProfile, init_profile  # noqa: E402


@dataclass
class Site:
    """One installation under tmp_path: a lender (not started), a technician, a simulated modem and 1-Wire probe."""

    root: Path
    lender: LenderProcess
    profile: TechnicianProfile
    modem: ModemSimulator
    probe_tree: OneWireTree
    probe_id: str

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def var(self) -> Path:
        return self.root / "var"

    @property
    def site_file(self) -> Path:
        return self.root / "site.toml"

    def provision(self, *extra: str, device: str = "gw-0001") -> int:
        return pledgewatch_main(["provision", "gateway", "--device-id", device, "--modem", self.modem.path,
                                 "--asset-file", str(self.site_file), "--config-dir", str(self.etc),
                                 "--state-dir", str(self.var), "--profile", str(self.profile.path),
                                 "--user", "root", "--timeout", "3", *extra])

    def store(self) -> SQLiteStore:
        return SQLiteStore.open(self.lender.data, create=False)


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "lender"
    lender = LenderProcess(data, bind=f"127.0.0.1:{free_udp_port()}", log_path=tmp_path / "lender.log")
    profile, _ = init_profile(tmp_path / "laptop" / "technician.toml", "tech-ana", lender=lender.uri,
                              lender_key=lender_identity(data).public_key)
    TechnicianRegistry(data).add("tech-ana", profile.identity().public_key, "Ana")
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    (tmp_path / "site.toml").write_text(
        '[asset]\nid = "asset-7781"\nsite = "Warehouse 3, Mombasa Road"\n'
        'geofence = { lat = -1.3192, lon = 36.8581, radius_m = 150.0 }\n\n'
        f'[[sensors]]\nkind = "ds18b20"\nname = "temp"\ndevice_id = "{probe.device_id}"\n'
        f'base_dir = "{tree.devices_dir}"\ninterval_s = 1\n\n'
        '[[sensors]]\nkind = "contact"\nname = "tamper"\npin = 17\npull_up = false\nsettle_s = 0.02\n\n'
        '[uplink]\nbatch_interval = 1.0\nbackoff_initial = 0.2\nbackoff_cap = 1.0\nack_timeout = 0.5\n'
    )
    # the lender's staff keep the pledged asset's site record: an enrollment must name one
    lender_sites = data / "enroll" / "sites"
    lender_sites.mkdir(parents=True, exist_ok=True)
    (lender_sites / "asset-7781.toml").write_text((tmp_path / "site.toml").read_text())
    now = dt.datetime.now(dt.timezone.utc)
    with ModemSimulator("rm520n", link=tmp_path / "modem", network_time=now) as modem:
        yield Site(tmp_path, lender, profile, modem, tree, probe.device_id)
    lender.stop()


class AgentProcess:
    """`pledgewatch agent run --config ...` as a child process (GPIO on gpiozero's mock factory)."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
        self.process = subprocess.Popen([sys.executable, "-m", "pledgewatch", "agent", "run", "--config", str(config)],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            _, err = self.process.communicate()
        return err


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
