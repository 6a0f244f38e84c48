"""The agent's configuration: one TOML file, validated when it is loaded.

Every error names the file, the table and key, and what is allowed, so a
technician can fix a config on site without reading code. The result is a
tree of frozen dataclasses; nothing downstream re-checks it.

    [device]     id, key_file, state_dir, binding (the enrollment's, 16 hex digits; written by provisioning),
                 lender_key (64 hex digits: the lender key its signed commands must carry; without it, no commands),
                 key_store ("software" | "tpm": the kind of key the gateway was provisioned with; durable.keystore)
    [spool]      max_bytes, synchronous
    [uplink]     lender, security_context | insecure, batch_interval, heartbeat_s, ... (agent.uplink.UplinkConfig)
    [[sensors]]  kind = "ds18b20" | "contact" | "motion" | "run-hours" | "gnss", then that driver's settings
    [rules]      site-wide rule settings (agent.assets.RuleSettings)
    [[assets]]   the pledged assets, each bound to its sensors (agent.assets)
    [modem]      the modem health monitor: port, model, intervals, reset cap, power pin
                 (agent.health.ModemHealthConfig); without the table the agent runs no monitor
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.assets import Asset, RuleSettings, parse_assets, parse_rules
from agent.exc import ConfigError, UplinkConfigError
from agent.health import ModemHealthConfig
from agent.uplink import UplinkConfig
from drivers.exc import DriverError
from drivers.gnss import GnssConfig
from drivers.gpio import ContactConfig, MotionConfig, RunHoursConfig
from drivers.onewire import DS18B20Config
from telemetry.envelope import BINDING_BYTES
from telemetry.manifest import rules_digest

DEFAULT_CONFIG = Path("/etc/pledgewatch/agent.toml")
REQUIRED = object()

# sensor kind -> the driver's config class (its fields are the allowed keys)
SENSOR_KINDS: dict[str, type] = {
    "ds18b20": DS18B20Config,
    "contact": ContactConfig,
    "motion": MotionConfig,
    "run-hours": RunHoursConfig,
    "gnss": GnssConfig,
}

# [modem] key -> its type (every key is optional: agent.health.ModemHealthConfig has the defaults)
MODEM_KEYS: dict[str, tuple[type, object]] = {
    "port": (str, None), "model": (str, None), "status_interval_s": (float, None), "command_timeout_s": (float, None),
    "cfun_timeout_s": (float, None), "backoff_s": (float, None), "max_resets_per_hour": (int, None),
    "slow_probe_s": (float, None), "refused_alarm_after_s": (float, None), "refused_reattach_s": (float, None),
    "port_return_s": (float, None), "boot_s": (float, None), "hotplug": (bool, None), "power_pin": (int, None),
    "power_active_high": (bool, None), "power_off_s": (float, None),
}


BINDING_HEX = re.compile(r"[0-9a-fA-F]{%d}" % (2 * BINDING_BYTES))


@dataclass(frozen=True, slots=True)
class DeviceSection:
    id: str
    key_file: Path
    state_dir: Path
    binding: str | None = None   # the enrollment binding (telemetry.enrollment.binding_of), hex
    lender_key: str | None = None  # the lender's enrollment public key, hex: pinned for its signed commands
    key_store: str | None = None   # "software" or "tpm" (durable.keystore); None: whatever device.keystore says

    def __post_init__(self) -> None:
        if self.key_store not in (None, "software", "tpm"):
            raise ValueError(f"key_store = {self.key_store!r} must be \"software\" or \"tpm\"")
        if self.binding is not None and not BINDING_HEX.fullmatch(self.binding):
            raise ValueError(f"binding = {self.binding!r} must be {2 * BINDING_BYTES} hex digits "
                             "(the enrollment binding `pledgewatch provision` writes)")
        if self.lender_key is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.lender_key):
            raise ValueError(f"lender_key = {self.lender_key!r} must be 64 hex digits (the lender's public key, "
                             "`pledgewatch lender key`)")

    @property
    def binding_bytes(self) -> bytes | None:
        """The binding every envelope carries, or None when the device has none configured."""
        return None if self.binding is None else bytes.fromhex(self.binding)


@dataclass(frozen=True, slots=True)
class SpoolSection:
    max_bytes: int = 256 * 1024 * 1024
    synchronous: str = "FULL"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path
    device: DeviceSection
    spool: SpoolSection
    uplink: UplinkConfig
    sensors: tuple[Any, ...]
    assets: tuple[Asset, ...] = ()
    rules: RuleSettings = RuleSettings()
    modem: ModemHealthConfig | None = None
    # [[assets]] and [rules] exactly as tomllib parsed them: what the signed rules digest covers
    assets_table: tuple[dict, ...] = ()
    rules_table: dict = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        return self.device.key_file

    @property
    def rules_digest(self) -> str:
        """`telemetry.manifest.rules_digest` of [[assets]] and [rules] as written (signed in the manifest)."""
        return rules_digest(self.assets_table, self.rules_table)


def _typed(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _section(path: Path, table: str, data: object, cls: type, rules: dict[str, tuple[type, object]]) -> Any:
    """Build `cls` from a TOML table whose keys follow `rules`: key -> (type, default or REQUIRED)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    unknown = sorted(set(data) - set(rules))
    if unknown:
        raise ConfigError(f"{path}: [{table}] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(rules)}")
    values = {}
    for key, (kind, default) in rules.items():
        if key not in data:
            if default is REQUIRED:
                raise ConfigError(f"{path}: [{table}] needs key '{key}' ({kind.__name__})")
            continue
        value = data[key]
        if not _typed(value, str if kind is Path else kind):
            raise ConfigError(f"{path}: [{table}] {key} = {value!r} must be a {kind.__name__}")
        values[key] = path.parent / value if kind is Path else value
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: [{table}] {exc}") from exc


