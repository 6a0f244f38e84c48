"""agent.rules — the edge rules: samples and clock instants in, alarms, access events and daily summaries out.

Pure code (only `RulesStateFile`, at the end, touches a file). `RulesEngine` is fed every sample list the agent records
(`observe`), a `tick` every second or so (time-driven rules: hold times,
silence, quiet periods, day ends, connectivity), the lender's acks
(`lender_contact`) and the modem's identity (`modem_identity`, called by the
modem health monitor). Each call takes an `agent.clock.Instant` and returns
what to record, in order; nothing here reads a clock or does I/O, so tests
run simulated days in milliseconds.

The rules (docs/lender-guide.md explains each to the lender):

| alarm                      | raised when                                              | cleared when |
| -------------------------- | -------------------------------------------------------- | ------------ |
| alarm.tamper.<asset>       | a tamper contact is open outside permitted hours          | all its tamper contacts are closed |
| alarm.door.<asset>         | a door contact is open outside permitted hours            | all its doors are closed |
| alarm.geofence.<asset>     | N consecutive fixes confidently outside the fence          | N consecutive fixes inside it |
| alarm.motion.<asset>       | a stationary asset moves outside permitted hours (PIR, or GNSS speed on N fixes) | `motion_quiet_s` without motion |
| alarm.temperature.<asset>  | out of band for the band's hold time (also humidity, weight) | back inside the band by its hysteresis |
| alarm.silence.<asset>      | a bound sensor gave no sample for k x its interval         | every silent sensor reports again |
| alarm.connectivity.gateway | no lender ack for `ack_alarm_hours`                        | the lender acks again |
| alarm.sim.gateway / alarm.modem.gateway | the ICCID / IMEI differs from the enrolled one | the enrolled one is back, or a technician accepts the new one |

Each alarm is latched: it is raised once and cleared once, never raised twice
without a clear in between. Inside permitted hours an opened door or tamper
contact is an *event* (`event.door.<asset>` opened/closed), not an alarm.
Access hours need a trusted wall clock: while the clock is unsynchronized
every hour counts as outside permitted hours (an opening is an alarm), and so
does it while a device that holds a lender token has had no lender time since
it started (agent.clock: the borrower's NTP cannot permit an opening).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.assets import GATEWAY, Asset, LatLon, RuleSettings, local_date, zone
from agent.clock import Instant
from agent.exc import StateError
from agent.state import AtomicJSONStorage
from drivers.sensor import Sample
from telemetry import manifest
from telemetry.alarms import CLEARED, RAISED, SEVERITY, alarm_name, parse_alarm_name
from telemetry.senml import Record

log = logging.getLogger(__name__)

# SenML unit of a sample -> (quantity, factor to the band's unit)
QUANTITIES = {"Cel": ("temperature", 1.0), "%RH": ("humidity", 1.0), "kg": ("weight", 1.0), "g": ("weight", 0.001)}


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What the rules know of a configured sensor: its name, driver kind and polling interval."""

    name: str
    kind: str
    interval_s: float


def sensor_specs(configs: Iterable[Any], kinds: Mapping[type, str]) -> tuple[SensorSpec, ...]:
    """Specs of configured sensors; `kinds` maps each driver config class to its kind (agent.config.SENSOR_KINDS inverted)."""
    return tuple(SensorSpec(c.name, kinds[type(c)], float(c.interval_s)) for c in configs)


# --- what the engine emits ---------------------------------------------------------------------

def _unproven(instant: Instant) -> str:
    """Why the time of an alarm could not prove permission, for its detail ('' when the clock was trusted)."""
    if not instant.synced:
        return " (clock unsynchronized)"
    return " (no lender time since the agent started)" if instant.awaiting_lender else ""


