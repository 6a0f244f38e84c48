"""Demo: the story a lender pays for, played on loopback with simulated hardware, in six checked steps.

`pledgewatch demo` creates a throw-away directory with a lender (`pledgewatch
lender serve` as its own process, with its web console) that keeps the site
record of one pledged asset (a cold store: a DS18B20 probe on a simulated
1-Wire bus and a tamper lid on a gpiozero mock pin, access hours that do not
include now), and a gateway whose uplink runs through the rig's UDP proxy
(hil.netem), so the link can be cut. Then, narrated as it happens:

1. the gateway enrolls with the lender as a technician would (`provision
   gateway`, with a simulated Quectel RM520N answering on a pseudo-terminal),
   the agent starts and its readings arrive verified;
2. the lid opens outside the permitted hours: the lender shows the alarm as
   it arrives, and how long it took;
3. a forged envelope (the device's id and key id, signed by another key) is
   sent through the gateway's own channel: the lender refuses it and keeps it
   in quarantine;
4. the borrower's trick: the link is cut, the stock warms (an alarm is signed
   and spooled), the agent is stopped, its spool deleted, the agent restarted
   and the link healed: the lender shows the risk (gap, alarm-lost), not OK;
5. the gateway is unplugged: once its heartbeats stop, the asset turns silent;
6. `lender status` as its table, an evidence bundle exported and verified
   with only the lender's public key, and the console's address.

Each step checks its own outcome; one that does not come makes the demo exit 1
naming the step. The last line is always (on success)

    demo: received=N verified=N rejected=N gaps=N

With `--serve` the lender and the console keep running after the summary
until Ctrl-C (`make demo DEMO_ARGS=--serve`). Ctrl-C stops everything at any
moment and leaves no process behind.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEVICE = "demo-gw-1"
ASSET = "asset-0042"          # the pledge: the lender's site record DATA/enroll/sites/asset-0042.toml
STOCK = "cold-store"          # the [[assets]] entry the gateway's edge rules judge
LID_PIN = 17
HEARTBEAT_S = 1.0
UPLINK = {"batch_interval": 0.5, "heartbeat_s": HEARTBEAT_S, "backoff_initial": 0.2, "backoff_cap": 1.0,
          "ack_timeout": 0.5, "max_retransmit": 1, "exchange_deadline": 5.0}
WAIT_S = 45.0                 # the patience of every check (the machine may be busy)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="how long step 1 shows readings arriving (default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the demo's files in this directory")
    parser.add_argument("--serve", action="store_true",
                        help="after the summary, keep the lender and its web console running until Ctrl-C")
    parser.set_defaults(run=cmd_demo)


class StepFailed(Exception):
    """A step did not produce its outcome."""

    def __init__(self, step: int, title: str, what: str) -> None:
        super().__init__(f"step {step} ({title}) failed: {what}")


def say(text: str = "") -> None:
    print(text, flush=True)


def outside_now(now: float | None = None) -> str:
    """A daily access window (UTC) two hours wide, centred twelve hours from now: now is outside it."""
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC) + timedelta(hours=11)
    return f"daily {start:%H:%M}-{start + timedelta(hours=2):%H:%M}"


def site_record(probe_id: str, onewire_dir: Path, access: str, *, asset: str = ASSET,
                site: str = "Cold store 2, Mombasa Road: pallets of frozen fish, contract LN-2026-0042",
                contact: str = "lid", pin: int = LID_PIN, tamper: bool = True, uplink: dict | None = None,
                probe_every_s: float = 2.0, contact_every_s: float = 30.0, hold_s: float = 0.0) -> str:
    """The lender's site record of the pledged cold store (also what the technician's tool writes into agent.toml):
    a DS18B20 probe named temp, a contact (the tamper lid, or with tamper=False a plain door), 2-8 °C.

    The defaults are the demo's; the keywords are for tests/kit/pledged_site.py, which pledges a cold store too."""
    uplink_lines = "\n".join(f"{key} = {value!r}" for key, value in (UPLINK if uplink is None else uplink).items())
    tamper_line = f'tamper = ["{contact}"]\n' if tamper else ""
    return f"""\
[asset]
id = "{asset}"
site = "{site}"
geofence = {{ lat = -1.3192, lon = 36.8581, radius_m = 150.0 }}

[[sensors]]
kind = "ds18b20"
name = "temp"
device_id = "{probe_id}"
base_dir = "{onewire_dir}"
interval_s = {probe_every_s!r}

[[sensors]]
kind = "contact"
name = "{contact}"
pin = {pin}
pull_up = false
settle_s = 0.02
interval_s = {contact_every_s!r}

[uplink]
{uplink_lines}

[[assets]]
name = "{STOCK}"
kind = "stock"
sensors = ["temp", "{contact}"]
{tamper_line}access = ["{access}"]
temperature = {{ low = 2.0, high = 8.0, hold_s = {hold_s!r} }}

[rules]
timezone = "UTC"
"""


