"""A pledged site of real processes, where the borrower's attacks are played: the lender, a gateway, its agent.

    with PledgedSite(tmp_path) as site:
        site.provision()                 # `pledgewatch provision gateway --asset ...`: key, enrollment, agent.toml
        site.start_agent()               # `python -m pledgewatch agent run --config ...`, a child process
        site.wait_delivered()
        site.network.partition()         # the borrower cuts the uplink ...
        site.probe.set_celsius(30.0)     # ... while the stock warms: an alarm is signed and spooled
        ...
        assert {"gap", "alarm-lost"} <= site.risk_kinds()   # `pledgewatch lender status --json`

The parts, each the real thing where the product has one:

* the lender: `pledgewatch lender serve` (hil.processes.LenderProcess) on its data
  directory, holding the site record of the pledged asset (DATA/enroll/sites/<asset>.toml:
  the technician's site file, with the enrolled [[assets]] and [rules]) and a technician;
* the gateway: provisioned by `pledgewatch provision gateway --asset ID --no-modem`, which
  fetches that site record from the lender, makes the key, enrolls (the binding) and
  writes agent.toml; the agent runs as `python -m pledgewatch agent run --config FILE`
  with its spool and state on disk in `site.state_dir`;
* between them, the rig's UDP proxy (hil.netem): `site.network.partition()` / `heal()`;
* the sensors: a simulated DS18B20 (`site.probe`, hil.sim.onewire) and a door contact on
  GPIO 17 (gpiozero's MockFactory in the agent, driven through a file: `site.door(True)`);
* what else the borrower controls, through the child's test shim (tests/kit/agentshim):
  the gateway's wall clock (`clock_offset_s`) and whether its kernel says it is synchronized.

Everything is judged the way the lender's staff see it: `pledgewatch lender status --json`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hil.netem import UdpProxy
from hil.observer import read_lender, read_spool
from hil.processes import AgentProcess, LenderProcess, free_udp_port, run_cli
from hil.sim.onewire import OneWireTree
from lender.enrollment.technicians import TechnicianRegistry, lender_identity
from pledgewatch.cli import main as pledgewatch_main
from pledgewatch.demo import outside_now
from pledgewatch.demo import site_record as demo_site_record
from provisioning.technician import init_profile
from telemetry.envelope import decode

ASSET = "asset-7781"
STOCK = "cold-store"          # the [[assets]] entry the agent's rules judge
DOOR_PIN = 17
AGENT_COMMAND = ("{python}", "-m", "pledgewatch", "agent", "run", "--config", "{config}")
SHIM = Path(__file__).resolve().parent / "agentshim"
# a lab's timings: batches twice a second, a heartbeat every second, a lost exchange given up within ~2 s
UPLINK = {"batch_interval": 0.5, "heartbeat_s": 1.0, "backoff_initial": 0.2, "backoff_cap": 1.0,
          "ack_timeout": 0.5, "max_retransmit": 1, "exchange_deadline": 5.0}


def site_record(*, probe_id: str, onewire_dir: Path, access: str, hold_s: float = 0.0) -> str:
    """The technician's site file for the pledged asset, which is also the lender's site record: the demo's cold
    store (pledgewatch.demo.site_record) with its own asset id, a door (no tamper switch) on GPIO 17 and lab timings."""
    return demo_site_record(probe_id, onewire_dir, access, asset=ASSET, site="Warehouse 3, Mombasa Road",
                            contact="door", pin=DOOR_PIN, tamper=False, uplink=UPLINK, probe_every_s=1.0,
                            contact_every_s=5.0, hold_s=hold_s)


class Gateway:
    """One provisioned gateway: its config, state directory, and the agent process (started by the site)."""

    def __init__(self, site: PledgedSite, device: str, root: Path) -> None:
        self.site = site
        self.device = device
        self.config_dir = root / "etc"
        self.state_dir = root / "var"
        self.logs = root / "logs"
        self.pins_file = root / "gpio-pins"
        self.clock_file = root / "clock-offset"
        self.agent: AgentProcess | None = None

    @property
    def config(self) -> Path:
        return self.config_dir / "agent.toml"

    def edit_config(self, edit: Callable[[str], str]) -> None:
        """Change agent.toml as root on the gateway would (the borrower, or the test pointing it at the proxy)."""
        before = self.config.read_text()
        after = edit(before)
        assert after != before, "the edit changed nothing in agent.toml"
        self.config.write_text(after)

    def point_at(self, uri: str, security_context: Path | None = None) -> None:
        """[uplink] lender (and security_context) in agent.toml."""
        def edit(text: str) -> str:
            text = re.sub(r'(?m)^lender = ".*"$', f'lender = "{uri}"', text)
            if security_context is not None:
                text = re.sub(r'(?m)^security_context = ".*"', f'security_context = "{security_context}"', text)
            return text
        self.edit_config(edit)

    def start(self, *, clock_offset_s: float | None = None, kernel_synced: bool = False) -> AgentProcess:
        """`python -m pledgewatch agent run --config agent.toml` as a child; returns once its chain is resumed."""
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PLEDGEWATCH_TEST_PINS_FILE=str(self.pins_file),
                   PYTHONPATH=os.pathsep.join(p for p in (str(SHIM), os.environ.get("PYTHONPATH", "")) if p),
                   PYTHONUNBUFFERED="1")
        if clock_offset_s is not None:
            self.clock_file.write_text(f"{clock_offset_s!r}\n")
            env["PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE"] = str(self.clock_file)
        if kernel_synced:
            env["PLEDGEWATCH_TEST_KERNEL_SYNCED"] = "1"
        self.pins_file.unlink(missing_ok=True)  # the contact reads closed (pulled down) until the test opens it
        log_path = self.logs / "agent.log"
        offset = log_path.stat().st_size if log_path.exists() else 0  # one log for every start: read this one's
        self.agent = AgentProcess(AGENT_COMMAND, self.config, log_path=log_path, env=env)
        self.agent.start()
        self.wait(lambda: b"resuming after seq" in _read_from(log_path, offset), what="the agent to resume its chain")
        return self.agent

    def stop(self) -> None:
        """A clean stop (SIGTERM), as systemd stops the service."""
        if self.agent is not None:
            self.agent.stop()

    def unplug(self) -> None:
        """Power gone: SIGKILL, nothing flushed, no clean shutdown."""
        if self.agent is not None:
            self.agent.kill()

    def door(self, opened: bool) -> None:
        """Open or close the door contact (GPIO 17 high = open), seen by the running agent within ~50 ms."""
        temporary = self.pins_file.with_suffix(".new")
        temporary.write_text(f"{DOOR_PIN} {'high' if opened else 'low'}\n", "ascii")
        os.replace(temporary, self.pins_file)

    # --- what is on the gateway's disk ---

    @property
    def spool_file(self) -> Path:
        return self.state_dir / "spool.db"

    def spooled(self) -> tuple[int, int | None]:
        """(envelopes waiting in the spool, the chain head's seq); (0, None) while there is no spool."""
        return read_spool(self.state_dir) or (0, None)

    def _spool_rows(self, sql: str) -> list[tuple]:
        """The rows of a query on the spool, opened read-only (the agent may run); [] while there is no spool."""
        if not self.spool_file.exists():
            return []
        with _read_only(self.spool_file) as conn:
            return conn.execute(sql).fetchall()

    def spooled_alarms(self) -> list[int]:
        """The seqs in the spool's alarm table (alarms and gap records waiting to be sent)."""
        return [seq for seq, in self._spool_rows("SELECT seq FROM alarm ORDER BY seq")]

    def spooled_seqs(self) -> list[int]:
        """The seqs of every envelope waiting in the spool."""
        return [seq for seq, in self._spool_rows("SELECT seq FROM alarm UNION ALL SELECT seq FROM routine")]

    def spooled_records(self) -> list[tuple[int, str, object]]:
        """(seq, name, value) of every record in the spool's envelopes, by seq."""
        raws = self._spool_rows("SELECT raw FROM alarm UNION ALL SELECT raw FROM routine")
        envelopes = sorted((decode(raw) for raw, in raws), key=lambda e: e.seq)
        return [(e.seq, r.name, next((v for v in (r.string, r.value, r.boolean) if v is not None), None))
                for e in envelopes for r in e.records]

    def delete_spool(self) -> None:
        """What the borrower does with root: the spool database and its WAL gone (the agent stopped)."""
        assert self.agent is None or not self.agent.running, "stop the agent first"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.spool_file}{suffix}").unlink(missing_ok=True)

    def wipe_state(self) -> None:
        """Every file of the state directory gone: spool, state file, lender token, rules state."""
        assert self.agent is None or not self.agent.running, "stop the agent first"
        shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(mode=0o700)

    def refused(self) -> list[tuple[int, int]]:
        """(seq, the lender's reason code) of what the lender refused for good, from the spool (agent stopped)."""
        with _read_only(self.spool_file) as conn:
            return [tuple(row) for row in conn.execute("SELECT seq, reason FROM refused ORDER BY seq")]

    # --- waiting ---

    def wait(self, predicate: Callable[[], object], *, timeout: float = 30.0, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.agent is not None and self.agent.process is not None and self.agent.process.poll() is not None:
                raise AssertionError(f"the agent exited ({self.agent.process.returncode}) while waiting for {what}:\n"
                                     f"{self.agent.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{self.agent.log_tail()}")
            time.sleep(0.05)

    def wait_delivered(self, *, timeout: float = 30.0) -> int:
        """Wait until the lender holds every seq the agent had signed when this was called; returns that seq."""
        # Both: the lender holds the head, and the spool holds nothing up to it (acked ones leave it). The head
        # alone is not enough: batches go several in flight and an alarm goes first, so they arrive out of order.
        head = self.wait(lambda: self.spooled()[1], what="a chain head in the spool")
        self.wait(lambda: (self.site.lender_max_seq(self.device) or 0) >= head
                  and not any(seq <= head for seq in self.spooled_seqs()), timeout=timeout,
                  what=f"the lender to hold every seq up to {head} of {self.device}")
        return head

    def wait_spooled_alarm(self, *, after: int = 0) -> int:
        """Wait until an alarm envelope signed after seq `after` waits in the spool; returns its seq."""
        return self.wait(lambda: next((s for s in self.spooled_alarms() if s > after), None),
                         what="an alarm signed and spooled")

    def wait_token(self) -> bytes:
        """Wait until the agent holds a lender token (STATE/lender-token, written from an ack)."""
        path = self.state_dir / "lender-token"
        return self.wait(lambda: path.exists() and path.read_bytes(), what="a lender token at the gateway")


class PledgedSite:
    """The lender (started), a technician, the proxy; gateways provisioned on demand. A context manager."""

    def __init__(self, root: Path, *, access: str | None = None, hold_s: float = 0.0) -> None:
        self.root = Path(root)
        self.data = self.root / "lender"
        self.lender = LenderProcess(self.data, bind=f"127.0.0.1:{free_udp_port()}", log_path=self.root / "lender.log")
        self.profile, _ = init_profile(self.root / "laptop" / "technician.toml", "tech-ana", lender=self.lender.uri,
                                       lender_key=lender_identity(self.data).public_key)
        TechnicianRegistry(self.data).add("tech-ana", self.profile.identity().public_key, "Ana")
        self.onewire = OneWireTree(self.root / "w1")
        self.probe = self.onewire.add_ds18b20(celsius=4.5)
        self.site_text = site_record(probe_id=self.probe.device_id, onewire_dir=self.onewire.devices_dir,
                                     access=access or outside_now(), hold_s=hold_s)
        sites = self.data / "enroll" / "sites"
        sites.mkdir(parents=True, exist_ok=True)
        (sites / f"{ASSET}.toml").write_text(self.site_text)
        self.network: UdpProxy | None = None
        self.gateways: list[Gateway] = []

    def __enter__(self) -> PledgedSite:
        self.lender.start()
        self.network = UdpProxy(self.lender.address).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for gateway in self.gateways:
            if gateway.agent is not None:
                gateway.agent.kill()
        if self.network is not None:
            self.network.stop()
        self.lender.stop()

    @property
    def proxy_uri(self) -> str:
        return f"coap://127.0.0.1:{self.network.port}"

    def provision(self, device: str = "gw-0001", *, name: str | None = None, expect: int = 0) -> Gateway:
        """`pledgewatch provision gateway` for the pledged asset; the agent is then pointed at the proxy."""
        gateway = Gateway(self, device, self.root / (name or device))
        code = pledgewatch_main(["provision", "gateway", "--device-id", device, "--no-modem", "--asset", ASSET,
                                 "--config-dir", str(gateway.config_dir), "--state-dir", str(gateway.state_dir),
                                 "--profile", str(self.profile.path), "--user", "root", "--timeout", "5"])
        assert code == expect, f"provision gateway {device} exited {code}, expected {expect}"
        if code == 0:
            gateway.point_at(self.proxy_uri)
            self.gateways.append(gateway)
        return gateway

    # --- what the lender holds, and what its staff see ---

    def lender_max_seq(self, device: str) -> int | None:
        found = read_lender(self.data, device)
        return found[1] if found else None

    def status(self, device: str = "gw-0001", *, missed_heartbeats: float | None = None,
               data: Path | None = None) -> list[dict]:
        """`pledgewatch lender status --json` for `device`: one object per asset."""
        args = ["lender", "status", "--data", str(data or self.data), "--device", device, "--json"]
        if missed_heartbeats is not None:
            args += ["--missed-heartbeats", str(missed_heartbeats)]
        return json.loads(run_cli(args))

    def risk_kinds(self, device: str = "gw-0001", **options) -> set[str]:
        """The kinds of risk `lender status` names for `device` (each asset shows the device's risks)."""
        return {risk["kind"] for asset in self.status(device, **options) for risk in asset["risks"]}

    def review(self, device: str, seq: int, *, by: str = "J. Otieno", note: str = "looked at it") -> str:
        return run_cli(["lender", "review", "--data", str(self.data), "--device", device, "--seq", str(seq),
                        "--by", by, "--note", note])


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read()


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0))


def states(status: Sequence[dict]) -> set[str]:
    """The state of every asset in a `lender status --json` answer."""
    return {asset["state"] for asset in status}


def edit_spool(spool: Path, *statements: tuple[str, tuple]) -> None:
    """Run SQL on a stopped agent's spool with the sqlite3 module, as root with the sqlite3 tool would."""
    conn = sqlite3.connect(spool)
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()