def _times(instant: Instant) -> float | None:
    return instant.trusted_wall


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """An alarm raised or cleared: `alarm.<kind>.<asset>` with its severity and what decided it."""

    kind: str
    asset: str
    state: str
    instant: Instant
    sensors: tuple[str, ...] = ()
    value: float | None = None
    unit: str | None = None
    detail: str = ""
    alarm = True

    @property
    def name(self) -> str:
        return alarm_name(self.kind, self.asset)

    @property
    def severity(self) -> str:
        return SEVERITY[self.kind]

    def records(self) -> list[Record]:
        t = _times(self.instant)
        out = [Record(self.name, string=self.state, time=t), Record(f"{self.name}.severity", string=self.severity, time=t)]
        if self.sensors:
            out.append(Record(f"{self.name}.sensors", string=",".join(self.sensors), time=t))
        if self.value is not None:
            out.append(Record(f"{self.name}.value", value=_round(self.value), unit=self.unit, time=t))
        if self.detail:
            out.append(Record(f"{self.name}.detail", string=self.detail[:160], time=t))
        return out


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """A door or tamper contact opened or closed inside permitted hours: `event.<kind>.<asset>`."""

    kind: str
    asset: str
    state: str  # "opened" | "closed"
    instant: Instant
    sensors: tuple[str, ...] = ()
    alarm = False

    @property
    def name(self) -> str:
        return f"event.{self.kind}.{self.asset}"

    def records(self) -> list[Record]:
        t = _times(self.instant)
        return [Record(self.name, string=self.state, time=t),
                Record(f"{self.name}.sensors", string=",".join(self.sensors), time=t)]


