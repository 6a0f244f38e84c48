"""The portfolio: every pledged asset's state, kept current in memory so a page over 10,000 assets costs no query.

Judging one device (lender.evidence.alarms.asset_status, with every risk of
lender.evidence.risks) reads all its envelopes; doing that for every device at
every page view would not scale. The console judges a device once, when
something about it changes (lender.console.live watches for that), and keeps
the result here as `Row`s: one per pledged asset, the gateway's own alarms
folded into each asset it watches (a tampered gateway puts every asset it
watches in ALARM). A page then filters and sorts rows already in memory.

States, worst first (`STATES`): ALARM (an alarm is open), SILENT (no envelope
for more than the allowed heartbeats), RISK (the lender's own judgement names
a risk), GAPS (only gaps: unexplained seqs or signed gap records not reviewed
yet), NO DATA (registered, nothing received), OK.
"""
from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lender.evidence.alarms import AlarmRecord, AssetStatus
from lender.evidence.risks import Risk
from lender.evidence.store import Reading
from telemetry.alarms import GATEWAY

STATES = ("ALARM", "SILENT", "RISK", "GAPS", "NO DATA", "OK")
SEVERITIES = ("critical", "major", "minor")
STALE_HEARTBEATS = 1.5   # last seen is greyed after this many heartbeats without an envelope


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """What the lender's site record (DATA/enroll/sites/<asset>.toml) says about where and whose an asset is."""

    site: str = ""
    borrower: str = ""
    assets: tuple[dict, ...] = ()   # the record's [[assets]] tables (name, kind, sensors, geofence, bands)

    def asset(self, name: str) -> dict:
        return next((a for a in self.assets if a.get("name") == name), {})


def read_site(sites_dir: Path | None, asset: str | None) -> SiteFacts:
    """The site record of registry asset `asset`; empty facts when there is none or it cannot be read."""
    if sites_dir is None or not asset:
        return SiteFacts()
    try:
        data = tomllib.loads((sites_dir / f"{asset}.toml").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return SiteFacts(site=asset)
    assets = data.get("assets", [])
    assets = tuple(a for a in assets if isinstance(a, dict)) if isinstance(assets, list) else ()
    text = (lambda key, default: data[key] if isinstance(data.get(key), str) else default)
    return SiteFacts(site=text("site", asset), borrower=text("borrower", ""), assets=assets)


@dataclass(frozen=True, slots=True)
class Row:
    """One pledged asset in the portfolio."""

    device: str
    asset: str
    kind: str
    site: str
    borrower: str
    state: str
    last_seen: float | None
    last_seq: int | None
    heartbeat_s: float
    last_reading: Reading | None
    open_alarms: tuple[AlarmRecord, ...]
    risks: tuple[Risk, ...]
    revoked: bool = False
    sensors: tuple[str, ...] = ()

    @property
    def rank(self) -> tuple:
        """Sort key, worst first: state, then the worst open alarm's severity, then the longest silence."""
        severity = min((SEVERITIES.index(a.severity) if a.severity in SEVERITIES else len(SEVERITIES)
                        for a in self.open_alarms), default=len(SEVERITIES))
        return (STATES.index(self.state), severity, self.last_seen if self.last_seen is not None else 0.0,
                self.device, self.asset)

    def stale(self, now: float) -> bool:
        return self.last_seen is None or now - self.last_seen > STALE_HEARTBEATS * self.heartbeat_s

    def matches(self, *, state: str | None = None, site: str | None = None, borrower: str | None = None,
                text: str | None = None) -> bool:
        if state and self.state != state:
            return False
        if site and self.site != site:
            return False
        if borrower and self.borrower != borrower:
            return False
        if text:
            needle = text.lower()
            return any(needle in f.lower() for f in (self.device, self.asset, self.site, self.borrower))
        return True


def rows_of(statuses: Iterable[AssetStatus], heartbeat_s: float, facts: SiteFacts, *,
            registered_asset: str | None, revoked: bool = False) -> list[Row]:
    """A device's portfolio rows from its asset statuses (lender.evidence.alarms.asset_status)."""
    statuses = list(statuses)
    gateway = next((s for s in statuses if s.asset == GATEWAY), None)
    assets = [s for s in statuses if s.asset != GATEWAY] or ([gateway] if gateway is not None else [])
    out = []
    for status in assets:
        alarms = status.open_alarms
        if gateway is not None and status is not gateway:
            alarms = tuple(sorted(alarms + gateway.open_alarms, key=lambda a: a.seq))
        name = status.asset if status is not gateway else (registered_asset or status.device)
        # a device that never signed a manifest: what the site record says the asset is
        kind = status.kind if status is not gateway else facts.asset(name).get("kind", status.kind)
        out.append(Row(
            device=status.device, asset=name, kind=str(kind), site=facts.site or (registered_asset or ""),
            borrower=facts.borrower, state=_state(status, alarms), last_seen=status.last_seen,
            last_seq=status.last_seq, heartbeat_s=heartbeat_s, last_reading=status.last_reading,
            open_alarms=alarms, risks=status.risks, revoked=revoked, sensors=status.sensors,
        ))
    return out


def _state(status: AssetStatus, alarms: tuple[AlarmRecord, ...]) -> str:
    if status.last_seen is None:
        return "SILENT" if any(r.kind == "silent" for r in status.risks) else "NO DATA"
    if alarms:
        return "ALARM"
    if any(r.kind == "silent" for r in status.risks):
        return "SILENT"
    if status.state == "ALARM":  # only the gateway's alarm, folded above; cannot happen, kept honest
        return "ALARM"
    return status.state


@dataclass
class _Device:
    rows: list[Row]
    silent_at: float | None        # when silence starts being judged, if nothing arrives before
    judged_at: float


@dataclass
class Portfolio:
    """Every device's rows, replaced whole when a device is judged again; thread-safe."""

    _devices: dict[str, _Device] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sorted: list[Row] | None = None
    version: int = 0
    expected: int = 0      # devices known to exist; `len(self)` < expected while the first judgement runs

    def update(self, device: str, rows: list[Row], *, silent_at: float | None, judged_at: float) -> None:
        with self._lock:
            self._devices[device] = _Device(rows, silent_at, judged_at)
            self._sorted = None
            self.version += 1

    def forget(self, device: str) -> None:
        with self._lock:
            if self._devices.pop(device, None) is not None:
                self._sorted = None
                self.version += 1

    def __len__(self) -> int:
        return len(self._devices)

    def devices(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def due_for_silence(self, now: float) -> list[str]:
        """Devices whose silence deadline has passed and that are not judged silent yet."""
        with self._lock:
            return [d for d, v in self._devices.items() if v.silent_at is not None and v.silent_at <= now
                    and v.judged_at < v.silent_at]

    def rows(self) -> list[Row]:
        """Every row, worst first (sorted once per change)."""
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted((r for v in self._devices.values() for r in v.rows), key=lambda r: r.rank)
            return self._sorted

    def device_rows(self, device: str) -> list[Row]:
        with self._lock:
            found = self._devices.get(device)
            return list(found.rows) if found else []

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for row in self.rows():
            out[row.state] += 1
        return out

    def choices(self) -> tuple[list[str], list[str]]:
        """The sites and borrowers there are, for the filters."""
        rows = self.rows()
        return sorted({r.site for r in rows if r.site}), sorted({r.borrower for r in rows if r.borrower})
