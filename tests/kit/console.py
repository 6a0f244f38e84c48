"""Helpers for the console's tests: a lender with a small portfolio in every state, a running console, staff accounts.

`ConsoleLender` is a `PledgeLender` (tests.kit.pledge: a real store, Ingest
with the lender's token key, site records) on the real clock, with a
site record that names the site and the borrower and fences the pledged
asset. `portfolio()` fills it with one story per state: a cold store whose
door alarm is open (ALARM) with a signed gap record nobody reviewed, a forklift
whose gateway went silent (SILENT), a pallet store that is fine (OK), and a
machine registered but never heard (NO DATA).

`RunningConsole` runs the real `lender.console.server.Console` under uvicorn
on 127.0.0.1 (port 0) in an event-loop thread of its own, like `lender web`.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from lender.console.accounts import Accounts
from lender.console.records import ConsoleRecords
from lender.console.server import Console, ConsoleConfig
from lender.enrollment import registration
from lender.enrollment.technicians import lender_identity
from telemetry.alarms import RAISED, SEVERITY, alarm_name
from telemetry.enrollment import binding_of
from telemetry.identity import Identity, P256Identity
from telemetry.manifest import HEARTBEAT_S, RULES
from telemetry.senml import Record
from tests.kit.pledge import ASSET, Gateway, PledgeLender, site_digest

PASSWORD = "correct horse battery"

SITE = """\
site = "Hamburg cold store 2"
borrower = "Nordfisk GmbH"

[[assets]]
name = "cold-store"
kind = "stock"
sensors = ["temp", "door", "gnss"]
access = ["mon-fri 07:00-18:00"]
temperature = { low = 2.0, high = 8.0, hold_s = 600 }
geofence = { lat = 53.5413, lon = 9.9836, radius_m = 300 }

