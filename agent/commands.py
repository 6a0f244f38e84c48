"""agent.commands — the gateway's side of the lender's signed commands: verify, remember, apply.

A command (telemetry.command) is applied only when the pinned lender key
signed it, it names this device, its seq is above the last one applied and it
has not expired; anything else is refused and logged, and changes nothing.
What the inbox remembers lives in one file, ``STATE_DIR/commands.json``,
replaced atomically (durable.files): the last applied seq, the permits in
force, and the configuration documents (the lender's current one and the one
before it, for rollback). Each apply is one such replacement, so a power cut
leaves the state before or after the command, never between, and a command is
never applied twice. The spool, the chain and the keys are never touched.

The same replacement lists the command as unreported until the daemon has
signed its outcome (`reported`): a power cut between the two leaves the
command applied and its report still owed, and the daemon signs it at its next
start (`unreported`), so no applied command goes without its record in the chain
(a cut after signing and before `reported` signs it twice; the lender takes the
same command digest once).

What the device signs about a command (telemetry.command.outcome_records) is
returned as an `Applied` for the daemon to seal ahead of its backlog; for an
inspection the daemon adds a snapshot of the named assets' sensors.

A rotate-key command is applied here only as far as the inbox goes (its seq,
owed like any outcome); the daemon makes the new key in the gateway's key
store (`keys`, durable.keystore.DeviceKeys), signs the handover with the old
key (telemetry.rotation) and switches. A gateway given no key store refuses
rotate-key, signed, as before.
"""
from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.assets import parse_assets, parse_rules
from agent.exc import ConfigError
from durable.files import atomic_write
from telemetry.command import (Command, Configure, Inspect, Outcome, Permit, RotateKey, accept, config_digest,
                               configuration_rules_digest, outcome_records)
from telemetry.exc import CommandError
from telemetry.senml import Record

log = logging.getLogger(__name__)

STATE_FILE = "commands.json"
CONFIG_TABLES = ("rules", "assets")   # what a lender's configuration may set; the rest stays the technician's
MAX_UNREPORTED = 32                   # outcomes owed to the chain, kept while the spool cannot take them (oldest dropped)


@dataclass(frozen=True, slots=True)
class Applied:
    """A command the device acted on (applied, or refused after validation) and the records to sign for it."""

    command: Command
    outcome: Outcome
    records: list[Record]
    at: float = 0.0     # when the device acted on it (the records' time)


