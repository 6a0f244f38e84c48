"""Demo: an agent with simulated sensors sends signed telemetry to a real lender on loopback, and you watch it arrive.

`pledgewatch demo` creates a throw-away directory, registers a demo gateway at a
lender (`pledgewatch lender register`, which also creates the OSCORE context
pair), starts that lender as its own process (`pledgewatch lender serve` on
127.0.0.1), and runs the agent with simulated hardware: a DS18B20 cold-store
probe on a simulated 1-Wire bus, a tamper lid and a machine's run input on
gpiozero mock pins. A short script warms the probe, runs the machine and opens
the lid. Every reading the lender has verified and stored is printed as it
arrives; at the end comes one summary line:

    demo: received=N verified=N rejected=N gaps=N

The lender also serves its web console (`lender serve --http 127.0.0.1:0`);
the demo prints its address as `console: http://HOST:PORT/` and a one-time
login link for an operator account `demo`. With `--serve` the lender and the
console keep running after the summary until Ctrl-C (`make demo DEMO_ARGS=--serve`).

Ctrl-C stops everything at any moment and leaves no process behind.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


DEVICE = "demo-gw-1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the agent samples (default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the demo's files in this directory")
    parser.add_argument("--serve", action="store_true",
                        help="after the summary, keep the lender and its web console running until Ctrl-C")
    parser.set_defaults(run=cmd_demo)


class Scenario:
    """What happens to the simulated hardware while the demo runs."""

    def __init__(self, probe, factory, lid_pin: int, run_pin: int, seconds: float) -> None:
        self.probe, self.factory, self.lid_pin, self.run_pin, self.seconds = probe, factory, lid_pin, run_pin, seconds

    async def play(self) -> None:
        lid, machine = self.factory.pin(self.lid_pin), self.factory.pin(self.run_pin)
        steps = [
            (0.15, "the machine starts", machine.drive_high),
            (0.35, "someone opens the tamper lid", lid.drive_high),
            (0.45, "the lid is shut again", lid.drive_low),
            (0.60, "the machine stops", machine.drive_low),
        ]
        start = time.monotonic()
        celsius = 3.0
        for fraction, what, action in steps:
            while time.monotonic() - start < fraction * self.seconds:
                celsius = round(celsius + 0.0625, 4)  # the cold store warms slowly (DS18B20 steps of 1/16 °C)
                self.probe.set_celsius(celsius)
                await asyncio.sleep(1.0)
            print(f"  >> scenario: {what}", flush=True)
            action()


class Printer:
    """Prints what the lender has stored, as it appears (read-only on the lender's SQLite file)."""

    def __init__(self, data: Path) -> None:
        from lender.evidence.store import SQLiteStore

        self.store = SQLiteStore.open(data, create=False)
        self.seen: set[tuple[int, int]] = set()

    def poll(self) -> None:
        fresh = [r for r in self.store.readings(DEVICE) if (r.seq, r.index) not in self.seen]
        for reading in sorted(fresh, key=lambda r: (r.seq, r.index)):
            self.seen.add((reading.seq, reading.index))
            value = next(v for v in (reading.value, reading.boolean, reading.string, reading.sum, "") if v is not None)
            if isinstance(value, float):
                value = f"{value:.3f}".rstrip("0").rstrip(".")
            stamp = time.strftime("%H:%M:%S", time.localtime(reading.time or reading.at))
            print(f"  {stamp}  {DEVICE}  seq {reading.seq:>4}  {reading.name:<22} {value!s:>7} {reading.unit or '':<4} verified",
                  flush=True)

    def summary(self) -> str:
        from lender.evidence.store import explain_gaps

        counts = self.store.counts()
        gaps = len(explain_gaps(self.store.missing_ranges(DEVICE), self.store.gap_records(DEVICE)))
        received = counts.envelopes + counts.quarantined + counts.quarantine_overflow
        rejected = counts.quarantined + counts.quarantine_overflow
        return f"demo: received={received} verified={counts.envelopes} rejected={rejected} gaps={gaps}"


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


async def _run(root: Path, seconds: float, serve: bool = False) -> str:
    from gpiozero.pins.mock import MockFactory

    from agent.daemon import Agent
    from agent.sensors import build_sensors
    from agent.spool import Spool
    from agent.state import AgentState
    from agent.uplink import Uplink, UplinkConfig
    from drivers.gpio import ContactConfig, RunHoursConfig
    from drivers.onewire import DS18B20Config
    from durable.keyfile import create_key
    from hil.processes import LenderProcess
    from hil.sim.onewire import OneWireTree
    from telemetry.identity import Identity

    lender_data, gateway = root / "lender", root / "gateway"
    gateway.mkdir(mode=0o700, parents=True)
    identity = Identity(create_key(gateway / "device.key"))
    lender = LenderProcess(lender_data, log_path=root / "lender.log", http="127.0.0.1:0")
    context = lender.register(DEVICE, identity.public_key.hex(), asset="cold store 2: pallets of frozen fish, contract LN-2026-0042")
    lender.start()
    print(f"lender: serving {lender.uri}/t over OSCORE, data in {lender_data}", flush=True)
    if lender.console_url:
        print(f"console: {lender.console_url}", flush=True)
        print(f"console login, once, within 15 min: {console_login(lender_data, lender.console_url)}", flush=True)
    spool = None
    try:
        tree = OneWireTree(root / "w1")
        probe = tree.add_ds18b20(celsius=3.0)
        factory = MockFactory()
        sensors = build_sensors([
            DS18B20Config("coldstore.temp", probe.device_id, base_dir=tree.devices_dir, interval_s=2),
            ContactConfig("coldstore.lid", 17, settle_s=0.02, interval_s=30),
            RunHoursConfig("forklift.run", 27, settle_s=0.05, interval_s=10),
        ], pin_factory=factory)
        factory.pin(17).drive_low()  # the lid starts shut
        spool = Spool.open(gateway / "spool.db")
        uplink = Uplink(UplinkConfig(lender=lender.uri, security_context=context,
                                     batch_interval=1.0), spool)
        agent = Agent(device=DEVICE, identity=identity, spool=spool, state=AgentState.open(gateway / "state.json"),
                      sensors=sensors, uplink=uplink)
        printer = Printer(lender_data)
        print(f"agent {DEVICE} (kid {identity.kid.hex()}) sampling for {seconds:g} s; "
              f"readings appear here once the lender has verified and stored them:", flush=True)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        await agent.started.wait()
        scenario = asyncio.create_task(Scenario(probe, factory, 17, 27, seconds).play())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not running.done():
            printer.poll()
            await asyncio.sleep(0.5)
        scenario.cancel()
        drain_until = time.monotonic() + 10  # let the uplink deliver what was sampled last
        while len(spool) and time.monotonic() < drain_until and not running.done():
            printer.poll()
            await asyncio.sleep(0.3)
        stop.set()
        await running
        printer.poll()
        if lender.console_url:
            print(f"console: {lender.console_url}", flush=True)
            print(f"console login, once, within 15 min: {console_login(lender_data, lender.console_url)}"
                  + ("" if serve else "  (the console stops with the demo: `make demo DEMO_ARGS=--serve` keeps it)"),
                  flush=True)
        if not serve:
            return printer.summary()
        print(printer.summary(), flush=True)
        print(f"demo: the lender and the console keep running (console: {lender.console_url}); "
              "Ctrl-C stops them", flush=True)
        await asyncio.Event().wait()  # until Ctrl-C cancels the task
        return ""
    finally:
        lender.stop()
        if spool is not None:
            spool.close()


def cmd_demo(args: argparse.Namespace) -> int:
    root = args.keep or Path(tempfile.mkdtemp(prefix="pledgewatch-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    if not args.verbose:  # the table is the output; the agent's own log lines only with -v
        logging.getLogger("agent").setLevel(logging.WARNING)
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
    finally:
        loop.close()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