[rules]
timezone = "Europe/Berlin"
silence_factor = 3.0
"""


def other_site(asset: str, site: str, borrower: str, kind: str) -> str:
    return (f'site = "{site}"\nborrower = "{borrower}"\n\n[[assets]]\nname = "{asset}"\nkind = "{kind}"\n'
            f'sensors = ["temp"]\n\n[rules]\ntimezone = "Europe/Berlin"\nsilence_factor = 3.0\n')


class ConsoleLender(PledgeLender):
    """A pledged lender on the real clock (the console judges with time.time())."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, now=time.time(), site=SITE)

    def tick(self, seconds: float = 0.0) -> float:
        self.now = time.time() + seconds
        return self.now

    def asset_gateway(self, name: str, asset: str, *, site: str, borrower: str, kind: str = "machine",
                      identity: Identity | P256Identity | None = None) -> Gateway:
        """A gateway for another pledged asset, with its own site record (and key: an Ed25519 one unless given)."""
        text = other_site(asset, site, borrower, kind)
        (self.data_dir / "enroll" / "sites" / f"{asset}.toml").write_text(text, "utf-8")
        gateway = Gateway(name, clock=lambda: self.now, rules=site_digest(text),
                          identity=identity or Identity.generate())
        registration.register(self.store, self.data_dir, name, gateway.identity.public_key, asset=asset,
                              with_oscore=False, now=self.now)
        gateway.binding = binding_of(lender_identity(self.data_dir).public_key, gateway.identity.public_key, asset)
        self.store.bind(name, gateway.binding)
        gateway.asset = asset
        return gateway

    def manifest(self, gateway: Gateway, asset: str, kind: str, sensors: str):
        t = self.now
        return gateway.sign([Record(f"asset.{asset}.kind", string=kind, time=t),
                             Record(f"asset.{asset}.sensors", string=sensors, time=t),
                             Record(HEARTBEAT_S, value=gateway.heartbeat_s, unit="s", time=t),
                             Record(RULES, string=gateway.rules, time=t)])

    def console_acks(self) -> list:
        """The acknowledgements the console kept (DATA/console.sqlite3)."""
        with ConsoleRecords.open(self.data_dir) as records:
            return records.acks()

    def portfolio(self) -> dict[str, Gateway]:
        """One asset per state; returns the gateways by name."""
        self.tick(-600)
        cold = self.gateway("gw-cold", rules=site_digest(SITE))
        t = self.now
        manifest = cold.sign([Record(f"asset.{ASSET}.kind", string="stock", time=t),
                              Record(f"asset.{ASSET}.sensors", string="temp,door,gnss", time=t),
                              Record(HEARTBEAT_S, value=cold.heartbeat_s, unit="s", time=t),
                              Record(RULES, string=cold.rules, time=t)])
        self.deliver(cold, manifest)
        for minute in range(8):
            self.tick(-600 + minute * 60)
            self.deliver(cold, cold.reading(3.0 + minute * 0.4),
                         cold.sign([Record("gnss.lat", value=53.5413 + minute * 0.0002, unit="lat", time=self.now),
                                    Record("gnss.lon", value=9.9836 + minute * 0.0003, unit="lon", time=self.now)]))
        self.tick()
        lost = cold.seq + 1
        cold.seq += 2  # two readings the spool dropped: they never come, and a signed gap record says so
        self.deliver(cold, cold.gap("overflow", lost, lost + 1))
        self.deliver(cold, cold.sign(cold_alarm(self.now)))

        forklift = self.asset_gateway("gw-forklift", "forklift-7", site="Bremen yard", borrower="Weser Logistik KG")
        self.tick(-7200)
        self.deliver(forklift, self.manifest(forklift, "forklift-7", "machine", "temp"), forklift.reading(12.0))

        pallets = self.asset_gateway("gw-pallets", "pallets-3", site="Hamburg cold store 2", borrower="Nordfisk GmbH",
                                     kind="stock")
        self.tick(-30)
        self.deliver(pallets, self.manifest(pallets, "pallets-3", "stock", "temp"), pallets.reading(4.0))

        self.asset_gateway("gw-press", "press-2", site="Kiel works", borrower="Ostsee Metall AG")
        self.tick()
        return {"gw-cold": cold, "gw-forklift": forklift, "gw-pallets": pallets}

    def machine(self) -> Gateway:
        """A machine on a scale that signs its weight and, as agent.rules' DailyUtilization, its run time per day.

        The weights are MILL_WEIGHTS, a minute apart; MILL_DAYS are the run seconds per local day, the last day
        signed twice (the newer figure is the one that counts: MILL_HOURS is what the console should show).
        """
        self.tick(-600)
        mill = self.asset_gateway("gw-mill", "mill-4", site="Kiel works", borrower="Ostsee Metall AG")
        self.deliver(mill, self.manifest(mill, "mill-4", "machine", "temp,weight"))
        for minute, kg in enumerate(MILL_WEIGHTS):
            t = self.tick(-540 + minute * 60)
            self.deliver(mill, mill.sign([Record("weight", value=kg, unit="kg", time=t)]))
        base = "utilization.mill-4"
        for n, (day, run_s, starts) in enumerate(MILL_DAYS):
            t = self.tick(-120 + n * 30)      # the last one 30 s ago: the machine is reporting, not silent
            self.deliver(mill, mill.sign([Record(f"{base}.day", string=day, time=t),
                                          Record(f"{base}.run", value=run_s, unit="s", time=t),
                                          Record(f"{base}.starts", value=starts, unit="count", time=t)]))
        self.tick()
        return mill


MILL_WEIGHTS = (1200.0, 1180.0, 1150.0)
MILL_DAYS = (("2026-12-03", 6 * 3600, 2), ("2026-12-04", 7.5 * 3600, 3), ("2026-12-05", 2 * 3600, 1),
             ("2026-12-05", 3 * 3600, 1))
MILL_HOURS = [["2026-12-03", 6.0], ["2026-12-04", 7.5], ["2026-12-05", 3.0]]


def cold_alarm(t: float, kind: str = "door", state: str = RAISED, detail: str = "door opened outside permitted hours"):
    name = alarm_name(kind, ASSET)
    return [Record(name, string=state, time=t), Record(f"{name}.severity", string=SEVERITY[kind], time=t),
            Record(f"{name}.sensors", string="door", time=t), Record(f"{name}.detail", string=detail, time=t)]


def add_user(data_dir: Path, name: str, role: str, password: str = PASSWORD) -> None:
    with ConsoleRecords.open(data_dir) as records:
        Accounts(records).add(name, role, password, now=time.time())


class RunningConsole:
    """The real console (uvicorn on 127.0.0.1, port 0) in an event-loop thread of its own."""

    def __init__(self, data_dir: Path, **options) -> None:
        options.setdefault("poll_s", 0.2)
        self.console = Console(ConsoleConfig(data_dir=data_dir, port=0, **options))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="console-test", daemon=True)

    def __enter__(self) -> RunningConsole:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.console.start(), self.loop).result(30)
        assert self.console.watcher is not None and self.console.watcher.ready.wait(30), "the first judgement"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.console.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return self.console.url.rstrip("/")

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "the console") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what} did not get there in {timeout} s"
            time.sleep(0.05)

