"""The lender's own judgement of a device: the risks it can name from what it holds, whatever the device says.

The borrower controls the gateway: its disk, clock, power and network. What
they do to hide an event must leave the lender in a named, non-OK state. Each
`Risk` here is computed at query time from the evidence store (and the
lender's own records: its token key, its site records, its staff's reviews),
never from the device's opinion of itself:

* ``silent``     no envelope for more than `missed` declared heartbeats;
* ``gap``        a gap record the device signed (readings lost, by whose hand the lender cannot tell) that
                 no staff member reviewed yet, or seqs missing that nothing explains;
* ``alarm-lost`` the device's signed alarm counter is ahead of the alarm envelopes received, or an
                 overflow record claims to have dropped an alarm (impossible by design);
* ``chain``      the chain restarts from genesis, the boot counter or the signed counters go back, a token
                 older than one already signed, a version 1 envelope after version 2 ones, or a second
                 envelope for a stored seq (kept in quarantine: a wiped or forked chain);
* ``clock``      a token this lender did not issue to the device, records dated before the token they carry
                 or after they arrived;
* ``rules``      the rules the device declares running differ from the enrolled site record;
* ``binding``    envelopes bound to another enrollment (refused, kept in quarantine);
* ``site``       the lender's own reading of the raw evidence against the site record it holds: the newest
                 GNSS fix outside the enrolled geofence, or a temperature / humidity / weight outside the
                 enrolled band for longer than its hold time, while the device raised no alarm for it;
* ``rollback``   a TPM-attested gateway's TPM counted more envelope signatures between two of its certified
                 counter statements (telemetry.tpmcount, one per boot) than the seqs between them: envelopes
                 signed and never delivered, then signed again from a restored state directory; a statement
                 that does not verify against the attestation key the enrollment proved; a boot that begins
                 without one.
"""
from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lender.enrollment.attestation import recorded_attestation_key
from lender.evidence.commands import CommandDesk
from lender.evidence.store import EvidenceStore, Review, StoredEnvelope, explain_gaps
from telemetry import tpmcount
from telemetry.ack import Reason
from telemetry.command import LOCAL_RULES
from telemetry.envelope import GENESIS, GapReason, decode
from telemetry.exc import WireFormatError
from telemetry.freshness import token_genuine, token_time
from telemetry.manifest import DEFAULT_HEARTBEAT_S, HEARTBEAT_S, RULES, rules_digest

KINDS = ("silent", "gap", "alarm-lost", "chain", "clock", "rules", "binding", "site", "rollback", "key")
EARTH_RADIUS_M = 6_371_000.0
FENCE_MARGIN_M = 50.0       # a GNSS fix's own error: the lender calls a fix outside only beyond this
UNITS = {"Cel": ("temperature", 1.0), "%RH": ("humidity", 1.0), "kg": ("weight", 1.0), "g": ("weight", 0.001)}
MISSED_HEARTBEATS = 3
CLOCK_TOLERANCE_S = 120.0   # a record dated this much before its token, or after its arrival, is a lie


@dataclass(frozen=True, slots=True)
class Risk:
    """Something the lender cannot call OK: its kind (one of `KINDS`), why, since when, and at which seq."""

    kind: str
    detail: str
    since: float | None = None
    seq: int | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "since": self.since, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Judge:
    """What the lender judges with besides the store: now, its token key, its site records, its patience."""

    now: float
    token_key: bytes | None = None
    sites_dir: Path | None = None
    missed_heartbeats: float = MISSED_HEARTBEATS
    enroll_dir: Path | None = None   # DATA/enroll (enrollment records); default: the folder above `sites_dir`

    @property
    def enrollment_records(self) -> Path | None:
        return self.enroll_dir or (self.sites_dir.parent if self.sites_dir is not None else None)