@dataclass(frozen=True, slots=True)
class DailyUtilization:
    """Run time of an asset's machine on one local day: `utilization.<asset>.run` (s), `.starts`, `.day`."""

    asset: str
    day: str
    run_s: float
    starts: int
    instant: Instant
    alarm = False

    def records(self) -> list[Record]:
        t, base = _times(self.instant), f"utilization.{self.asset}"
        return [Record(f"{base}.day", string=self.day, time=t),
                Record(f"{base}.run", value=_round(self.run_s), unit="s", time=t),
                Record(f"{base}.starts", value=self.starts, unit="count", time=t)]


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the device declares at every start: the assets and the sensors bound to each, so the lender knows
    what watches what, and (telemetry.manifest) its heartbeat interval and the digest of the rules it runs."""

    assets: tuple[Asset, ...]
    instant: Instant
    heartbeat_s: float | None = None
    rules_digest: str | None = None
    alarm = False

    def records(self) -> list[Record]:
        t, out = _times(self.instant), []
        for asset in self.assets:
            out += [Record(f"asset.{asset.name}.kind", string=asset.kind, time=t),
                    Record(f"asset.{asset.name}.sensors", string=",".join(asset.sensors), time=t)]
        if self.heartbeat_s is not None:
            out.append(Record(manifest.HEARTBEAT_S, value=self.heartbeat_s, unit="s", time=t))
        if self.rules_digest is not None:
            out.append(Record(manifest.RULES, string=self.rules_digest, time=t))
        return out


Emission = AlarmEvent | AccessEvent | DailyUtilization | Manifest


def _round(value: float) -> float:
    # three decimals: enough for any band or distance, and a shorter float on the wire more often
    return value if isinstance(value, int) else round(float(value), 3)


# --- one alarm's latch ---------------------------------------------------------------------

class _Latch:
    """Raised once when its first condition becomes active, cleared once when the last one is resolved."""

    def __init__(self, kind: str, asset: str) -> None:
        self.kind, self.asset = kind, asset
        self.raised = False
        self.active: set[str] = set()

    @property
    def name(self) -> str:
        return alarm_name(self.kind, self.asset)

    def activate(self, key: str, instant: Instant, **details) -> list[Emission]:
        self.active.add(key)
        if self.raised:
            return []
        self.raised = True
        return [AlarmEvent(self.kind, self.asset, RAISED, instant, tuple(sorted(self.active)), **details)]

    def resolve(self, key: str, instant: Instant, **details) -> list[Emission]:
        self.active.discard(key)
        if not self.raised or self.active:
            return []
        self.raised = False
        return [AlarmEvent(self.kind, self.asset, CLEARED, instant, (key,), **details)]


# --- per-rule state ---------------------------------------------------------------------------

@dataclass
class _Series:
    """A measured series judged against a band: when it went out, and whether it is an active condition."""

    out_since: float | None = None
    last: float | None = None
    active: bool = False


@dataclass
class _FenceTrack:
    outside_run: int = 0
    inside_run: int = 0
    moving_run: int = 0
    last_fix_time: float | None = None


@dataclass
class _Usage:
    running: dict[str, bool] = field(default_factory=dict)
    since: float | None = None  # monotonic time accrual was last advanced to
    day: str | None = None
    run_s: float = 0.0
    starts: int = 0

    @property
    def any_running(self) -> bool:
        return any(self.running.values())


class RulesEngine:
    """All edge rules of one site; see the module docstring. Single-threaded: the agent's event loop owns it."""

    def __init__(
        self,
        assets: Sequence[Asset],
        sensors: Sequence[SensorSpec],
        settings: RuleSettings = RuleSettings(),
        *,
        start: Instant,
        restore: Mapping | None = None,
        permits: Callable[[str, float, str | None], bool] | None = None,
    ) -> None:
        self.assets = tuple(assets)
        # the lender's signed permits in force (agent.commands.CommandInbox.permitted): access windows beside the hours
        self.permits = permits
        self.settings = settings
        self.sensors = {s.name: s for s in sensors}
        unknown = sorted({name for a in self.assets for name in a.sensors} - set(self.sensors))
        if unknown:
            raise ValueError(f"assets bind sensors that are not configured: {', '.join(unknown)}")
        # sensor -> the assets it watches (unbound sensors watch the gateway)
        self.bound: dict[str, tuple[str, ...]] = {
            s: tuple(a.name for a in self.assets if s in a.sensors) or (GATEWAY,) for s in self.sensors}
        self._by_name = {a.name: a for a in self.assets}
        self._latches: dict[str, _Latch] = {}
        self._contacts: dict[str, bool] = {}            # contact sensor -> open
        self._series: dict[tuple[str, str, str], _Series] = {}  # (asset, quantity, sample name)
        self._fences: dict[tuple[str, str], _FenceTrack] = {}   # (asset, gnss sensor)
        self._last_motion: dict[str, float] = {}        # asset -> monotonic time of the last motion
        self._pir_active: dict[str, bool] = {}
        self._pir_events: dict[str, float] = {}
        self._last_seen = {name: start.monotonic for name in self.sensors}
        self._silent: set[str] = set()
        self._last_ack = start.monotonic
        self._usage = {a.name: _Usage(since=start.monotonic) for a in self.assets
                       if any(self.sensors[s].kind == "run-hours" for s in a.sensors)}
        self.modem: dict[str, str] = {}
        self._restore(restore or {}, start)

    # --- state across restarts ---

    def snapshot(self) -> dict:
        """What must survive a restart (JSON-able): raised alarms, the enrolled modem identity, today's usage."""
        return {
            "raised": {name: sorted(latch.active) for name, latch in self._latches.items() if latch.raised},
            "modem": dict(self.modem),
            "usage": {asset: {"day": u.day, "run_s": u.run_s, "starts": u.starts} for asset, u in self._usage.items()},
        }

    def _restore(self, saved: Mapping, start: Instant) -> None:
        """Take back a snapshot; anything in it of the wrong shape is ignored (the file is ours, but be sure)."""
        def mapping(value: object) -> dict:
            return dict(value) if isinstance(value, Mapping) else {}

        for name, active in mapping(saved.get("raised")).items():
            parsed = parse_alarm_name(name) if isinstance(name, str) else None
            if parsed is None or parsed.field or parsed.kind not in SEVERITY:
                continue
            latch = self._latch(parsed.kind, parsed.asset)
            latch.raised = True
            if parsed.kind == "silence" and isinstance(active, list):  # still silent until each of them reports
                keys = [k for k in active if isinstance(k, str) and k in self.sensors]
                latch.active.update(keys)
                self._silent.update(keys)
            if parsed.kind == "motion":
                self._last_motion[parsed.asset] = start.monotonic
        self.modem = {k: v for k, v in mapping(saved.get("modem")).items() if k in ("imei", "iccid") and isinstance(v, str)}
        for asset, usage in mapping(saved.get("usage")).items():
            if asset in self._usage and isinstance(usage, Mapping):
                day, run_s, starts = usage.get("day"), usage.get("run_s"), usage.get("starts")
                self._usage[asset].day = day if isinstance(day, str) else None
                self._usage[asset].run_s = float(run_s) if isinstance(run_s, (int, float)) else 0.0
                self._usage[asset].starts = starts if isinstance(starts, int) else 0

    @property
    def raised(self) -> frozenset[str]:
        """Names of the alarms currently raised."""
        return frozenset(name for name, latch in self._latches.items() if latch.raised)

    def _latch(self, kind: str, asset: str) -> _Latch:
        name = alarm_name(kind, asset)
        if name not in self._latches:
            self._latches[name] = _Latch(kind, asset)
        return self._latches[name]

    def manifest(self, instant: Instant, *, heartbeat_s: float | None = None, rules_digest: str | None = None) -> Manifest:
        return Manifest(self.assets, instant, heartbeat_s, rules_digest)

    # --- helpers ---

    def _sensor_of(self, sample: str) -> str | None:
        """The configured sensor a sample name belongs to: `name` itself or `name.<part>`, longest match."""
        best = None
        for name in self.sensors:
            if (sample == name or sample.startswith(name + ".")) and (best is None or len(name) > len(best)):
                best = name
        return best

    def _permitted(self, asset: str, instant: Instant, sensor: str | None = None) -> bool:
        found = self._by_name.get(asset)
        if found is None or not instant.synced or instant.awaiting_lender:
            return False  # the gateway has no access hours; an untrusted clock cannot prove permission
        if self.permits is not None and self.permits(asset, instant.wall, sensor):
            return True
        return found.access.permits(instant.wall)

    # --- the entry points ---

    def observe(self, samples: Sequence[Sample], instant: Instant) -> list[Emission]:
        """Judge one reading (the samples of one poll or one pushed change), taken at `instant`."""
        out: list[Emission] = []
        by_sensor: dict[str, list[Sample]] = {}
        for sample in samples:
            sensor = self._sensor_of(sample.name)
            if sensor is not None:
                by_sensor.setdefault(sensor, []).append(sample)
        for sensor, group in by_sensor.items():
            out += self._seen(sensor, instant)
            kind = self.sensors[sensor].kind
            if kind == "contact":
                out += self._contact(sensor, group, instant)
            elif kind == "motion":
                out += self._motion(sensor, group, instant)
            elif kind == "gnss":
                out += self._gnss(sensor, group, instant)
            elif kind == "run-hours":
                out += self._running(sensor, group, instant)
            out += self._bands(sensor, group, instant)
        return out

    def tick(self, instant: Instant) -> list[Emission]:
        """Time-driven rules: hold times running out, silence, quiet periods, day ends, connectivity."""
        out: list[Emission] = []
        out += self._tick_contacts(instant)
        out += self._tick_bands(instant)
        out += self._tick_silence(instant)
        out += self._tick_motion(instant)
        out += self._tick_usage(instant)
        out += self._tick_connectivity(instant)
        return out

    def lender_contact(self, instant: Instant) -> list[Emission]:
        """The lender acked a batch (the uplink's last exchange was delivered)."""
        self._last_ack = instant.monotonic
        return self._latch("connectivity", GATEWAY).resolve("uplink", instant, detail="the lender acks again")

    def modem_identity(self, instant: Instant, *, imei: str | None = None, iccid: str | None = None) -> list[Emission]:
        """The modem health monitor read the modem's IMEI and the SIM's ICCID; the first ones seen are enrolled."""
        out: list[Emission] = []
        for key, value, kind, what in (("iccid", iccid, "sim", "SIM (ICCID)"), ("imei", imei, "modem", "modem (IMEI)")):
            if not value:
                continue
            enrolled = self.modem.get(key)
            if enrolled is None:
                self.modem[key] = value
                log.info("rules: enrolled %s %s", what, value)
            elif value != enrolled:
                out += self._latch(kind, GATEWAY).activate(key, instant, detail=f"{what} {enrolled} replaced by {value}")
            else:
                out += self._latch(kind, GATEWAY).resolve(key, instant, detail=f"the enrolled {what} {value} is back")
        return out

    def accept_modem_identity(self, instant: Instant, *, imei: str | None = None, iccid: str | None = None) -> list[Emission]:
        """A technician swapped the SIM or modem on purpose: enroll the new identity and clear the alarm."""
        out: list[Emission] = []
        for key, value, kind in (("iccid", iccid, "sim"), ("imei", imei, "modem")):
            if value:
                self.modem[key] = value
                out += self._latch(kind, GATEWAY).resolve(key, instant, detail=f"{key} {value} accepted")
        return out

    # --- silence ---

    def _seen(self, sensor: str, instant: Instant) -> list[Emission]:
        self._last_seen[sensor] = instant.monotonic
        if sensor not in self._silent:
            return []
        self._silent.discard(sensor)
        out: list[Emission] = []
        for asset in self.bound[sensor]:
            out += self._latch("silence", asset).resolve(sensor, instant, detail=f"{sensor} reports again")
        return out

    def _tick_silence(self, instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for name, spec in self.sensors.items():
            quiet = instant.monotonic - self._last_seen[name]
            limit = self.settings.silence_factor * spec.interval_s
            if name in self._silent or quiet <= limit:
                continue
            self._silent.add(name)
            for asset in self.bound[name]:
                out += self._latch("silence", asset).activate(
                    name, instant, value=quiet, unit="s",
                    detail=f"no sample from {name} for {quiet:.0f} s (limit {limit:g} s)")
        return out

    # --- doors and tamper switches ---

    def _contact_kind(self, asset: str, sensor: str) -> str:
        found = self._by_name.get(asset)
        return "door" if found is not None and sensor not in found.tamper else "tamper"

    def _contact(self, sensor: str, group: list[Sample], instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for sample in group:
            if sample.name != sensor or not isinstance(sample.value, bool):
                continue
            was_open, is_open = self._contacts.get(sensor), sample.value
            self._contacts[sensor] = is_open
            for asset in self.bound[sensor]:
                kind = self._contact_kind(asset, sensor)
                latch = self._latch(kind, asset)
                if is_open and not self._permitted(asset, instant, sensor):
                    out += latch.activate(sensor, instant, detail=f"{sensor} opened outside permitted hours"
                                          + _unproven(instant))
                elif is_open and was_open is not True:
                    out.append(AccessEvent(kind, asset, "opened", instant, (sensor,)))
                elif not is_open:
                    cleared = latch.resolve(sensor, instant, detail=f"{sensor} closed")
                    out += cleared
                    if was_open and not cleared and not latch.raised:
                        out.append(AccessEvent(kind, asset, "closed", instant, (sensor,)))
        return out

    def _tick_contacts(self, instant: Instant) -> list[Emission]:
        """A contact opened in permitted hours and still open after them raises its alarm."""
        out: list[Emission] = []
        for sensor, is_open in self._contacts.items():
            if not is_open:
                continue
            for asset in self.bound[sensor]:
                latch = self._latch(self._contact_kind(asset, sensor), asset)
                if sensor not in latch.active and not self._permitted(asset, instant, sensor):
                    out += latch.activate(sensor, instant, detail=f"{sensor} still open after permitted hours")
        return out

    # --- bands: temperature, humidity, weight ---

    def _bands(self, sensor: str, group: list[Sample], instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for sample in group:
            quantity = QUANTITIES.get(sample.unit or "")
            if quantity is None or isinstance(sample.value, (bool, str)):
                continue
            value = sample.value * quantity[1]
            for asset in self.bound[sensor]:
                band = self._by_name[asset].band(quantity[0]) if asset in self._by_name else None
                if band is None:
                    continue
                series = self._series.setdefault((asset, quantity[0], sample.name), _Series())
                series.last = value
                out += self._judge_series(asset, quantity[0], sample.name, series, instant)
        return out

    def _judge_series(self, asset: str, quantity: str, name: str, series: _Series, instant: Instant) -> list[Emission]:
        band = self._by_name[asset].band(quantity)
        value = series.last
        assert band is not None and value is not None  # series exist only for assets with this band, once fed
        unit = "kg" if quantity == "weight" else ("Cel" if quantity == "temperature" else "%RH")
        latch = self._latch(quantity, asset)
        if band.outside(value):
            if series.out_since is None:
                series.out_since = instant.monotonic
            held = instant.monotonic - series.out_since
            if held >= band.hold_s and not series.active:
                series.active = True
                edge = band.high if band.high is not None and value > band.high else band.low
                side = "above" if band.high is not None and value > band.high else "below"
                return latch.activate(name, instant, value=value, unit=unit,
                                      detail=f"{name} {value:g} {unit} {side} {edge:g} for {held:.0f} s")
            return []
        series.out_since = None
        if band.recovered(value) and (series.active or latch.raised):
            series.active = False
            return latch.resolve(name, instant, value=value, unit=unit, detail=f"{name} back to {value:g} {unit}")
        return []

    def _tick_bands(self, instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for (asset, quantity, name), series in self._series.items():
            if series.out_since is not None and not series.active and series.last is not None:
                out += self._judge_series(asset, quantity, name, series, instant)
        return out

    # --- GNSS: geofence and movement ---

    def _gnss(self, sensor: str, group: list[Sample], instant: Instant) -> list[Emission]:
        values = {s.name[len(sensor) + 1:]: s for s in group if s.name.startswith(sensor + ".")}
        if "lat" not in values or "lon" not in values:
            return []
        fix_time = values["lat"].time
        hdop = values["hdop"].value if "hdop" in values else None
        speed = values["speed"].value if "speed" in values else None
        try:
            position = LatLon(float(values["lat"].value), float(values["lon"].value))
        except (TypeError, ValueError):
            return []
        s = self.settings
        if hdop is not None and (not isinstance(hdop, (int, float)) or hdop > s.max_hdop):
            return []  # too poor to judge: neither counts nor resets
        sigma = (hdop if hdop is not None else s.max_hdop) * s.uere_m
        out: list[Emission] = []
        for asset_name in self.bound[sensor]:
            asset = self._by_name.get(asset_name)
            if asset is None:
                continue
            track = self._fences.setdefault((asset_name, sensor), _FenceTrack())
            if track.last_fix_time == fix_time:
                continue  # the same fix polled again is no new evidence
            track.last_fix_time = fix_time
            if asset.geofence is not None:
                out += self._fence(asset, sensor, track, position, sigma, hdop, instant)
            if asset.stationary and isinstance(speed, (int, float)):
                # Doppler speed noise at rest is ~0.1 m/s; N fixes in a row above the threshold is a real move
                track.moving_run = track.moving_run + 1 if speed > s.moving_speed_m_s else 0
                if track.moving_run >= s.fence_fixes:
                    out += self._moved(asset_name, sensor, instant, speed, "m/s", f"GNSS speed {speed:.1f} m/s")
        return out

    def _fence(self, asset: Asset, sensor: str, track: _FenceTrack, position: LatLon, sigma: float,
               hdop: float | None, instant: Instant) -> list[Emission]:
        s = self.settings
        fence = asset.geofence
        assert fence is not None  # only assets with a fence are judged here
        beyond = fence.outside_by_m(position)
        latch = self._latch("geofence", asset.name)
        track.outside_run = track.outside_run + 1 if beyond > s.fence_sigmas * sigma else 0
        track.inside_run = track.inside_run + 1 if beyond <= 0 else 0
        hdop_text = f"HDOP {hdop:g}" if hdop is not None else "no HDOP"
        if track.outside_run >= s.fence_fixes:
            return latch.activate(sensor, instant, value=beyond, unit="m",
                                  detail=f"{beyond:.0f} m outside the fence on {track.outside_run} fixes ({hdop_text})")
        if track.inside_run >= s.fence_fixes and latch.raised:
            return latch.resolve(sensor, instant, value=beyond, unit="m",
                                 detail=f"back inside the fence on {track.inside_run} fixes ({hdop_text})")
        return []

    # --- motion of a stationary asset ---

    def _moved(self, asset: str, sensor: str, instant: Instant, value: float | None, unit: str | None,
               how: str) -> list[Emission]:
        if self._permitted(asset, instant):
            return []  # moving things is what permitted hours are for
        self._last_motion[asset] = instant.monotonic
        return self._latch("motion", asset).activate("motion", instant, value=value, unit=unit,
                                                      detail=f"{how} while declared stationary")

    def _motion(self, sensor: str, group: list[Sample], instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for sample in group:
            moved = False
            if sample.name == sensor and isinstance(sample.value, bool):
                moved = sample.value and not self._pir_active.get(sensor, False)
                self._pir_active[sensor] = sample.value
            elif sample.name == sensor + ".events" and isinstance(sample.value, (int, float)):
                before = self._pir_events.get(sensor)
                self._pir_events[sensor] = sample.value
                moved = before is not None and sample.value > before  # motion came and went between polls
            if not moved:
                continue
            for asset in self.bound[sensor]:
                if asset in self._by_name and self._by_name[asset].stationary:
                    out += self._moved(asset, sensor, instant, None, None, f"motion sensed by {sensor}")
        return out

    def _tick_motion(self, instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for asset, last in self._last_motion.items():
            latch = self._latch("motion", asset)
            pir_active = any(self._pir_active.get(s, False) for s in self._by_name[asset].sensors) \
                if asset in self._by_name else False
            if pir_active:
                self._last_motion[asset] = last = instant.monotonic
            if latch.raised and instant.monotonic - last >= self.settings.motion_quiet_s:
                out += latch.resolve("motion", instant, detail=f"no movement for {self.settings.motion_quiet_s:g} s")
        return out

    # --- utilization ---

    def _running(self, sensor: str, group: list[Sample], instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for sample in group:
            if sample.name != sensor + ".running" or not isinstance(sample.value, bool):
                continue
            for asset in self.bound[sensor]:
                usage = self._usage.get(asset)
                if usage is None:
                    continue
                out += self._advance(asset, usage, instant)  # accrue (and end the day) under the old state first
                before = usage.any_running
                usage.running[sensor] = sample.value
                if usage.any_running and not before:
                    usage.starts += 1
        return out

    def _advance(self, asset: str, usage: _Usage, instant: Instant) -> list[Emission]:
        """Accrue run time up to `instant`; at the end of a local day emit its summary."""
        elapsed = max(0.0, instant.monotonic - (usage.since if usage.since is not None else instant.monotonic))
        usage.since = instant.monotonic
        if not instant.synced:
            usage.run_s += elapsed if usage.any_running else 0.0
            return []  # day ends cannot be placed without a trusted clock; accrue to the day in progress
        tz = self._by_name[asset].access.timezone
        today = local_date(instant.wall, tz)
        if usage.day is None or usage.day == today:
            usage.day = today
            usage.run_s += elapsed if usage.any_running else 0.0
            return []
        local = datetime.fromtimestamp(instant.wall, zone(tz))
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        into_today = min(elapsed, max(0.0, (local - midnight) / timedelta(seconds=1)))
        if usage.any_running:
            usage.run_s += elapsed - into_today
        summary = DailyUtilization(asset, usage.day, usage.run_s, usage.starts, instant)
        usage.day, usage.run_s, usage.starts = today, into_today if usage.any_running else 0.0, 0
        return [summary]

    def _tick_usage(self, instant: Instant) -> list[Emission]:
        out: list[Emission] = []
        for asset, usage in self._usage.items():
            out += self._advance(asset, usage, instant)
        return out

    # --- connectivity ---

    def _tick_connectivity(self, instant: Instant) -> list[Emission]:
        hours = (instant.monotonic - self._last_ack) / 3600
        if hours < self.settings.ack_alarm_hours:
            return []
        return self._latch("connectivity", GATEWAY).activate(
            "uplink", instant, value=hours, unit="h", detail=f"no lender ack for {hours:.1f} h")


class RulesStateFile:
    """The engine's snapshot on disk, so raised alarms stay latched across restarts (the one I/O in this module).

    Written with agent.state's atomic, checksummed JSON storage: after a power
    cut the file is the old snapshot or the new one, whole. A damaged or
    unreadable file is logged and the engine starts fresh (an alarm still
    holding is then raised again: a duplicate the lender sees, never a loss).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._storage = AtomicJSONStorage(self.path)
        self._last: dict | None = None

    def load(self) -> dict:
        try:
            return self._storage.read() or {}
        except StateError as exc:
            log.error("rules: %s; starting without the saved alarm state", exc)
            return {}

    def save(self, snapshot: dict) -> None:
        if snapshot == self._last:
            return
        try:
            self._storage.write(snapshot)
            self._last = snapshot
        except StateError as exc:
            log.error("rules: cannot save the alarm state: %s", exc)


def alternation_ok(events: Iterable[Emission]) -> bool:
    """True when, per alarm name, the events go raised, cleared, raised, ... (what the latches guarantee)."""
    state: dict[str, bool] = {}
    for event in events:
        if not isinstance(event, AlarmEvent):
            continue
        raised = state.get(event.name, False)
        if (event.state == RAISED) == raised:
            return False
        state[event.name] = event.state == RAISED
    return True


__all__ = [
    "AccessEvent", "AlarmEvent", "DailyUtilization", "Emission", "Manifest", "RulesEngine",
    "RulesStateFile", "SensorSpec", "alternation_ok", "sensor_specs",
]