async def cli(*args: str, check: bool = True) -> tuple[int, str, str]:
    """One `pledgewatch` command as a child, awaited (the agent keeps running in this loop meanwhile)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "pledgewatch", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if check and process.returncode != 0:
        raise RuntimeError(f"`pledgewatch {' '.join(args)}` exited {process.returncode}: {err.decode()[-1500:]}")
    return process.returncode, out.decode(), err.decode()


class Gateway:
    """The gateway: its files on disk and the agent (agent.daemon.Agent in this process, over those files)."""

    def __init__(self, root: Path, factory) -> None:
        self.config_dir, self.state_dir = root / "etc", root / "var"
        self.factory = factory
        self.agent = self.task = self.stop_event = None
        self.parts: list = []

    @property
    def config(self) -> Path:
        return self.config_dir / "agent.toml"

    async def start(self) -> None:
        """What `pledgewatch agent run --config agent.toml` does, with the lid on gpiozero's mock factory."""
        from agent import config as agent_config
        from agent.cli import open_parts
        from agent.clock import TrustedClock
        from agent.daemon import Agent
        from agent.freshness import TOKEN_FILE, LenderTokens
        from agent.rules import RulesEngine, RulesStateFile, sensor_specs
        from agent.sensors import build_sensors
        from agent.uplink import Uplink

        config = agent_config.load(self.config)
        identity, spool, state = open_parts(config)
        sensors = build_sensors(config.sensors, pin_factory=self.factory)
        clock = TrustedClock()
        tokens = LenderTokens(config.device.state_dir / TOKEN_FILE, clock=clock)
        rules_state = RulesStateFile(config.device.state_dir / "rules.json")
        kinds = {cls: kind for kind, cls in agent_config.SENSOR_KINDS.items()}
        rules = RulesEngine(config.assets, sensor_specs(config.sensors, kinds), config.rules, start=clock.now(),
                            restore=rules_state.load())
        self.agent = Agent(device=config.device.id, identity=identity, spool=spool, state=state, sensors=sensors,
                           uplink=Uplink(config.uplink, spool, tokens=tokens, receipts=state), rules=rules,
                           trusted_clock=clock, rules_state=rules_state, tokens=tokens,
                           binding=config.device.binding_bytes, heartbeat_s=config.uplink.heartbeat_s,
                           rules_digest=config.rules_digest)
        self.parts = [spool, *sensors]
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self.stop_event))
        started = asyncio.create_task(self.agent.started.wait())
        await asyncio.wait({started, self.task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            if self.task.done():
                self.task.result()  # raises what stopped the agent
            raise RuntimeError("the agent did not start")

    async def stop(self) -> None:
        """The agent stops (SIGTERM, as systemd stops it, or the power goes); its files stay as they are."""
        if self.task is None:
            return
        self.stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 20)
        except TimeoutError:
            self.task.cancel()
            with _suppress():
                await self.task
        finally:
            self.task = None
            for part in self.parts:
                if hasattr(part, "close"):
                    with _suppress():
                        part.close()
            self.parts = []

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def spool_head(self) -> int | None:
        from hil.observer import read_spool

        found = read_spool(self.state_dir)
        return found[1] if found else None

    def spooled_alarms(self) -> list[int]:
        import sqlite3

        path = self.state_dir / "spool.db"
        if not path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
            try:
                return [seq for seq, in conn.execute("SELECT seq FROM alarm ORDER BY seq")]
            finally:
                conn.close()
        except sqlite3.Error:
            return []

    def delete_spool(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.state_dir / 'spool.db'}{suffix}").unlink(missing_ok=True)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, Exception)


class Lender:
    """What the lender holds, read the way its staff read it (its store read-only; `lender status --json`)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self._store = None
        self.seen: set[tuple[int, int]] = set()

    @property
    def store(self):
        if self._store is None:
            from lender.evidence.store import SQLiteStore
            self._store = SQLiteStore.open(self.data, create=False)
        return self._store

    def max_seq(self) -> int | None:
        from hil.observer import read_lender

        found = read_lender(self.data, DEVICE)
        return found[1] if found else None

    def print_new_readings(self, names: tuple[str, ...] | None = None) -> int:
        fresh = [r for r in self.store.readings(DEVICE) if (r.seq, r.index) not in self.seen]
        shown = 0
        for reading in sorted(fresh, key=lambda r: (r.seq, r.index)):
            self.seen.add((reading.seq, reading.index))
            if names is not None and reading.name not in names:
                continue
            value = next(v for v in (reading.value, reading.boolean, reading.string, reading.sum, "") if v is not None)
            if isinstance(value, float):
                value = f"{value:.3f}".rstrip("0").rstrip(".")
            stamp = time.strftime("%H:%M:%S", time.localtime(reading.time or reading.at))
            say(f"    {stamp}  {DEVICE}  seq {reading.seq:>4}  {reading.name:<6} {value!s:>7} {reading.unit or '':<4} "
                "verified")
            shown += 1
        return shown

    def mark_all_seen(self) -> None:
        self.seen.update((r.seq, r.index) for r in self.store.readings(DEVICE))

    def alarms(self):
        from lender.evidence.alarms import alarm_events

        return alarm_events(self.store, DEVICE)

    async def status(self) -> list[dict]:
        import json

        _, out, _ = await cli("lender", "status", "--data", str(self.data), "--device", DEVICE, "--json")
        return json.loads(out)

    def summary(self) -> str:
        from lender.evidence.store import explain_gaps

        counts = self.store.counts()
        gaps = len(explain_gaps(self.store.missing_ranges(DEVICE), self.store.gap_records(DEVICE)))
        received = counts.envelopes + counts.quarantined + counts.quarantine_overflow
        rejected = counts.quarantined + counts.quarantine_overflow
        return f"demo: received={received} verified={counts.envelopes} rejected={rejected} gaps={gaps}"

    def close(self) -> None:
        if self._store is not None:
            with _suppress():
                self._store.close()


async def until(predicate, step: int, title: str, what: str, timeout: float | None = None, every: float = 0.25,
                gateway: Gateway | None = None):
    """Poll `predicate` (sync or async) until it gives something true; StepFailed after `timeout` (WAIT_S)."""
    timeout = WAIT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if gateway is not None and gateway.task is not None and gateway.task.done():
            error = gateway.task.exception()
            raise StepFailed(step, title, f"the agent stopped while waiting for {what}: {error!r}")
        if time.monotonic() > deadline:
            raise StepFailed(step, title, f"no {what} within {timeout:g} s")
        await asyncio.sleep(every)


def console_login(data: Path, console_url: str) -> str:
    """A one-time login link for an operator account `demo` (made with a random password nobody needs)."""
    import secrets

    from lender.console.accounts import Accounts
    from lender.console.records import ConsoleRecords

    with ConsoleRecords.open(data) as records:
        accounts = Accounts(records)
        if accounts.user("demo") is None:
            accounts.add("demo", "operator", secrets.token_urlsafe(24), now=time.time())
        return console_url.rstrip("/") + "/login/once/" + accounts.login_link("demo", now=time.time())


def _risk_kinds(status: list[dict]) -> set[str]:
    return {risk["kind"] for asset in status for risk in asset["risks"]}


async def _run(root: Path, seconds: float, serve: bool = False) -> str:
    from gpiozero.pins.mock import MockFactory

    from hil.netem import UdpProxy
    from hil.processes import LenderProcess, free_udp_port
    from hil.sim.modem import ModemSimulator
    from hil.sim.onewire import OneWireTree
    from lender.enrollment.technicians import TechnicianRegistry, lender_identity
    from provisioning.technician import init_profile

    data = root / "lender"
    lender = LenderProcess(data, bind=f"127.0.0.1:{free_udp_port()}", log_path=root / "lender.log",
                           http="127.0.0.1:0")
    lender_key = lender_identity(data).public_key
    profile, _ = init_profile(root / "laptop" / "technician.toml", "tech-ana", lender=lender.uri,
                              lender_key=lender_key)
    TechnicianRegistry(data).add("tech-ana", profile.identity().public_key, "Ana Wanjiru")
    tree = OneWireTree(root / "w1")
    probe = tree.add_ds18b20(celsius=3.0)
    access = outside_now()
    sites = data / "enroll" / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / f"{ASSET}.toml").write_text(site_record(probe.device_id, tree.devices_dir, access))
    factory = MockFactory()
    factory.pin(LID_PIN).drive_low()  # the lid starts shut
    gateway = Gateway(root / "gateway", factory)
    view = Lender(data)
    proxy = None
    at = [0, "starting the lender"]
    try:
        try:
            lender.start()
            proxy = UdpProxy(lender.address).start()
            uplink_uri = f"coap://127.0.0.1:{proxy.port}"
            say(f"lender: serving {lender.uri}/t over OSCORE, data in {data}")
            say(f"lender: site record for {ASSET} (a cold store, tamper lid, 2-8 °C, access hours {access} UTC)")
            say(f"gateway {DEVICE}: its uplink to the lender runs through a UDP proxy at {uplink_uri} "
                "(so the demo can cut it)")

            # --- 1 ---
            at[:] = 1, "enrollment"
            title = "enrollment"
            say("")
            say("step 1/6: a technician installs the gateway and enrolls it with the lender")
            with ModemSimulator("rm520n", link=root / "modem", network_time=datetime.now(UTC)) as modem:
                result = await _provision(gateway, profile, lender_key, uplink_uri, str(modem.path))
            if result.enrollment != "enrolled":
                raise StepFailed(1, title, f"the gateway is {result.enrollment}, not enrolled: {result.notes}")
            say(f"  gateway {result.device}: key {result.kid}, enrolled for {ASSET} (binding {result.binding}); "
                f"modem {result.modem['manufacturer']} {result.modem['model']}, IMEI {result.modem['imei']}")
            await gateway.start()
            say(f"  agent {DEVICE} sampling for {seconds:g} s; readings appear once the lender has verified "
                "and stored them:")
            deadline = time.monotonic() + seconds
            shown = 0
            while time.monotonic() < deadline or shown < 2:
                shown += view.print_new_readings(("temp", "lid"))
                if time.monotonic() > deadline + WAIT_S:
                    raise StepFailed(1, title, f"only {shown} verified reading(s) within {seconds + WAIT_S:g} s")
                await asyncio.sleep(0.5)
            say(f"  OK: {shown} readings arrived, each signature and chain link verified by the lender")

            # --- 2 ---
            at[:] = 2, "alarm outside hours"
            title = "alarm outside hours"
            say("")
            say(f"step 2/6: someone opens the tamper lid at {time.strftime('%H:%M:%S', time.gmtime())} UTC, "
                f"outside the permitted hours ({access})")
            known = {(a.seq, a.name) for a in view.alarms()}
            opened_at = time.time()
            factory.pin(LID_PIN).drive_high()
            alarm = await until(lambda: next((a for a in view.alarms() if (a.seq, a.name) not in known
                                              and a.kind == "tamper" and a.state == "raised"), None),
                                2, title, "tamper alarm at the lender", gateway=gateway)
            say(f"  lender: ALARM {alarm.name} (severity {alarm.severity or '-'}, seq {alarm.seq}) stored "
                f"{alarm.received_at - opened_at:.2f} s after the lid opened (signed on the gateway "
                f"{max(0.0, (alarm.time or opened_at) - opened_at):.2f} s after)")
            factory.pin(LID_PIN).drive_low()
            cleared = await until(lambda: next((a for a in view.alarms() if a.name == alarm.name and a.seq > alarm.seq
                                                and a.state != "raised"), None),
                                  2, title, "the tamper alarm's clear once the lid was shut", gateway=gateway)
            say(f"  the lid is shut again: the lender shows the alarm {cleared.state} (seq {cleared.seq}); "
                "both stay in the evidence")

            # --- 3 ---
            at[:] = 3, "forgery refused"
            title = "forgery refused"
            say("")
            say("step 3/6: the borrower sends a forged envelope (the gateway's id and key id, signed by another key) "
                "through the gateway's own channel")
            await until(lambda: (view.max_seq() or -1) >= (gateway.spool_head() or 0), 3, title,
                        "delivery of what the gateway had signed", gateway=gateway)
            await gateway.stop()
            seq, reason = await _send_forgery(gateway, view)
            entry = await until(lambda: next((q for q in view.store.quarantined(50, device=DEVICE)
                                              if q.seq == seq), None),
                                3, title, "forged envelope in the lender's quarantine")
            say(f"  lender: REFUSED seq {seq} ({reason}), kept in quarantine: {entry.reason.name.lower()}"
                + (f", {entry.detail}" if entry.detail else ""))
            if view.store.envelope(DEVICE, seq) is not None:
                raise StepFailed(3, title, f"the lender stored the forged seq {seq}")
            await gateway.start()
            await until(lambda: (view.max_seq() or -1) >= seq, 3, title,
                        f"the genuine seq {seq} stored after the agent restarted", gateway=gateway)
            say(f"  the gateway's genuine seq {seq} is stored; the forgery stays refused")

            # --- 4 ---
            at[:] = 4, "hidden gap caught"
            title = "hidden gap caught"
            say("")
            say("step 4/6: the borrower's trick")
            view.mark_all_seen()
            head = await until(gateway.spool_head, 4, title, "a chain head in the spool", gateway=gateway)
            await until(lambda: (view.max_seq() or -1) >= head, 4, title, "delivery before the cut", gateway=gateway)
            proxy.partition()
            say("  the uplink is cut")
            probe.set_celsius(30.0)
            alarm_seq = await until(lambda: next((s for s in gateway.spooled_alarms() if s > head), None), 4, title,
                                    "temperature alarm signed and spooled", gateway=gateway)
            say(f"  the stock warms to 30 °C: the gateway signs an alarm (seq {alarm_seq}), spooled, the link is down")
            await gateway.stop()
            probe.set_celsius(3.0)
            gateway.delete_spool()
            say("  the agent is stopped, its spool deleted (with the unsent alarm), the stock cooled, "
                "the agent restarted:")
            say("  (it finds its chain head gone and signs a spool-reset gap record over what it cannot account for)")
            await gateway.start()
            proxy.heal()
            say("  the link returns")
            restart_head = await until(gateway.spool_head, 4, title, "a chain head after the restart", gateway=gateway)
            await until(lambda: (view.max_seq() or -1) >= restart_head, 4, title, "delivery after the link returned",
                        gateway=gateway)
            if view.store.envelope(DEVICE, alarm_seq) is not None:
                raise StepFailed(4, title, f"the deleted alarm seq {alarm_seq} reached the lender after all")
            status = await until(lambda: _when_risks(view, {"gap", "alarm-lost"}), 4, title,
                                 "gap and alarm-lost risks in `lender status`", gateway=gateway)
            states = {asset["state"] for asset in status}
            if "OK" in states:
                raise StepFailed(4, title, f"the lender still shows OK: {status}")
            say(f"  lender: {'/'.join(sorted(states))}, not OK:")
            for risk in sorted({(r["kind"], r["detail"]) for a in status for r in a["risks"]
                                if r["kind"] in ("gap", "alarm-lost")}):
                say(f"    {risk[0]}: {risk[1]}")

            # --- 5 ---
            at[:] = 5, "silence"
            title = "silence"
            say("")
            say(f"step 5/6: the gateway is unplugged (it sent a heartbeat at least every {HEARTBEAT_S:g} s)")
            await gateway.stop()
            unplugged = time.monotonic()
            status = await until(lambda: _when_risks(view, {"silent"}), 5, title, "`silent` in `lender status`",
                                 every=0.5)
            silent = next(r for a in status for r in a["risks"] if r["kind"] == "silent")
            say(f"  lender: silent after {time.monotonic() - unplugged:.1f} s: {silent['detail']}")

            # --- 6 ---
            at[:] = 6, "the evidence"
            title = "the evidence"
            say("")
            say("step 6/6: what the lender holds, and the proof for a third party")
            _, table, _ = await cli("lender", "status", "--data", str(data), "--device", DEVICE)
            say(f"  $ pledgewatch lender status --device {DEVICE}")
            for line in table.rstrip().splitlines():
                say(f"    {line}")
            _, key_out, _ = await cli("lender", "key", "--data", str(data))
            public = key_out.strip().split()[0]
            bundle = root / f"{DEVICE}.bundle.json"
            await cli("lender", "export", "--data", str(data), "--device", DEVICE, "--format", "bundle",
                      "--output", str(bundle))
            say(f"  $ pledgewatch lender export --device {DEVICE} --format bundle --output {bundle.name}"
                f"   ({bundle.stat().st_size:,} bytes)")
            code, out, err = await cli("lender", "verify", str(bundle), "--lender-key", public, check=False)
            say(f"  $ pledgewatch lender verify {bundle.name} --lender-key {public}")
            for line in (out + err).rstrip().splitlines()[-8:]:
                say(f"    {line}")
            if code != 0:
                raise StepFailed(6, title, f"the bundle did not verify with the lender's public key (exit {code})")
            say("  OK: verified with nothing but the bundle and the lender's public key")
            if lender.console_url:
                say(f"console: {lender.console_url}")
                say(f"console login, once, within 15 min: {console_login(data, lender.console_url)}"
                    + ("" if serve else "  (the console stops with the demo: `make demo DEMO_ARGS=--serve` keeps it)"))
            if not serve:
                return view.summary()
            say(view.summary())
            say(f"demo: the lender and the console keep running (console: {lender.console_url}); Ctrl-C stops them")
            await asyncio.Event().wait()  # until Ctrl-C cancels the task
            return ""
        except StepFailed:
            raise
        except Exception as exc:  # anything unforeseen still names the step it broke
            raise StepFailed(at[0], at[1], f"{type(exc).__name__}: {exc}") from exc
    finally:
        try:
            await gateway.stop()
        finally:
            view.close()
            if proxy is not None:
                proxy.stop()
            lender.stop()


async def _when_risks(view: Lender, wanted: set[str]):
    status = await view.status()
    return status if wanted <= _risk_kinds(status) else None


async def _provision(gateway: Gateway, profile, lender_key: bytes, uplink_uri: str, modem_port: str):
    """`pledgewatch provision gateway --asset ASSET --modem PORT --profile ...`, run on the gateway."""
    from provisioning import gateway as provision
    from provisioning.install import Owner

    site = await provision.fetch_site(uplink_uri, ASSET, lender_key, profile, timeout=10)
    plan = provision.GatewayPlan(
        device=DEVICE, binding=site.binding, lender=uplink_uri, lender_key=lender_key,
        config_dir=gateway.config_dir, state_dir=gateway.state_dir, modem_port=modem_port, sensors=site.sensors,
        uplink=site.uplink, assets=site.assets, rules=site.rules, technician=profile,
        owner=Owner.of(pwd.getpwuid(os.geteuid()).pw_name), timeout=10,
    )
    return await provision.provision_gateway(plan, lambda text: say(f"  provision: {text}"))


async def _send_forgery(gateway: Gateway, view: Lender) -> tuple[int, str]:
    """The next envelope of the gateway's chain, looking right in every field, signed by a key that is not its own."""
    from types import SimpleNamespace

    from agent import config as agent_config
    from agent.spool import Spool
    from agent.uplink import Uplink
    from telemetry.envelope import Reason, decode, seal
    from telemetry.identity import Identity
    from telemetry.senml import Record

    stored = view.store.envelope(DEVICE, view.max_seq())  # the newest the lender holds: the forger's template
    last = decode(stored.raw)
    other = Identity.generate()
    impostor = SimpleNamespace(kid=last.kid, sign=other.sign, algorithm=getattr(other, "algorithm", None))
    records = (Record(name="temp", value=3.0, unit="Cel", time=time.time()),)
    forged = seal(impostor, device=DEVICE, boot=last.boot, seq=last.seq + 1, prev=last.digest, records=records,
                  counters=last.counters.after(records, None) if last.counters is not None else None,
                  token=last.token, binding=last.binding)
    config = agent_config.load(gateway.config)
    forgery_dir = gateway.config_dir.parent / "forgery"
    forgery_dir.mkdir(exist_ok=True)
    with Spool.open(forgery_dir / "spool.db") as spool:
        spool.append(forged)
        async with Uplink(config.uplink, spool) as uplink:
            for _ in range(10):
                exchange = await uplink.send_once()
                if exchange.set_aside:
                    refusal = exchange.set_aside[0]
                    return refusal.seq, Reason(refusal.reason).name.lower()
                await asyncio.sleep(0.5)
    raise StepFailed(3, "forgery refused", "the lender did not answer the forged envelope with a refusal")


def cmd_demo(args: argparse.Namespace) -> int:
    root = args.keep or Path(tempfile.mkdtemp(prefix="pledgewatch-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    if not args.verbose:  # the story is the output; the agent's own log lines only with -v
        logging.getLogger().setLevel(logging.WARNING)
        for name in ("agent", "hil"):  # the demo narrates what they would log (the refusal, the spool reset)
            logging.getLogger(name).setLevel(logging.CRITICAL)
        for name in ("coap", "aiocoap"):  # the link cut on purpose makes the CoAP library grumble
            logging.getLogger(name).setLevel(logging.ERROR)
    started = time.monotonic()
    loop = asyncio.new_event_loop()
    task = loop.create_task(_run(root, args.seconds, args.serve))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        print(loop.run_until_complete(task))
        return 0
    except asyncio.CancelledError:
        print("demo: stopped by the user; everything it started has stopped", file=sys.stderr)
        return 0 if args.serve else 130
    except StepFailed as exc:
        print(f"demo: {exc} (after {time.monotonic() - started:.0f} s; files in {root})" if args.keep else
              f"demo: {exc} (after {time.monotonic() - started:.0f} s)", flush=True)
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
