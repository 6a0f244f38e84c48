"""A pledged site for the risk tests: a version 2 gateway that signs like the agent, and the lender that judges it.

`Gateway` seals envelopes exactly as agent.recorder does (seq, prev, signed
counters that only go up, the newest lender token it was given, its
enrollment binding); its wall clock is the lender's unless a test makes it
lie. `PledgeLender` is the real thing on disk: a `SQLiteStore`, an `Ingest`
with the lender's token key (DATA/token.key), the site record of the pledged
asset (DATA/enroll/sites/<asset>.toml), and its CLI in a subprocess. Each ack
goes back through `telemetry.ack.Ack.decode`, so the gateway only ever holds
tokens the lender really issued.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lender.enrollment import registration
from lender.enrollment.technicians import lender_identity
from lender.evidence.alarms import AssetStatus, asset_status
from lender.evidence.ingest import Ingest
from lender.evidence.risks import Judge, Risk, device_risks
from lender.evidence.store import SQLiteStore
from lender.evidence.tokens import token_key
from telemetry.ack import Ack
from telemetry.alarms import CLEARED, RAISED, SEVERITY, alarm_name
from telemetry.enrollment import binding_of
from telemetry.envelope import GENESIS, Counters, Envelope, Gap, seal
from telemetry.identity import Identity
from telemetry.manifest import HEARTBEAT, HEARTBEAT_S, RULES, rules_digest
from telemetry.senml import Record
from tests.kit.lender import batch, free_environment

ASSET = "cold-store"
SENSORS = ("temp", "door")
START = 1_780_000_000.0   # the lender's clock at the start of a story (2026)

SITE_RECORD = """\
[[assets]]
name = "cold-store"
kind = "stock"
sensors = ["temp", "door"]
access = ["mon-fri 07:00-18:00"]
temperature = { low = 2.0, high = 8.0, hold_s = 600 }

[rules]
timezone = "Europe/Berlin"
silence_factor = 3.0
"""


def site_digest(text: str = SITE_RECORD) -> str:
    """The rules digest of a site record's [[assets]] and [rules], as the agent computes it from its config."""
    data = tomllib.loads(text)
    return rules_digest(data["assets"], data["rules"])


@dataclass
class Gateway:
    """A version 2 gateway's signing state: chain, boot, counters, the newest token, the binding."""

    name: str
    clock: object                       # () -> float: the device's wall clock
    identity: Identity = field(default_factory=Identity.generate)
    boot: int = 1
    seq: int = 0
    prev: bytes = GENESIS
    counters: Counters = field(default_factory=lambda: Counters(0, 0))
    token: bytes | None = None
    binding: bytes | None = None
    heartbeat_s: float = 60.0
    rules: str = field(default_factory=site_digest)

    def sign(self, records=(), gap: Gap | None = None, *, seq: int | None = None, prev: bytes | None = None,
             counters: Counters | None = None, token: bytes | None = None) -> Envelope:
        """The next envelope of the chain; a keyword given overrides what an honest agent would sign."""
        records = tuple(records)
        envelope = seal(self.identity, device=self.name, boot=self.boot,
                        seq=self.seq + 1 if seq is None else seq, prev=self.prev if prev is None else prev,
                        records=records, gap=gap,
                        counters=self.counters.after(records, gap) if counters is None else counters,
                        token=self.token if token is None else token, binding=self.binding)
        self.seq, self.prev, self.counters = envelope.seq, envelope.digest, envelope.counters
        return envelope

    def manifest(self) -> Envelope:
        t = self.clock()
        return self.sign([Record(f"asset.{ASSET}.kind", string="stock", time=t),
                          Record(f"asset.{ASSET}.sensors", string=",".join(SENSORS), time=t),
                          Record(HEARTBEAT_S, value=self.heartbeat_s, unit="s", time=t),
                          Record(RULES, string=self.rules, time=t)])

    def reading(self, celsius: float = 4.5, *, time: float | None = None) -> Envelope:
        return self.sign([Record("temp", value=celsius, unit="Cel", time=self.clock() if time is None else time)])

    def alarm(self, state: str = RAISED, kind: str = "door") -> Envelope:
        name, t = alarm_name(kind, ASSET), self.clock()
        return self.sign([Record(name, string=state, time=t), Record(f"{name}.severity", string=SEVERITY[kind], time=t),
                          Record(f"{name}.sensors", string="door", time=t)])

    def door_opened_and_closed(self) -> list[Envelope]:
        return [self.alarm(RAISED), self.alarm(CLEARED)]

    def heartbeat(self) -> Envelope:
        return self.sign([Record(HEARTBEAT, value=self.heartbeat_s, unit="s", time=self.clock())])

    def gap(self, reason: str, first: int | None = None, last: int | None = None, **account) -> Envelope:
        count = None if first is None else last - first + 1
        return self.sign(gap=Gap(reason, first, last, count, **account))

    def reboot(self) -> Envelope:
        """An ordinary restart: the boot counter goes up, chain and counters continue, the manifest is signed again."""
        self.boot += 1
        return self.manifest()

    def hear(self, ack: Ack) -> None:
        if ack.token is not None:
            self.token = ack.token


