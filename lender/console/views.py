"""What the pages and the JSON API show: the portfolio's rows and one asset's detail, as plain data.

The HTML pages (lender.console.app with templates/) and the JSON API
(``/api/...``) are two renderings of the same values built here, so the API
documented in docs/lender-console.md is exactly what the pages use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from lender.console.drawing import Fix, Point
from lender.console.portfolio import Portfolio, Row, SiteFacts
from lender.console.records import Ack, ConsoleRecords
from lender.evidence.alarms import AlarmRecord, alarm_events
from lender.evidence.commands import Answer, CommandDesk, IssuedCommand
from lender.evidence.registry import Device, iso_time
from lender.evidence.risks import UNITS, Risk
from lender.evidence.store import EvidenceStore, GapFinding, GapRecord, Reading, Review, explain_gaps
from telemetry.alarms import GATEWAY
from telemetry.command import RECORD_PREFIX, Command, Permit
from telemetry.envelope import decode
from telemetry.exc import TelemetryError
from telemetry.senml import Record

PAGE_SIZE = 100
COMMAND_LIMIT = 20      # commands on an asset page: the newest
SERIES_LIMIT = 2000     # readings per chart: the newest
FIX_LIMIT = 200         # GNSS fixes on the map: the newest
UTILIZATION_DAYS = 31
KEY_NAMES = {"EdDSA": "Ed25519 (EdDSA)", "ES256": "P-256 (ES256)"}   # Device.algorithm as a page names it


def reading_value(reading: Reading | None) -> object:
    if reading is None:
        return None
    return next((v for v in (reading.value, reading.string, reading.boolean, reading.sum) if v is not None), None)


def shown_value(reading: Reading | None) -> str:
    """A reading's value for a page: numbers to 7 significant digits (a float's noise is not evidence)."""
    value = reading_value(reading)
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def reading_json(reading: Reading | None) -> dict | None:
    if reading is None:
        return None
    return {"seq": reading.seq, "name": reading.name, "value": reading_value(reading), "unit": reading.unit,
            "time": iso_time(reading.time) if isinstance(reading.time, (int, float)) else None,
            "at": iso_time(reading.at)}


def alarm_json(alarm: AlarmRecord, acked: set | frozenset = frozenset()) -> dict:
    return {"device": alarm.device, "asset": alarm.asset, "name": alarm.name, "kind": alarm.kind,
            "state": alarm.state, "severity": alarm.severity, "seq": alarm.seq, "time": iso_time(alarm.time),
            "received_at": iso_time(alarm.received_at), "sensors": list(alarm.sensors), "value": alarm.value,
            "unit": alarm.unit, "detail": alarm.detail, "acknowledged": (alarm.device, alarm.name, alarm.seq) in acked}


def risk_json(risk: Risk) -> dict:
    return {"kind": risk.kind, "detail": risk.detail, "since": iso_time(risk.since), "seq": risk.seq}


def row_json(row: Row, now: float, acked: set | frozenset = frozenset()) -> dict:
    return {"device": row.device, "asset": row.asset, "kind": row.kind, "site": row.site, "borrower": row.borrower,
            "state": row.state, "last_seen": iso_time(row.last_seen),
            "last_seen_age_s": None if row.last_seen is None else round(now - row.last_seen, 1),
            "stale": row.stale(now), "heartbeat_s": row.heartbeat_s, "last_seq": row.last_seq,
            "last_reading": reading_json(row.last_reading), "revoked": row.revoked,
            "open_alarms": [alarm_json(a, acked) for a in row.open_alarms], "risks": [risk_json(r) for r in row.risks]}


@dataclass(frozen=True, slots=True)
class PortfolioPage:
    rows: list[Row]
    total: int          # rows matching the filters
    offset: int
    counts: dict[str, int]
    sites: list[str]
    borrowers: list[str]
    loading: tuple[int, int] | None   # (judged, expected) while the first pass runs


def portfolio_page(portfolio: Portfolio, *, state: str | None = None, site: str | None = None,
                   borrower: str | None = None, text: str | None = None, offset: int = 0,
                   limit: int = PAGE_SIZE) -> PortfolioPage:
    rows = portfolio.rows()
    if state or site or borrower or text:
        rows = [r for r in rows if r.matches(state=state, site=site, borrower=borrower, text=text)]
    sites, borrowers = portfolio.choices()
    offset = max(0, min(offset, max(0, len(rows) - 1)))
    loading = (len(portfolio), portfolio.expected) if len(portfolio) < portfolio.expected else None
    return PortfolioPage(rows[offset:offset + limit], len(rows), offset, portfolio.counts(), sites, borrowers, loading)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: float | None
    what: str           # "alarm" | "risk" | "ack" | "review"
    title: str
    detail: str
    seq: int | None
    state: str = ""     # an alarm's "raised" / "cleared"; a risk's "open"


@dataclass(frozen=True, slots=True)
class CommandLine:
    """One command to the device, as the desk audits it (lender.evidence.commands.CommandDesk.audit)."""

    command: IssuedCommand
    state: str                  # issued | delivered (pending) | applied | refused (the device signed it) | expired
    answer: Answer | None
    permit: Permit | None       # a permit's window and reason, read back from the signed bytes
    round_trip_s: float | None  # issued -> the answer's envelope stored
    snapshot: list[Record]      # an inspection's signed readings (the answer's envelope, its command.* records aside)

    @property
    def pending(self) -> bool:
        return self.state in ("issued", "delivered")


def command_lines(store: EvidenceStore, desk: CommandDesk, device: str) -> list[CommandLine]:
    """The device's newest commands with their state, a permit's window, an inspection's snapshot and round trip."""
    lines = []
    for command, state, answer in desk.audit(device)[-COMMAND_LIMIT:][::-1]:
        round_trip, snapshot = None, []
        stored = store.envelope(device, answer.seq) if answer is not None else None
        try:  # both were verified once (signed here, stored after their signature checked): only an edit fails
            body = Command.verify(command.raw, desk.lender.public_key).body
            if stored is not None:
                round_trip = stored.received_at - command.issued_at
                snapshot = [r for r in decode(stored.raw).records if not r.name.startswith(RECORD_PREFIX)]
        except TelemetryError:
            body = None
        lines.append(CommandLine(command, state, answer, body if isinstance(body, Permit) else None, round_trip,
                                 snapshot))
    return lines