def device_risks(store: EvidenceStore, device: str, judge: Judge, open_alarms: Iterable[str] = ()) -> list[Risk]:
    """Every risk the lender sees for `device`, in the order of `KINDS`; `open_alarms`: its alarm names still raised."""
    envelopes = list(store.envelopes(device))
    registered = store.device(device)
    risks: list[Risk] = []
    risks += _silence(store, device, envelopes, registered.registered_at if registered else None, judge)
    risks += _gaps(store, device, envelopes)
    risks += _lost_alarms(store, device, envelopes)
    risks += _chain(store, device, envelopes)
    risks += _clock(store, device, envelopes, judge)
    if registered is not None and registered.asset:
        risks += _rules(store, device, registered.asset, judge)
    risks += _binding(store, device)
    if registered is not None and registered.asset and judge.sites_dir is not None:
        risks += _site(store, device, registered.asset, judge.sites_dir, set(open_alarms))
    risks += _rollback(store, device, envelopes, judge)
    if registered is not None:   # lender.evidence.ingest's findings on key handovers: never cleared by data
        risks += [Risk("key", why, None, registered.key_since)
                  for why in (registered.key_race, registered.key_storage_note) if why is not None]
    return risks


def _newest_value(store: EvidenceStore, device: str, name: str):
    found = store.records_named(device, names=(name,), newest_first=True, limit=1)
    return found[0] if found else None


def declared_heartbeat(store: EvidenceStore, device: str) -> float:
    """The heartbeat silence is judged on: the shortest interval the device ever declared (default 300 s)."""
    # The shortest, not the newest: a borrower who raises heartbeat_s in agent.toml and restarts (a new
    # manifest) before cutting the power must buy no patience with it.
    declared = [float(r.value) for r in store.records_named(device, names=(HEARTBEAT_S,))
                if isinstance(r.value, (int, float)) and math.isfinite(r.value) and r.value > 0]
    return min(declared, default=DEFAULT_HEARTBEAT_S)


def _silence(store, device: str, envelopes: list[StoredEnvelope], registered_at: float | None,
             judge: Judge) -> list[Risk]:
    heartbeat = declared_heartbeat(store, device)
    last = max((e.received_at for e in envelopes), default=registered_at)
    if last is None:
        return []
    limit = judge.missed_heartbeats * heartbeat
    if judge.now - last <= limit:
        return []
    what = "no envelope" if envelopes else "nothing ever"
    return [Risk("silent", f"{what} for {_duration(judge.now - last)} (heartbeat {heartbeat:g} s, the shortest "
                           f"declared; silent after {judge.missed_heartbeats:g} missed)", last + limit)]


def _reviewed(reviews: Iterable[Review]) -> set[int]:
    return {r.seq for r in reviews}


def _gaps(store, device: str, envelopes: list[StoredEnvelope]) -> list[Risk]:
    reviewed = _reviewed(store.reviews(device))
    received = {e.seq: e.received_at for e in envelopes}
    risks = []
    for record in store.gap_records(device):
        if record.seq in reviewed:
            continue
        span = (f"seqs {record.first}..{record.last}" if record.first is not None and record.last is not None
                else f"{record.count} reading(s)" if record.count is not None else "readings")
        risks.append(Risk("gap", f"seq {record.seq} declares {record.reason}: {span} lost; by whose hand the lender "
                                 "cannot tell (review it: pledgewatch lender review)",
                          received.get(record.seq), record.seq))
    for finding in explain_gaps(store.missing_ranges(device), store.gap_records(device)):
        if not finding.explained:
            first = "start" if finding.missing.first is None else finding.missing.first
            risks.append(Risk("gap", f"seqs {first}..{finding.missing.last} missing, and no signed gap record "
                                     "explains them", received.get(finding.missing.last + 1), finding.missing.last))
    return risks


