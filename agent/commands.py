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

What the device signs about a command (telemetry.command.outcome_records) is
returned as an `Applied` for the daemon to seal ahead of its backlog; for an
inspection the daemon adds a snapshot of the named assets' sensors.
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
from telemetry.command import (Command, Configure, Inspect, Outcome, Permit, accept, config_digest,
                               configuration_rules_digest, outcome_records)
from telemetry.exc import CommandError
from telemetry.senml import Record

log = logging.getLogger(__name__)

STATE_FILE = "commands.json"
CONFIG_TABLES = ("rules", "assets")   # what a lender's configuration may set; the rest stays the technician's


@dataclass(frozen=True, slots=True)
class Applied:
    """A command the device acted on (applied, or refused after validation) and the records to sign for it."""

    command: Command
    outcome: Outcome
    records: list[Record]


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
                 clock: Callable[[], float]) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.device = device
        self.lender_key = lender_key
        self.validate = validate
        self.clock = clock
        self.last_seq = 0
        self.permits: tuple[Permit, ...] = ()
        self.config: bytes | None = None            # the lender's configuration in force
        self.previous_config: bytes | None = None   # the one before it (rollback)
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

    def _save(self, last_seq: int, permits: tuple[Permit, ...], config: bytes | None,
              previous: bytes | None) -> None:
        """Replace the state file in one step, then adopt it (a crash before the rename keeps the old state)."""
        data = {"last_seq": last_seq,
                "permits": [{"asset": p.asset, "from": p.start, "until": p.until, "reason": p.reason,
                             "inputs": list(p.inputs)} for p in permits],
                "config": None if config is None else config.decode("utf-8"),
                "previous_config": None if previous is None else previous.decode("utf-8")}
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode("utf-8"))
        self.last_seq, self.permits, self.config, self.previous_config = last_seq, permits, config, previous

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
        elif not isinstance(body, Inspect):
            outcome, detail = Outcome.REFUSED, f"{command.kind} is not supported by this gateway yet"
        self._save(command.seq, permits, config, previous)
        records = outcome_records(command, outcome, now, detail=detail,
                                  config=self.config_digest if isinstance(body, Configure) else None)
        return Applied(command, outcome, records)
