"""lender.evidence.alarms — the lender's view of its collateral: alarms raised and cleared per asset, and each asset's status.

Everything here is read from the evidence store, so every alarm and reading
shown came in an envelope whose signature and chain link were verified on
arrival. An alarm is the group of SenML records `alarm.<kind>.<asset>`
("raised" | "cleared") with `.severity`, `.sensors`, `.value` and `.detail`
in one envelope (docs/wire-format.md); the assets and their sensors come from
the manifest each gateway signs at start (`asset.<asset>.kind`,
`asset.<asset>.sensors`); device-level alarms belong to the asset "gateway".

`pledgewatch lender alarms` lists the events (lender.cli); `pledgewatch lender status`
answers "is asset X OK, and can I prove it?": last seen, last verified
reading, open alarms and gaps for each asset.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lender.evidence.risks import Judge, Risk, device_risks
from lender.evidence.store import Reading, SQLiteStore, explain_gaps
from telemetry.alarms import (
    GATEWAY,
    PREFIX,
    RAISED,
    STATES,
    alarm_name,
    parse_alarm_name,
)
from telemetry.envelope import decode
from telemetry.exc import WireFormatError


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm event as the device signed it, with where it sits in the device's chain."""

    device: str
    seq: int
    asset: str
    kind: str
    state: str                  # "raised" | "cleared"
    severity: str
    sensors: tuple[str, ...]
    value: float | None
    unit: str | None
    detail: str
    time: float | None          # the device's trusted wall time, None when its clock was unsynchronized
    received_at: float
    clock_source: str | None = None   # "ntp" | "gnss" | "modem" | "none"; None when the envelope has no clock statement
    uptime_s: float | None = None     # seconds since the device booted, when it said so

    @property
    def name(self) -> str:
        return alarm_name(self.kind, self.asset)


@dataclass(frozen=True, slots=True)
class AssetStatus:
    """What the lender can prove about one asset right now."""

    device: str
    asset: str
    kind: str
    sensors: tuple[str, ...]
    last_seen: float | None                    # when the device's newest envelope arrived
    last_seq: int | None
    last_reading: Reading | None               # the newest verified record of one of the asset's sensors
    open_alarms: tuple[AlarmRecord, ...]
    unexplained_gaps: tuple[tuple[int | None, int], ...]   # missing seq ranges no signed gap record explains
    explained_gaps: int
    state: str = field(default="OK")           # "OK" | "ALARM" | "RISK" | "GAPS" | "NO DATA"
    risks: tuple[Risk, ...] = ()               # the lender's own judgement of the device (lender.evidence.risks)
    freshness: str = "none"                    # "lender token" | "legacy: no freshness" (version 1) | "none" yet


def _envelope_facts(store: SQLiteStore, device: str, seq: int, cache: dict) -> tuple[str | None, float | None, float]:
    """(clock source, uptime s, received at) of a stored envelope, from its clock statement (payload key 7)."""
    key = (device, seq)
    if key not in cache:
        stored = store.envelope(device, seq)
        statement = None
        if stored is not None:
            try:
                statement = decode(stored.raw).clock_statement
            except WireFormatError:  # cannot happen for a stored envelope; never let a view crash on it
                statement = None
        source = statement.source if statement is not None else None
        uptime = statement.uptime_s if statement is not None else None
        cache[key] = (source, uptime, stored.received_at if stored is not None else float("nan"))
    return cache[key]


def alarm_events(store: SQLiteStore, device: str | None = None, asset: str | None = None) -> list[AlarmRecord]:
    """Every alarm event stored, by device and seq (the device's own order, whatever order they arrived in)."""
    groups: dict[tuple[str, int, str], dict[str, Reading]] = {}
    for reading in store.records_named(device, prefixes=(PREFIX,)):
        parsed = parse_alarm_name(reading.name)
        if parsed is None:
            continue
        groups.setdefault((reading.device, reading.seq, parsed.alarm), {})[parsed.field] = reading
    cache: dict = {}
    out = []
    for (dev, seq, name), fields in groups.items():
        head = fields.get("")
        if head is None or head.string not in STATES:
            continue
        _, kind, owner = name.split(".", 2)
        if asset is not None and owner != asset:
            continue
        value = fields.get("value")
        source, uptime, received_at = _envelope_facts(store, dev, seq, cache)
        out.append(AlarmRecord(
            device=dev, seq=seq, asset=owner, kind=kind, state=head.string,
            severity=(fields["severity"].string or "") if "severity" in fields else "",
            sensors=tuple(s for s in (fields["sensors"].string or "").split(",") if s) if "sensors" in fields else (),
            value=value.value if value is not None else None, unit=value.unit if value is not None else None,
            detail=(fields["detail"].string or "") if "detail" in fields else "",
            time=head.time, received_at=received_at, clock_source=source, uptime_s=uptime,
        ))
    out.sort(key=lambda a: (a.device, a.seq))
    return out


