"""The lender's commands to its devices (telemetry.command): issued, handed out, and what each device signed back.

Each command is one row of the `commands` table in the evidence store, with
its exact signed bytes, who issued it (a staff identity) and when; the store
numbers them per device (seq), in the transaction that keeps them. Whether a
device applied or refused a command is not a column anyone can write: it is
read from the device's own signed chain (the `command.*` records it signs,
`telemetry.command.outcome_records`), so the audit shows only what the device
proved. `CommandDesk` is the one place that issues; the CoAP resource and the
CLI use it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lender.evidence.registry import iso_time
from telemetry import cbor, cose
from telemetry.ack import MAX_NODE_COMMAND
from telemetry.command import (LIMITS, RECORD_PREFIX, Body, Command, Inspect, Kind, Outcome, Permit, RotateKey,
                               configuration_rules_digest)
from telemetry.envelope import NODE_VERSION
from telemetry.exc import CommandError

DEFAULT_LIFETIME = 24 * 3600      # seconds a command stays valid unless the issuer says otherwise
INSPECT_LIFETIME = 600            # an inspection is about now: ten minutes to reach the device

COMMAND_TABLES = (
    "CREATE TABLE commands (device TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
    " issued_at REAL NOT NULL, expires INTEGER NOT NULL, issuer TEXT NOT NULL, raw BLOB NOT NULL,"
    " digest BLOB NOT NULL, nonce BLOB, delivered_at REAL, PRIMARY KEY (device, seq)) STRICT",
)


@dataclass(frozen=True, slots=True)
class IssuedCommand:
    """One command as the lender keeps it."""

    device: str
    seq: int
    kind: str
    issued_at: float
    expires: int
    issuer: str
    raw: bytes
    digest: bytes
    nonce: bytes | None = None
    delivered_at: float | None = None

    def as_json(self, state: str) -> dict:
        """The one JSON shape of a command, for the CLI's --json and the console's API."""
        return {"device": self.device, "seq": self.seq, "kind": self.kind, "state": state, "issuer": self.issuer,
                "issued": iso_time(self.issued_at), "expires": iso_time(self.expires),
                "delivered": iso_time(self.delivered_at), "digest_hex": self.digest.hex(),
                "nonce_hex": self.nonce.hex() if self.nonce else None}


@dataclass(frozen=True, slots=True)
class Answer:
    """What a device signed about one command: the outcome, and the envelope that carries it."""

    outcome: str
    seq: int               # the envelope's seq in the device's chain
    at: float              # the time on the device's records
    detail: str | None = None


class CommandStore(Protocol):
    """What the desk needs from the evidence store (`SQLiteStore` has it)."""

    def add_command(self, device: str, make: Callable[[int], IssuedCommand]) -> IssuedCommand: ...
    def issued_commands(self, device: str | None = None) -> list[IssuedCommand]: ...
    def mark_delivered(self, device: str, seq: int, at: float) -> None: ...
    def records_named(self, device: str | None, *, names: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
                      newest_first: bool = False, limit: int | None = None) -> list: ...
    def last_received(self, device: str) -> tuple | None: ...
    def envelope(self, device: str, seq: int): ...


class CommandDesk:
    """Issues signed commands into the store and reads back what devices signed about them."""

    def __init__(self, store: CommandStore, lender, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lender = lender      # the enrollment key (lender.evidence.log.lender_identity)
        self.clock = clock

    def issue(self, device: str, body: Body, issuer: str, lifetime: int | None = None) -> IssuedCommand:
        """Sign `body` for `device` under the next command seq and keep it; returns what was kept."""
        now = self.clock()
        if lifetime is None:
            lifetime = INSPECT_LIFETIME if isinstance(body, Inspect) else DEFAULT_LIFETIME
        if isinstance(body, Permit):
            lifetime = max(lifetime, int(body.until - now))  # a permit is of no use once it has ended

        node = answers_at_next_wake(self.store, device)

        def make(seq: int) -> IssuedCommand:
            signed = Command(device, seq, int(now), int(now) + max(1, lifetime), body).sign(self.lender)
            if node and len(signed.raw) > MAX_NODE_COMMAND:  # it could never ride in the node's ack: not kept
                raise CommandError(f"{device} is a node: its ack carries a command of at most {MAX_NODE_COMMAND} "
                                   f"bytes, and this {signed.kind} is {len(signed.raw)}")
            return IssuedCommand(device, seq, str(signed.kind), now, signed.expires, issuer, signed.raw, signed.digest,
                                 body.nonce if isinstance(body, Inspect) else None)

        return self.store.add_command(device, make)

    def inspect(self, device: str, issuer: str, assets: tuple[str, ...] = ()) -> IssuedCommand:
        return self.issue(device, Inspect(os.urandom(16), assets), issuer)

    def rotate_key(self, device: str, issuer: str, lifetime: int | None = None) -> IssuedCommand:
        """Ask the device for a new key: its handover (telemetry.rotation) must answer this very command, unexpired,
        for the registry to switch (lender.evidence.ingest)."""
        return self.issue(device, RotateKey(os.urandom(16)), issuer, lifetime)

    def pending(self, device: str, after: int = 0) -> list[IssuedCommand]:
        """The device's unexpired commands above seq `after` that it has not answered yet, oldest first."""
        now = self.clock()
        answered = self.answers(device)
        return [c for c in self.store.issued_commands(device)
                if c.seq > after and c.expires > now and c.digest not in answered]

    def answers(self, device: str | None = None) -> dict[bytes, Answer]:
        """Command digest -> what the device signed about it (the `command.*` records of its stored envelopes)."""
        grouped: dict[tuple[str, int], dict[str, object]] = {}
        received: dict[tuple[str, int], float] = {}
        for reading in self.store.records_named(device, prefixes=(RECORD_PREFIX,)):
            fields = grouped.setdefault((reading.device, reading.seq), {})
            value = next((v for v in (reading.data, reading.string, reading.value) if v is not None), None)
            fields[reading.name[len(RECORD_PREFIX):]] = value
            received[(reading.device, reading.seq)] = reading.at
        answers = {}
        for key, fields in grouped.items():
            digest = fields.get("digest")
            if isinstance(digest, bytes) and fields.get("outcome") in set(Outcome):
                detail = fields.get("detail")
                answers[digest] = Answer(str(fields["outcome"]), key[1], received[key],
                                         detail if isinstance(detail, str) else None)
        return answers

    def audit(self, device: str | None = None) -> list[tuple[IssuedCommand, str, Answer | None]]:
        """Every command kept, with its state: issued, delivered, applied, refused or expired."""
        now = self.clock()
        answers = self.answers(device)
        rows = []
        for command in self.store.issued_commands(device):
            answer = answers.get(command.digest)
            if answer is not None:
                state = answer.outcome
            elif command.expires <= now:
                state = "expired"
            else:
                state = "delivered" if command.delivered_at is not None else "issued"
            rows.append((command, state, answer))
        return rows

    def snapshot(self, command: IssuedCommand) -> Answer | None:
        """The device's signed answer to an inspection, once it is stored (and so verified), else None."""
        return self.answers(command.device).get(command.digest)

    def configuration(self, device: str) -> tuple[IssuedCommand, bytes] | None:
        """The newest configure command the device signed as applied, with its document; None without one.

        The document is read from the lender's own kept bytes (signed by it when
        issued); that the device applied it is read from the device's chain.
        """
        answers = self.answers(device)
        applied = [c for c in self.store.issued_commands(device)
                   if c.kind == str(Kind.CONFIGURE) and getattr(answers.get(c.digest), "outcome", None) == Outcome.APPLIED]
        if not applied:
            return None
        newest = max(applied, key=lambda c: c.seq)
        fields = cbor.decode(cose.parse_sign1(newest.raw, LIMITS).payload, LIMITS)
        return newest, fields[6][2]

    def configured_rules_digest(self, device: str) -> str | None:
        """The rules digest the device should declare while the lender's newest applied configuration is in force."""
        found = self.configuration(device)
        return None if found is None else configuration_rules_digest(found[1])


def answers_at_next_wake(store: CommandStore, device: str, look_back: int = 4) -> bool:
    """Whether `device` is a node, which answers a command at its next wake (not in seconds like a gateway).

    Read from its evidence: one of its newest `look_back` stored envelopes is
    version 3, which only nodes sign (telemetry.nodereadings; a node's answer
    to a command is version 2 when its records do not fit the readings table).
    A device that has sent nothing yet counts as a gateway.
    """
    newest = store.last_received(device)
    if newest is None:
        return False
    for seq in range(newest[0], max(0, newest[0] - look_back), -1):
        stored = store.envelope(device, seq)
        if stored is not None and stored.version == NODE_VERSION:
            return True
    return False
