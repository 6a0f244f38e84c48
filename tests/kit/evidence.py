"""A lender that keeps evidence for third parties: real enrollment through the desk, v2 gateways, its CLI in-process.

`EvidenceLender` is the real thing on disk (a `SQLiteStore` with its log, an
`Ingest` with the token key, a registered technician, the site record of the
pledged asset). `enroll` makes a gateway the way provisioning does: a request
signed by the device, countersigned by the technician, decided by the
`EnrollmentDesk`, so the log holds the enrollment a court would look at.
`cli` runs ``pledgewatch lender ...`` in this process (the same `main` the
console command runs) and returns (exit code, stdout, stderr).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
from pathlib import Path

from lender.enrollment.desk import EnrollmentDesk
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence.ingest import Ingest
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from lender.evidence.tokens import token_key
from pledgewatch import cli as pledgewatch_cli
from telemetry.ack import Ack
from telemetry.enrollment import AssetBinding, EnrollmentBody, EnrollmentRequest, binding_of
from telemetry.identity import Identity
from tests.kit.lender import batch
from tests.kit.pledge import ASSET, SITE_RECORD, START, Gateway

TECHNICIAN = "tech-ana"


class EvidenceLender:
    """A lender on disk with one pledged asset, a technician who countersigns, and a clock the test moves."""

    def __init__(self, data_dir: Path, *, now: float = START) -> None:
        self.data_dir = data_dir
        self.now = now
        self.technician = Identity.generate()
        TechnicianRegistry(data_dir).add(TECHNICIAN, self.technician.public_key, "Ana", now=now)
        sites = data_dir / "enroll" / "sites"
        sites.mkdir(parents=True, exist_ok=True)
        (sites / f"{ASSET}.toml").write_text(SITE_RECORD, "utf-8")
        self.open()

    def open(self) -> None:
        """(Re)start the lender on its data directory: the store (migrated if it is older), ingest, the desk."""
        self.store = SQLiteStore.open(self.data_dir)
        self.ingest = Ingest(self.store, clock=lambda: self.now, token_key=token_key(self.data_dir))
        self.desk = EnrollmentDesk(self.data_dir, self.store, clock=lambda: self.now)

    @property
    def key(self) -> bytes:
        """The lender's public key: what a third party pins."""
        return lender_identity(self.data_dir).public_key

    def close(self) -> None:
        self.store.close()

    def enroll(self, name: str = "gw-1") -> Gateway:
        """A gateway enrolled for the pledged asset through the desk, countersigned by the technician."""
        gateway = Gateway(name, clock=lambda: self.now)
        body = EnrollmentBody(device=name, kind="gateway", public_key=gateway.identity.public_key,
                              technician=TECHNICIAN, hardware={"imei": "356938035643809"},
                              binding=AssetBinding(ASSET, "Warehouse 3"), created=int(self.now), nonce=os.urandom(16))
        request = EnrollmentRequest.create(body, gateway.identity.sign).countersign(self.technician)
        decision = self.desk.enroll(request.encode())
        assert decision.signed, decision.text
        gateway.binding = binding_of(self.key, gateway.identity.public_key, ASSET)
        return gateway

    def deliver(self, gateway: Gateway, *envelopes) -> Ack:
        """One batch as the agent posts it; the gateway keeps the ack's token, as the agent does."""
        outcome = self.ingest.batch(batch(envelopes), peer="198.51.100.7:5683")
        ack = Ack.decode(outcome.ack(), [e.seq for e in envelopes])
        gateway.hear(ack)
        return ack

    def readings(self, gateway: Gateway, count: int, *, per_batch: int = 10) -> list:
        """`count` readings delivered in batches, a minute apart; the envelopes sent."""
        sent = []
        for start in range(0, count, per_batch):
            envelopes = [gateway.reading(4.0 + (start + i) % 7 / 2) for i in range(min(per_batch, count - start))]
            self.deliver(gateway, *envelopes)
            sent += envelopes
            self.now += 60
        return sent

    def cli(self, *args: str) -> tuple[int, str, str]:
        """`pledgewatch lender ARGS` in this process, with --data for the commands that take it."""
        out, err = io.StringIO(), io.StringIO()
        arguments = ["lender", *map(str, args)]
        if args[0] not in ("verify",):
            arguments += ["--data", str(self.data_dir)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = pledgewatch_cli.main(arguments)
        return code, out.getvalue(), err.getvalue()

    def bundle(self, device: str, path: Path) -> dict:
        """`lender export --format bundle` of `device` into `path`; the document."""
        code, _, err = self.cli("export", "--device", device, "--format", "bundle", "--output", path)
        assert code == 0, err
        return json.loads(path.read_text())

    def verify(self, path: Path, *extra: str) -> tuple[int, dict]:
        """`lender verify PATH --lender-key KEY --json`: the exit code and the report."""
        code, out, err = self.cli("verify", path, "--lender-key", self.key.hex(), "--json", *extra)
        assert out, err
        return code, json.loads(out)


def downgrade_to_schema_2(data_dir: Path) -> None:
    """Take a closed lender store back to schema 2, as a lender had it before the log (no log tables, no index)."""
    conn = sqlite3.connect(data_dir / "lender.sqlite3")
    try:
        for table in ("log_entries", "log_nodes", "log_heads", "log_checkpoints", "commands", "retired_keys"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE envelopes DROP COLUMN log_index")
        for column in ("key_since", "enrolled_key", "key_race", "key_storage", "key_storage_note"):
            conn.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()