def _lost_alarms(store, device: str, envelopes: list[StoredEnvelope]) -> list[Risk]:
    risks = []
    counted = [e for e in envelopes if e.alarm_count is not None]
    if counted:
        first = counted[0]
        newest = max(counted, key=lambda e: (e.alarm_count, e.seq))
        # The counters start at 0 with the device's chain. When the lender holds nothing older than the first
        # counted envelope (a spool-reset record over seqs it never got, say), every alarm counted before it is
        # lost; only older (version 1) envelopes stored below it make its counters a baseline.
        base = 0 if first is envelopes[0] else first.alarm_count - int(first.alarm_records)
        expected = newest.alarm_count - base
        received = sum(1 for e in envelopes if first.seq <= e.seq <= newest.seq and e.alarm_records)
        if expected > received:
            risks.append(Risk("alarm-lost", f"{expected - received} alarm(s) signed by the device and never received "
                                            f"(its counter says {newest.alarm_count} at seq {newest.seq}; "
                                            f"{received} arrived since seq {first.seq})",
                              newest.received_at, newest.seq))
    for e in envelopes:
        if e.gap_reason == GapReason.OVERFLOW.value:
            gap = _decoded_gap(e)
            if gap is not None and gap.alarms_dropped:
                risks.append(Risk("alarm-lost", f"seq {e.seq}: an overflow record says {gap.alarms_dropped} alarm(s) "
                                                "were dropped, which the spool never does: the record itself is suspect",
                                  e.received_at, e.seq))
    return risks


def _decoded_gap(stored: StoredEnvelope):
    try:
        return decode(stored.raw).gap
    except WireFormatError:
        return None


def _chain(store, device: str, envelopes: list[StoredEnvelope]) -> list[Risk]:
    risks = []
    for before, after in zip(envelopes, envelopes[1:]):
        where = f"seq {after.seq}"
        if after.boot < before.boot:
            risks.append(Risk("chain", f"{where}: the boot counter goes back ({before.boot} at seq {before.seq}, "
                                       f"{after.boot} here)", after.received_at, after.seq))
        if after.prev == GENESIS and after.gap_reason != GapReason.SPOOL_RESET.value:
            risks.append(Risk("chain", f"{where}: the chain starts again from genesis", after.received_at, after.seq))
        if after.version == 1 < before.version:  # versions 2 and 3 (a node's compact form) promise the same
            risks.append(Risk("chain", f"{where}: version 1 after version {before.version} "
                                       "(legacy: no freshness, no counters)", after.received_at, after.seq))
        for name, old, new in (("alarm", before.alarm_count, after.alarm_count),
                               ("gap", before.gap_count, after.gap_count)):
            if old is not None and new is not None and new < old:
                risks.append(Risk("chain", f"{where}: the signed {name} counter goes back ({old} at seq {before.seq}, "
                                           f"{new} here): the device's state was rolled back", after.received_at,
                                  after.seq))
    tokened = [e for e in envelopes if e.token is not None]
    for before, after in zip(tokened, tokened[1:]):
        if token_time(after.token) < token_time(before.token):
            risks.append(Risk("chain", f"seq {after.seq} carries a lender token older than seq {before.seq}'s: "
                                       "the device's state was restored from an older copy", after.received_at,
                              after.seq))
    forks = [q for q in store.quarantined(1000, device=device) if q.reason in (Reason.CONFLICT, Reason.CHAIN)]
    if forks:
        seqs = sorted({q.seq for q in forks if q.seq is not None})
        shown = ", ".join(map(str, seqs[:8])) + (" ..." if len(seqs) > 8 else "")
        risks.append(Risk("chain", f"{sum(q.count for q in forks)} envelope(s) that do not fit the stored chain "
                                   f"(seqs {shown}): a second chain, from a wiped or forked device",
                          min(q.first_seen for q in forks), seqs[0] if seqs else None))
    return risks