@dataclass(frozen=True, slots=True)
class AssetDetail:
    row: Row
    device: Device | None
    facts: SiteFacts
    temperature: list[Point]
    weight: list[Point]
    humidity: list[Point]
    utilization: list[tuple[str, float]]      # (day, run hours)
    fixes: list[Fix]
    events: list[AlarmRecord]
    timeline: list[TimelineEntry]
    gaps: list[GapFinding]
    gap_records: list[GapRecord]
    reviews: list[Review]
    acks: list[Ack]
    acked: set
    commands: list[CommandLine]


def find_row(portfolio: Portfolio, device: str, asset: str) -> Row | None:
    return next((r for r in portfolio.device_rows(device) if r.asset == asset), None)


def _series(readings: list[Reading]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {"temperature": [], "humidity": [], "weight": []}
    for reading in readings:
        unit = UNITS.get(reading.unit or "")
        if unit is None or not isinstance(reading.value, (int, float)) or isinstance(reading.value, bool):
            continue
        out[unit[0]].append(Point(reading.at, float(reading.value) * unit[1]))
    return out


def _fixes(readings: list[Reading]) -> list[Fix]:
    halves: dict[tuple[int, str], dict[str, Reading]] = {}
    for reading in readings:
        base, _, axis = reading.name.rpartition(".")
        if axis in ("lat", "lon") and isinstance(reading.value, (int, float)):
            halves.setdefault((reading.seq, base), {})[axis] = reading
    return [Fix(float(h["lat"].value), float(h["lon"].value), h["lat"].at, seq)
            for (seq, _), h in halves.items() if "lat" in h and "lon" in h][:FIX_LIMIT]


def _utilization(store: EvidenceStore, device: str, asset: str) -> list[tuple[str, float]]:
    """Run hours per local day from the device's signed `utilization.<asset>.run` records (agent.rules)."""
    records = store.records_named(device, prefixes=(f"utilization.{asset}.",), newest_first=True,
                                  limit=UTILIZATION_DAYS * 6)
    by_seq: dict[int, dict[str, Reading]] = {}
    for record in records:
        by_seq.setdefault(record.seq, {})[record.name.rsplit(".", 1)[-1]] = record
    days: dict[str, float] = {}
    for fields in by_seq.values():
        day, run = fields.get("day"), fields.get("run")
        if day is not None and run is not None and isinstance(run.value, (int, float)) and day.string:
            days.setdefault(day.string, float(run.value) / 3600.0)  # newest first: the newest figure of a day wins
    return sorted(days.items())[-UTILIZATION_DAYS:]


def asset_detail(store: EvidenceStore, records: ConsoleRecords, desk: CommandDesk, row: Row,
                 facts: SiteFacts) -> AssetDetail:
    device = row.device
    enrolled = facts.asset(row.asset)
    status_sensors = row.sensors or tuple(s for s in enrolled.get("sensors", ()) if isinstance(s, str))
    readings = store.records_named(device, names=status_sensors, newest_first=True, limit=SERIES_LIMIT) \
        if status_sensors else []
    series = _series(readings)
    gnss = store.records_named(device, prefixes=tuple(f"{s}." for s in status_sensors), newest_first=True,
                               limit=FIX_LIMIT * 6) if status_sensors else []
    events = [e for e in alarm_events(store, device) if e.asset in (row.asset, GATEWAY)]
    reviews = store.reviews(device)
    acks = records.acks(device)
    acked = {(a.device, a.alarm, a.seq) for a in acks}
    timeline = [TimelineEntry(e.time if e.time is not None else e.received_at, "alarm", e.name,
                              e.detail or e.severity, e.seq, e.state) for e in events]
    timeline += [TimelineEntry(r.since, "risk", f"risk.{r.kind}", r.detail, r.seq, "open") for r in row.risks]
    timeline += [TimelineEntry(a.at, "ack", f"acknowledged {a.alarm}", f"{a.by}: {a.note}", a.seq) for a in acks]
    timeline += [TimelineEntry(r.at, "review", f"reviewed gap record seq {r.seq}", f"{r.reviewer}: {r.note}", r.seq)
                 for r in reviews]
    timeline.sort(key=lambda t: (t.at if t.at is not None else 0.0, t.seq or 0), reverse=True)
    return AssetDetail(
        row=row, device=store.device(device), facts=facts, temperature=series["temperature"],
        weight=series["weight"], humidity=series["humidity"], utilization=_utilization(store, device, row.asset),
        fixes=_fixes(gnss), events=events, timeline=timeline,
        gaps=explain_gaps(store.missing_ranges(device), store.gap_records(device)),
        gap_records=store.gap_records(device), reviews=reviews, acks=acks, acked=acked,
        commands=command_lines(store, desk, device),
    )


def asset_json(detail: AssetDetail, now: float) -> dict:
    d = detail.device
    return {
        **row_json(detail.row, now, detail.acked),
        "device_record": None if d is None else {
            "device": d.device, "kid": d.kid.hex(), "public_key_hex": d.public_key.hex(), "status": d.status.value,
            "registered_at": iso_time(d.registered_at), "revoked_at": iso_time(d.revoked_at),
            "asset": d.asset, "oscore": d.oscore_context is not None, "algorithm": d.algorithm,
            "key_storage": d.key_storage.value,
            "binding": d.binding.hex() if d.binding else None},
        "geofence": detail.facts.asset(detail.row.asset).get("geofence"),
        "fixes": [{"lat": f.lat, "lon": f.lon, "at": iso_time(f.at), "seq": f.seq} for f in detail.fixes],
        "series": {name: [[iso_time(p.at), p.value] for p in points] for name, points in
                   (("temperature", detail.temperature), ("humidity", detail.humidity), ("weight", detail.weight))},
        "utilization_hours": [[day, round(hours, 3)] for day, hours in detail.utilization],
        "alarm_events": [alarm_json(e, detail.acked) for e in detail.events],
        "gaps": [{"first": g.missing.first, "last": g.missing.last, "explained": g.explained,
                  "explained_by": g.explained_by.seq if g.explained_by else None} for g in detail.gaps],
        "gap_records": [{"seq": g.seq, "reason": g.reason, "first": g.first, "last": g.last, "count": g.count,
                         "reviews": [{"by": r.reviewer, "note": r.note, "at": iso_time(r.at)}
                                     for r in detail.reviews if r.seq == g.seq]} for g in detail.gap_records],
        "acks": [{"alarm": a.alarm, "seq": a.seq, "by": a.by, "note": a.note, "at": iso_time(a.at)}
                 for a in detail.acks],
        "commands": [command_json(line) for line in detail.commands],
    }


def command_json(line: CommandLine) -> dict:
    """A command as `lender commands --json` shows it, with what the page adds: pending, the permit, the snapshot."""
    permit = line.permit
    return {**line.command.as_json(line.state), "pending": line.pending,
            "answer_seq": line.answer.seq if line.answer else None, "detail": line.answer.detail if line.answer else None,
            "round_trip_ms": None if line.round_trip_s is None else round(line.round_trip_s * 1000, 1),
            "snapshot": [{"name": r.name, "value": reading_value(r), "unit": r.unit} for r in line.snapshot],
            "permit": None if permit is None else {"asset": permit.asset, "from": iso_time(permit.start),
                                                   "until": iso_time(permit.until), "reason": permit.reason}}


def age(seconds: float | None, now: float | None = None) -> str:
    """'3 s', '4 min', '2.5 h', '3 d' ago; 'never' for None."""
    if seconds is None:
        return "never"
    delta = max(0.0, (time.time() if now is None else now) - seconds)
    if delta < 90:
        return f"{delta:.0f} s"
    if delta < 5400:
        return f"{delta / 60:.0f} min"
    if delta < 172800:
        return f"{delta / 3600:.1f} h"
    return f"{delta / 86400:.0f} d"


def utc(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