def rules_validator(sensor_kinds: Mapping[str, str], path: Path = Path("lender-configuration")) -> Callable[[bytes], list[str]]:
    """A validator of configuration documents against this gateway's sensors: the errors, or [] when valid."""

    def validate(document: bytes) -> list[str]:
        try:
            data = tomllib.loads(document.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            return [f"not a TOML document: {exc}"]
        unknown = sorted(set(data) - set(CONFIG_TABLES))
        if unknown:
            return [f"table(s) {', '.join(unknown)} are not the lender's to set (allowed: {', '.join(CONFIG_TABLES)})"]
        try:
            rules = parse_rules(path, data.get("rules", {}))
            parse_assets(path, data.get("assets", []), sensor_kinds, rules)
        except (ConfigError, ValueError) as exc:
            return [str(exc)]
        return []

    return validate


class CommandInbox:
    """The commands one gateway has applied, kept in ``STATE_DIR/commands.json``; see the module docstring."""

    def __init__(self, state_dir: str | Path, device: str, lender_key: bytes, *,
                 validate: Callable[[bytes], list[str]] = lambda document: [],
                 clock: Callable[[], float], keys=None) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.device = device
        self.lender_key = lender_key
        self.validate = validate
        self.clock = clock
        self.keys = keys      # the key store rotate-key changes (durable.keystore.DeviceKeys); None: refused
        self.last_seq = 0
        self.permits: tuple[Permit, ...] = ()
        self.config: bytes | None = None            # the lender's configuration in force
        self.previous_config: bytes | None = None   # the one before it (rollback)
        self._unreported: list[dict] = []           # commands acted on whose outcome is not signed yet
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: the command state cannot be read: {exc}") from exc
        self.last_seq = int(data["last_seq"])
        self.permits = tuple(Permit(p["asset"], p["from"], p["until"], p["reason"], tuple(p["inputs"]))
                             for p in data["permits"])
        self.config = None if data["config"] is None else data["config"].encode("utf-8")
        self.previous_config = None if data["previous_config"] is None else data["previous_config"].encode("utf-8")
        self._unreported = list(data.get("unreported", []))

    def _save(self, last_seq: int, permits: tuple[Permit, ...], config: bytes | None,
              previous: bytes | None, unreported: list[dict] | None = None) -> None:
        """Replace the state file in one step, then adopt it (a crash before the rename keeps the old state)."""
        data = {"last_seq": last_seq,
                "permits": [{"asset": p.asset, "from": p.start, "until": p.until, "reason": p.reason,
                             "inputs": list(p.inputs)} for p in permits],
                "config": None if config is None else config.decode("utf-8"),
                "previous_config": None if previous is None else previous.decode("utf-8"),
                "unreported": self._unreported if unreported is None else unreported}
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode("utf-8"))
        self.last_seq, self.permits, self.config, self.previous_config = last_seq, permits, config, previous
        self._unreported = data["unreported"]

    def _applied(self, entry: dict) -> Applied:
        command = Command.verify(bytes.fromhex(entry["raw"]), self.lender_key)
        outcome = Outcome(entry["outcome"])
        config = None if entry["config"] is None else bytes.fromhex(entry["config"])
        return Applied(command, outcome, outcome_records(command, outcome, entry["at"], detail=entry["detail"],
                                                         config=config), entry["at"])

    def unreported(self) -> list[Applied]:
        """The commands acted on whose outcome the daemon has not signed yet, oldest first (to sign at start)."""
        return [self._applied(entry) for entry in self._unreported]

    def reported(self, seq: int) -> None:
        """The outcome of command `seq` is signed into the chain: it is owed no more."""
        left = [entry for entry in self._unreported if entry["seq"] != seq]
        if len(left) != len(self._unreported):
            self._save(self.last_seq, self.permits, self.config, self.previous_config, left)

    @property
    def config_digest(self) -> bytes | None:
        return None if self.config is None else config_digest(self.config)

    @property
    def rules_digest(self) -> str | None:
        """The rules digest (telemetry.manifest) of the lender's configuration in force: what the manifest declares."""
        return None if self.config is None else configuration_rules_digest(self.config)

    def configured(self, sensor_kinds: Mapping[str, str]):
        """(RuleSettings, assets) of the lender's configuration in force, or None without one (the local config rules)."""
        if self.config is None:
            return None
        data = tomllib.loads(self.config.decode("utf-8"))
        rules = parse_rules(self.path, data.get("rules", {}))
        return rules, tuple(parse_assets(self.path, data.get("assets", []), sensor_kinds, rules))

    def permitted(self, asset: str, at: float, sensor: str | None = None) -> bool:
        """Whether a lender's permit in force covers an opening of `sensor` on `asset` at `at`."""
        return any(p.covers(asset, at, sensor) for p in self.permits)

    def receive(self, raw: bytes) -> Applied | None:
        """Act on one command: an `Applied` to sign, or None when it was refused unverified (logged, nothing changed)."""
        now = self.clock()
        try:
            command = accept(raw, self.lender_key, self.device, self.last_seq, now)
        except CommandError as exc:
            log.warning("refused a command: %s", exc)
            return None
        body = command.body
        permits = tuple(p for p in self.permits if p.until > now)  # ended permits are dropped as we go
        config, previous, outcome, detail = self.config, self.previous_config, Outcome.APPLIED, None
        if isinstance(body, Permit):
            permits += (body,)
        elif isinstance(body, Configure):
            errors = self.validate(body.document)
            if errors:
                outcome, detail = Outcome.REFUSED, "; ".join(errors)
            else:
                config, previous = body.document, self.config
        elif isinstance(body, RotateKey):
            if self.keys is None:
                outcome, detail = Outcome.REFUSED, "this gateway was started without its key store: no rotation"
        elif not isinstance(body, Inspect):
            outcome, detail = Outcome.REFUSED, f"{command.kind} is not supported by this gateway yet"
        digest = (None if config is None else config_digest(config)) if isinstance(body, Configure) else None
        entry = {"seq": command.seq, "raw": command.raw.hex(), "outcome": str(outcome), "detail": detail,
                 "config": None if digest is None else digest.hex(), "at": now}
        self._save(command.seq, permits, config, previous, (self._unreported + [entry])[-MAX_UNREPORTED:])
        return self._applied(entry)