def open_alarms(events: Iterable[AlarmRecord]) -> dict[tuple[str, str], AlarmRecord]:
    """(device, alarm name) -> the raising event, for alarms whose latest event (by seq) is "raised"."""
    latest: dict[tuple[str, str], AlarmRecord] = {}
    for event in sorted(events, key=lambda a: (a.device, a.seq)):
        latest[(event.device, event.name)] = event
    return {key: event for key, event in latest.items() if event.state == RAISED}


def _manifest(store: SQLiteStore, device: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """asset -> (kind, sensors) from the device's newest signed manifest."""
    records = store.records_named(device, prefixes=("asset.",), newest_first=True)
    if not records:
        return {}
    newest = records[0].seq
    assets: dict[str, dict[str, str]] = {}
    for record in records:
        if record.seq != newest:
            break
        parts = record.name.split(".")
        if len(parts) == 3 and record.string is not None:
            assets.setdefault(parts[1], {})[parts[2]] = record.string
    return {name: (fields.get("kind", "?"), tuple(s for s in fields.get("sensors", "").split(",") if s))
            for name, fields in assets.items()}


def state_of(last_seen: float | None, alarms: tuple, risks: tuple[Risk, ...]) -> str:
    """OK only with data, no open alarm and no risk; GAPS when the only risks are gaps."""
    if last_seen is None:
        return "RISK" if risks else "NO DATA"  # a key refused for another binding, a device never heard from
    if alarms:
        return "ALARM"
    if any(r.kind != "gap" for r in risks):
        return "RISK"
    return "GAPS" if risks else "OK"


def asset_status(store: SQLiteStore, device: str | None = None, judge: Judge | None = None) -> list[AssetStatus]:
    """Each asset of each device (the gateway itself included): last seen, last verified reading, open alarms, risks.

    Without a `judge` (the lender's time, token key and site records) only the
    risks that need none of them are judged, as of the device's last arrival.
    """
    devices = [device] if device is not None else sorted({d.device for d in store.devices()} | set(store.envelope_devices()))
    events = alarm_events(store, device)
    opened = open_alarms(events)
    out = []
    for dev in devices:
        assets = _manifest(store, dev)
        for event in events:
            if event.device == dev and event.asset not in assets:
                assets[event.asset] = ("gateway" if event.asset == GATEWAY else "?", ())
        assets.setdefault(GATEWAY, ("gateway", ()))
        last = store.last_received(dev)
        findings = explain_gaps(store.missing_ranges(dev), store.gap_records(dev))
        unexplained = tuple((f.missing.first, f.missing.last) for f in findings if not f.explained)
        explained = sum(1 for f in findings if f.explained)
        newest = store.envelope(dev, last[0]) if last else None
        freshness = ("none" if newest is None else "legacy: no freshness" if newest.version < 2
                     else "lender token" if newest.token is not None else "none")
        risks = tuple(device_risks(store, dev, judge or Judge(now=last[1] if last else 0.0),
                                   open_alarms={name for d, name in opened if d == dev}))
        for name, (kind, sensors) in sorted(assets.items(), key=lambda item: (item[0] == GATEWAY, item[0])):
            reading = None
            if sensors:
                found = store.records_named(dev, names=sensors, prefixes=tuple(s + "." for s in sensors),
                                            newest_first=True, limit=1)
                reading = found[0] if found else None
            alarms = tuple(sorted((e for (d, _), e in opened.items() if d == dev and e.asset == name),
                                  key=lambda e: e.seq))
            out.append(AssetStatus(dev, name, kind, sensors, last[1] if last else None, last[0] if last else None,
                                   reading, alarms, unexplained, explained,
                                   state_of(last[1] if last else None, alarms, risks), risks, freshness))
    return out