def _sensor(path: Path, index: int, data: object) -> Any:
    table = f"sensors #{index + 1}"
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(f"{path}: [[sensors]] #{index + 1} needs a 'kind'; allowed: {', '.join(SENSOR_KINDS)}")
    kind = data["kind"]
    cls = SENSOR_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{path}: [{table}] kind = {kind!r} is unknown; allowed: {', '.join(SENSOR_KINDS)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    settings = {k: v for k, v in data.items() if k != "kind"}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"{path}: [{table}] ({kind}) has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(fields)}")
    if "base_dir" in settings and isinstance(settings["base_dir"], str):
        settings["base_dir"] = path.parent / settings["base_dir"]
    try:
        return cls(**settings)
    except (ValueError, TypeError, DriverError) as exc:
        raise ConfigError(f"{path}: [{table}] ({kind}) {exc}") from exc


def parse(text: str, path: Path) -> AgentConfig:
    """Validate the TOML `text` of the file at `path` (relative paths in it are relative to that file)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"device", "spool", "uplink", "sensors", "rules", "assets", "modem"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; "
                          "allowed: device, spool, uplink, sensors, rules, assets, modem")
    device = _section(path, "device", data.get("device", {}), DeviceSection, {
        "id": (str, REQUIRED), "key_file": (Path, REQUIRED), "state_dir": (Path, REQUIRED), "binding": (str, None),
        "lender_key": (str, None), "key_store": (str, None),
    })
    if not 0 < len(device.id) <= 64:
        raise ConfigError(f"{path}: [device] id must be 1..64 characters")
    spool = _section(path, "spool", data.get("spool", {}), SpoolSection, {
        "max_bytes": (int, None), "synchronous": (str, None),
    })
    if spool.max_bytes < 64 * 1024:
        raise ConfigError(f"{path}: [spool] max_bytes = {spool.max_bytes} is too small; allowed: >= 65536")
    if spool.synchronous not in ("FULL", "NORMAL"):
        raise ConfigError(f"{path}: [spool] synchronous = {spool.synchronous!r}; allowed: FULL, NORMAL")
    uplink_table = data.get("uplink", {})
    if not isinstance(uplink_table, dict):
        raise ConfigError(f"{path}: [uplink] must be a table")
    if isinstance(uplink_table.get("security_context"), str):
        uplink_table = {**uplink_table, "security_context": path.parent / uplink_table["security_context"]}
    try:
        uplink = UplinkConfig.from_mapping(uplink_table)
    except UplinkConfigError as exc:
        raise ConfigError(f"{path}: [uplink] {exc}") from exc
    sensors_data = data.get("sensors", [])
    if not isinstance(sensors_data, list):
        raise ConfigError(f"{path}: sensors must be an array of tables ([[sensors]])")
    sensors = tuple(_sensor(path, index, item) for index, item in enumerate(sensors_data))
    names = [s.name for s in sensors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: sensor name(s) {', '.join(duplicates)} used twice; each sensor needs its own name")
    rules = parse_rules(path, data.get("rules", {}))
    kind_of = {cls: kind for kind, cls in SENSOR_KINDS.items()}
    assets = parse_assets(path, data.get("assets", []), {s.name: kind_of[type(s)] for s in sensors if isinstance(s.name, str)}, rules)
    modem = _section(path, "modem", data["modem"], ModemHealthConfig, MODEM_KEYS) if "modem" in data else None
    return AgentConfig(path=path, device=device, spool=spool, uplink=uplink, sensors=sensors, assets=assets, rules=rules,
                       modem=modem, assets_table=tuple(data.get("assets", [])), rules_table=dict(data.get("rules", {})))


def load(path: str | Path = DEFAULT_CONFIG) -> AgentConfig:
    """Read and validate the agent's config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    return parse(text, path)