class PledgeLender:
    """A lender on disk with one pledged asset and its site record; its clock is `now`, moved by the test."""

    def __init__(self, data_dir: Path, *, now: float = START, site: str = SITE_RECORD) -> None:
        self.data_dir = data_dir
        self.now = now
        self.store = SQLiteStore.open(data_dir)
        self.token_key = token_key(data_dir)
        self.ingest = Ingest(self.store, clock=lambda: self.now, token_key=self.token_key)
        sites = data_dir / "enroll" / "sites"
        sites.mkdir(parents=True, exist_ok=True)
        (sites / f"{ASSET}.toml").write_text(site, "utf-8")

    def close(self) -> None:
        self.store.close()

    def gateway(self, name: str = "gw-1", *, bound: bool = True, **options) -> Gateway:
        """A gateway registered for the pledged asset, bound to this lender's enrollment unless `bound` is False."""
        gateway = Gateway(name, clock=lambda: self.now, **options)
        registration.register(self.store, self.data_dir, name, gateway.identity.public_key, asset=ASSET,
                              with_oscore=False, now=self.now)
        if bound:
            gateway.binding = binding_of(lender_identity(self.data_dir).public_key, gateway.identity.public_key, ASSET)
            self.store.bind(name, gateway.binding)
        return gateway

    def deliver(self, gateway: Gateway, *envelopes: Envelope) -> Ack:
        """One batch as the agent posts it; the gateway keeps the token of the ack, as the agent does."""
        outcome = self.ingest.batch(batch(envelopes), peer="198.51.100.7:5683")
        ack = Ack.decode(outcome.ack(), [e.seq for e in envelopes])
        gateway.hear(ack)
        return ack

    def judge(self, *, at: float | None = None, missed: float = 3) -> Judge:
        return Judge(now=self.now if at is None else at, token_key=self.token_key,
                     sites_dir=self.data_dir / "enroll" / "sites", missed_heartbeats=missed)

    def risks(self, gateway: Gateway, **judging) -> list[Risk]:
        return device_risks(self.store, gateway.name, self.judge(**judging))

    def kinds(self, gateway: Gateway, **judging) -> list[str]:
        return [r.kind for r in self.risks(gateway, **judging)]

    def status(self, gateway: Gateway, **judging) -> list[AssetStatus]:
        return asset_status(self.store, gateway.name, self.judge(**judging))

    def states(self, gateway: Gateway, **judging) -> set[str]:
        """The state of every asset the gateway watches (the gateway pseudo-asset included)."""
        return {s.state for s in self.status(gateway, **judging)}

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m pledgewatch lender ARGS --data DATA`, as the lender's staff run it."""
        return subprocess.run([sys.executable, "-m", "pledgewatch", "lender", *args, "--data", str(self.data_dir)],
                              check=False, capture_output=True, text=True, timeout=60,
                              env=free_environment())

    def status_json(self, *args: str) -> list[dict]:
        done = self.cli("status", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