def _clock(store, device: str, envelopes: list[StoredEnvelope], judge: Judge) -> list[Risk]:
    risks = []
    times = store.record_times(device)
    for e in envelopes:
        low, high = times.get(e.seq, (None, None))
        if high is not None and high > e.received_at + CLOCK_TOLERANCE_S:
            risks.append(Risk("clock", f"seq {e.seq} is dated {_duration(high - e.received_at)} after it arrived",
                              e.received_at, e.seq))
        if e.token is None:
            continue
        if judge.token_key is not None and not token_genuine(judge.token_key, device, e.token):
            risks.append(Risk("clock", f"seq {e.seq} carries a token this lender did not issue to {device}",
                              e.received_at, e.seq))
            continue
        issued = token_time(e.token)
        if issued > e.received_at + CLOCK_TOLERANCE_S:
            risks.append(Risk("clock", f"seq {e.seq} carries a token from after its own arrival", e.received_at, e.seq))
        if low is not None and low < issued - CLOCK_TOLERANCE_S:
            risks.append(Risk("clock", f"seq {e.seq} is dated {_duration(issued - low)} before the lender token it "
                                       "carries: the device's clock is behind the lender's, or lies",
                              e.received_at, e.seq))
    return risks


def enrolled_rules_digest(sites_dir: Path, asset: str) -> str | None:
    """The rules digest of the site record the lender holds for `asset`, or None without a readable one."""
    try:
        data = tomllib.loads((sites_dir / f"{asset}.toml").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    assets, rules = data.get("assets", []), data.get("rules", {})
    if not isinstance(assets, list) or not isinstance(rules, dict):
        return None
    return rules_digest(assets, rules)


def _rules(store, device: str, asset: str, judge: Judge) -> list[Risk]:
    declared = _newest_value(store, device, RULES)
    if declared is None:
        return []
    # once the device applied a configuration from the lender (issue 15), that is what it must run
    configured = CommandDesk(store, None).configured_rules_digest(device)
    if configured is not None:
        risks = []
        if declared.string != configured:
            risks.append(Risk("rules", f"the device runs rules {declared.string!r} (manifest at seq {declared.seq}); "
                                       f"the lender's configuration it applied says {configured}", declared.at,
                              declared.seq))
        local = _newest_value(store, device, LOCAL_RULES)
        if local is not None and local.seq >= declared.seq:   # reported with the newest manifest
            risks.append(Risk("rules", f"agent.toml at the site has rules {local.string!r}, not the lender's "
                                       f"configuration in force ({configured}): edited locally, or not updated "
                                       f"(seq {local.seq})", local.at, local.seq))
        return risks
    if judge.sites_dir is None:
        return []
    enrolled = enrolled_rules_digest(judge.sites_dir, asset)
    if enrolled is None:
        return []
    if declared.string != enrolled:
        return [Risk("rules", f"the device runs rules {declared.string!r} (manifest at seq {declared.seq}); the site "
                              f"record of {asset} says {enrolled}: its thresholds, fences or hours were changed",
                     declared.at, declared.seq)]
    return []


def _binding(store, device: str) -> list[Risk]:
    refused = [q for q in store.quarantined(1000, device=device) if q.reason == Reason.BINDING]
    if not refused:
        return []
    return [Risk("binding", f"{sum(q.count for q in refused)} envelope(s) bound to another enrollment were refused "
                            f"(the same key pledged elsewhere?): {refused[0].detail}",
                 min(q.first_seen for q in refused), refused[0].seq)]


def _rollback(store, device: str, envelopes: list[StoredEnvelope], judge: Judge) -> list[Risk]:
    """The TPM's count of envelope signatures against the seqs the lender holds (telemetry.tpmcount).

    Between two verified statements at seqs a < b (counts ca, cb, each taken before its envelope's own
    signature), the device signed exactly seqs a..b-1: cb - ca = b - a, plus at most one count per unclean end
    (a signature cut off between the count and the spool: a power-loss record says so), plus the readings a
    storage-failure record says were signed and not stored. Seqs the device itself says were lost with its spool
    (a spool-reset record) were not necessarily signed, so there the count says how many were. Anything more
    was signed and never reached the lender: the state directory was restored and those seqs signed again.
    Only the TPM's statements enter this; nothing the device's state files say does."""
    readings = store.records_named(device, names=(tpmcount.RECORD,))
    folder = judge.enrollment_records
    if not readings or folder is None:
        return []
    key = recorded_attestation_key(folder, device)
    if key is None:
        return []  # not tpm-attested: the label says so; its statements prove nothing the lender could check
    by_seq = {e.seq: e for e in envelopes}
    risks: list[Risk] = []
    statements: list[tuple[StoredEnvelope, tpmcount.CounterStatement]] = []
    for reading in readings:
        envelope = by_seq.get(reading.seq)
        if envelope is None or reading.data is None:
            continue
        try:
            statements.append((envelope, tpmcount.read_statement(reading.data, key, device=device, boot=envelope.boot,
                                                                 seq=envelope.seq, prev=envelope.prev)))
        except tpmcount.CounterStatementError as exc:
            risks.append(Risk("rollback", f"seq {envelope.seq} (boot {envelope.boot}) carries a TPM counter statement "
                                          f"that proves nothing: {exc}", envelope.received_at, envelope.seq))
    if not statements:
        return risks
    gaps = store.gap_records(device)
    held = sorted(by_seq)
    reviewed = _reviewed(store.reviews(device))
    for (a, first), (b, second) in zip(statements, statements[1:]):
        counted = second.count - first.count
        where = f"boot {b.boot} (seq {b.seq})"
        since = f"since seq {a.seq} (boot {a.boot}, count {first.count})"
        if counted < 0:
            risks.append(Risk("rollback", f"{where}: the TPM's count {second.count} is below its count {since}: "
                                          "not the counter it certified before", b.received_at, b.seq))
            continue
        reset = [g for g in gaps if g.reason == GapReason.SPOOL_RESET.value and g.first is not None
                 and g.last is not None and g.last >= a.seq and g.first < b.seq]
        in_reset = sum(1 for seq in range(a.seq, b.seq) if seq not in by_seq
                       and any(g.first <= seq <= g.last for g in reset)) if reset else 0
        signed = b.seq - a.seq - in_reset   # held, or missing and signed (in flight, dropped by overflow, refused)
        stored_not = sum(g.count or 0 for g in gaps
                         if g.reason == GapReason.STORAGE_FAILURE.value and a.seq < g.seq <= b.seq)
        cuts = [g.seq for g in gaps if g.reason == GapReason.POWER_LOSS.value and a.seq < g.seq <= b.seq]
        unaccounted = counted - signed - stored_not
        if unaccounted <= 0:
            continue
        told = (f"{counted} signature(s) counted for {b.seq - a.seq} seqs"
                + (f", {in_reset} of them lost with the spool by the device's own account (seq {reset[0].seq})"
                   if in_reset else "")
                + (f", {stored_not} reading(s) signed and not stored (storage-failure record)" if stored_not else ""))
        if unaccounted <= len(cuts):
            if all(seq in reviewed for seq in cuts):
                continue
            risks.append(Risk("rollback", f"{device} {where}: the TPM counted {unaccounted} signature(s) the lender "
                                          f"never received {since}: {told}; the unclean end declared at seq "
                                          f"{', '.join(map(str, cuts))} may explain {len(cuts)} (a signature cut off "
                                          "before its envelope was stored), or an envelope was signed and withheld "
                                          "(review the power-loss record)", b.received_at, b.seq))
        else:
            risks.append(Risk("rollback", f"{device} {where}: the TPM counted {unaccounted - len(cuts)} signature(s) "
                                          f"the lender never received {since}: {told}"
                                          + (f", {len(cuts)} unclean end(s) explaining one each" if cuts else "")
                                          + (": signed envelopes went with the spool the device says it lost (a "
                                             "damaged card), or the state directory was restored from an older copy"
                                             if in_reset else
                                             ": envelopes were signed and withheld, and the state directory was "
                                             "restored from an older copy to sign those seqs again"),
                              b.received_at, b.seq))
    # after its first statement, every boot of the device begins with one (a boot is held from its first seq on)
    certified_boots = {by_seq[r.seq].boot for r in readings if r.seq in by_seq}
    start = statements[0][0].seq
    for before, after in zip(held, held[1:]):
        e, f = by_seq[before], by_seq[after]
        if after > start and after == before + 1 and f.boot != e.boot and f.boot not in certified_boots:
            risks.append(Risk("rollback", f"{device} boot {f.boot} begins at seq {after} without a TPM counter "
                                          "statement: its signatures are not counted (an agent that does not count, "
                                          "or a TPM that failed to certify)", f.received_at, after))
    return risks


def _site_assets(sites_dir: Path, asset: str) -> list[dict]:
    try:
        data = tomllib.loads((sites_dir / f"{asset}.toml").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    assets = data.get("assets", [])
    return [a for a in assets if isinstance(a, dict) and isinstance(a.get("name"), str)] if isinstance(assets, list) else []


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((phi2 - phi1) / 2) ** 2
         + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _site(store, device: str, asset_id: str, sites_dir: Path, open_alarms: set[str]) -> list[Risk]:
    """Raw readings judged against the site record, where the device raised nothing."""
    risks = []
    for asset in _site_assets(sites_dir, asset_id):
        name = asset["name"]
        sensors = tuple(s for s in asset.get("sensors", []) if isinstance(s, str))
        if not sensors:
            continue
        fence = asset.get("geofence")
        if isinstance(fence, dict) and f"alarm.geofence.{name}" not in open_alarms:
            risks += _outside_fence(store, device, name, sensors, fence)
        readings = store.records_named(device, names=sensors, newest_first=True, limit=2000)
        for quantity in ("temperature", "humidity", "weight"):
            band = asset.get(quantity)
            if isinstance(band, dict) and f"alarm.{quantity}.{name}" not in open_alarms:
                risks += _out_of_band(readings, name, quantity, band)
    return risks


def _outside_fence(store, device: str, name: str, sensors: tuple[str, ...], fence: dict) -> list[Risk]:
    lat0, lon0, radius = (_number(fence.get(k)) for k in ("lat", "lon", "radius_m"))
    if lat0 is None or lon0 is None or radius is None:
        return []  # a polygon fence is the device's to judge; the lender checks circles
    for sensor in sensors:
        fixes = store.records_named(device, names=(f"{sensor}.lat", f"{sensor}.lon"), newest_first=True, limit=2)
        by_name = {r.name: r for r in fixes if r.seq == fixes[0].seq} if fixes else {}
        lat, lon = by_name.get(f"{sensor}.lat"), by_name.get(f"{sensor}.lon")
        if lat is None or lon is None or _number(lat.value) is None or _number(lon.value) is None:
            continue
        distance = _distance_m(lat0, lon0, float(lat.value), float(lon.value))
        if distance > radius + FENCE_MARGIN_M:
            return [Risk("site", f"{name}: the newest GNSS fix (seq {lat.seq}) is {distance / 1000:.1f} km from the "
                                 f"enrolled site, outside its {radius:g} m fence, and the device raised no alarm",
                         lat.at, lat.seq)]
    return []


def _out_of_band(readings: list, name: str, quantity: str, band: dict) -> list[Risk]:
    low, high = _number(band.get("low")), _number(band.get("high"))
    hold = _number(band.get("hold_s")) or 0.0
    run: list = []
    for reading in readings:  # newest first
        unit = UNITS.get(reading.unit or "")
        if unit is None or unit[0] != quantity or _number(reading.value) is None:
            continue
        value = float(reading.value) * unit[1]
        if (low is not None and value < low) or (high is not None and value > high):
            run.append((reading, value))
        else:
            break
    if not run or run[0][0].at - run[-1][0].at < hold:
        return []
    newest, value = run[0]
    return [Risk("site", f"{name}: {quantity} {value:g} (seq {newest.seq}) is outside the enrolled band "
                         f"{low if low is not None else '-'}..{high if high is not None else '-'} for "
                         f"{_duration(newest.at - run[-1][0].at)}, and the device raised no alarm",
                 run[-1][0].at, newest.seq)]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
