"""agent.assets — the pledged collateral a site watches, as validated data: assets, geofences, bands, access hours.

A site has assets (pledged stock, a vehicle, a machine). Each is bound to the
sensors that watch it and carries what the edge rules (agent.rules) judge it
by: a geofence (a circle or a polygon in WGS84 degrees), bands for
temperature, humidity and weight with a hold time and hysteresis, the hours
in which access is permitted, and whether it is declared stationary. Parsed
from the config's ``[[assets]]`` tables and its ``[rules]`` table:

    [rules]                       # site-wide rule settings (all optional)
    timezone = "Europe/Berlin"    # default for every asset's access hours and utilization day
    silence_factor = 3            # a sensor is silent after 3 x its interval without a sample
    fence_fixes = 3               # consecutive confident fixes outside (or inside) to raise (or clear)

    [[assets]]
    name = "cold-store"           # A-Z a-z 0-9 - _ (no dots: it is the last part of alarm.<kind>.<asset>)
    kind = "stock"                # stock | vehicle | machine
    sensors = ["temp", "door", "lid", "gnss"]
    tamper = ["lid"]              # contacts that are tamper switches; other contacts are doors
    access = ["mon-fri 07:00-18:00", "sat 08:00-12:00"]
    temperature = { low = 2.0, high = 8.0, hold_s = 600, hysteresis = 0.5 }
    geofence = { lat = 52.5200, lon = 13.4050, radius_m = 150 }
    # or geofence = { polygon = [[52.52, 13.40], [52.53, 13.40], [52.53, 13.41]] }

Errors are `agent.exc.ConfigError` and name the file, the table and key, and
what is allowed, like the rest of agent.config.
"""
from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agent.exc import ConfigError
from telemetry.alarms import GATEWAY

ASSET_KINDS = ("stock", "vehicle", "machine")
EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius; the fences here span metres to kilometres
MAX_FENCE_SPAN_M = 50_000.0   # the local plane used for polygons is accurate to well under 0.1 % below this

_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{2}:\d{2})\s*-\s*(?P<end>\d{2}:\d{2})\s*\Z")


# --- geometry ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LatLon:
    """A WGS84 position in degrees; south and west are negative."""

    lat: float
    lon: float

    def __post_init__(self) -> None:
        for label, value, limit in (("lat", self.lat, 90.0), ("lon", self.lon, 180.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{label} {value!r} must be a number of degrees")
            if not -limit <= value <= limit:
                raise ValueError(f"{label} {value!r} is outside -{limit:g}..{limit:g} degrees")


def _local_xy(origin: LatLon, point: LatLon) -> tuple[float, float]:
    """`point` in metres east and north of `origin` on a local tangent plane (equirectangular)."""
    d_lon = (point.lon - origin.lon + 540.0) % 360.0 - 180.0  # across the antimeridian too
    x = math.radians(d_lon) * EARTH_RADIUS_M * math.cos(math.radians((point.lat + origin.lat) / 2))
    y = math.radians(point.lat - origin.lat) * EARTH_RADIUS_M
    return x, y


def distance_m(a: LatLon, b: LatLon) -> float:
    """Great-circle distance in metres (haversine)."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    d_phi, d_lambda = phi2 - phi1, math.radians(b.lon - a.lon)
    h = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class Circle:
    """A circular geofence: inside while within `radius_m` of `center`."""

    center: LatLon
    radius_m: float

    def __post_init__(self) -> None:
        if isinstance(self.radius_m, bool) or not isinstance(self.radius_m, (int, float)) or not 1 <= self.radius_m <= MAX_FENCE_SPAN_M:
            raise ValueError(f"radius_m {self.radius_m!r} must be between 1 and {MAX_FENCE_SPAN_M:g} metres")

    def outside_by_m(self, point: LatLon) -> float:
        """Signed metres beyond the fence: > 0 outside, < 0 inside (its magnitude: distance to the boundary)."""
        return distance_m(self.center, point) - self.radius_m


def _segments_cross(p1, p2, q1, q2) -> bool:
    def orient(a, b, c) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
    d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0


def _distance_to_segment(p, a, b) -> float:
    ax, ay = b[0] - a[0], b[1] - a[1]
    length2 = ax * ax + ay * ay
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * ax + (p[1] - a[1]) * ay) / length2))
    return math.hypot(p[0] - a[0] - t * ax, p[1] - a[1] - t * ay)


@dataclass(frozen=True, slots=True)
class Polygon:
    """A polygonal geofence (a yard, a warehouse plot): vertices in order, not closed, not self-crossing."""

    vertices: tuple[LatLon, ...]
    _plane: tuple[tuple[float, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.vertices) < 3:
            raise ValueError(f"a polygon needs at least 3 vertices, got {len(self.vertices)}")
        if len(set(self.vertices)) != len(self.vertices):
            raise ValueError("polygon vertices must be distinct (do not repeat the first vertex at the end)")
        plane = tuple(_local_xy(self.vertices[0], v) for v in self.vertices)
        span = max(math.hypot(x1 - x2, y1 - y2) for x1, y1 in plane for x2, y2 in plane)
        if span > MAX_FENCE_SPAN_M:
            raise ValueError(f"polygon spans {span / 1000:.1f} km; at most {MAX_FENCE_SPAN_M / 1000:g} km is allowed")
        edges = list(zip(plane, plane[1:] + plane[:1]))
        for i, (a, b) in enumerate(edges):
            for j in range(i + 2, len(edges)):
                if i == 0 and j == len(edges) - 1:
                    continue  # neighbours through the closing vertex
                if _segments_cross(a, b, *edges[j]):
                    raise ValueError(f"polygon edges {i + 1} and {j + 1} cross; list the vertices in order around it")
        area2 = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in edges)
        if abs(area2) / 2 < 1.0:
            raise ValueError("polygon has (almost) no area: its vertices are on one line")
        object.__setattr__(self, "_plane", plane)

    def outside_by_m(self, point: LatLon) -> float:
        """Signed metres beyond the fence: > 0 outside, < 0 inside (its magnitude: distance to the nearest edge)."""
        p = _local_xy(self.vertices[0], point)
        plane = self._plane
        edges = list(zip(plane, plane[1:] + plane[:1]))
        nearest = min(_distance_to_segment(p, a, b) for a, b in edges)
        inside = False
        for (x1, y1), (x2, y2) in edges:  # even-odd ray casting
            if (y1 > p[1]) != (y2 > p[1]) and p[0] < x1 + (p[1] - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return -nearest if inside else nearest


Geofence = Circle | Polygon


# --- bands -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Band:
    """An allowed range for a measured quantity, with a hold time before an alarm and hysteresis on the way back.

    A value outside [low, high] for `hold_s` seconds raises an alarm; it clears
    once a value is back inside [low + hysteresis, high - hysteresis]. Either
    bound may be omitted (a freezer has only a high bound).
    """

    low: float | None = None
    high: float | None = None
    hold_s: float = 300.0
    hysteresis: float = 0.0

    def __post_init__(self) -> None:
        for label, value in (("low", self.low), ("high", self.high)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"{label} {value!r} must be a number")
        if self.low is None and self.high is None:
            raise ValueError("a band needs low, high or both")
        if not isinstance(self.hold_s, (int, float)) or isinstance(self.hold_s, bool) or not 0 <= self.hold_s <= 7 * 86400:
            raise ValueError(f"hold_s {self.hold_s!r} must be between 0 and 604800 seconds")
        if not isinstance(self.hysteresis, (int, float)) or isinstance(self.hysteresis, bool) or not self.hysteresis >= 0:
            raise ValueError(f"hysteresis {self.hysteresis!r} must be a number >= 0")
        if self.low is not None and self.high is not None and not self.high - self.low > 2 * self.hysteresis:
            raise ValueError(f"high {self.high!r} must exceed low {self.low!r} by more than twice the hysteresis")

    def outside(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)

    def recovered(self, value: float) -> bool:
        """Back inside the band by at least the hysteresis (the clearing condition)."""
        return (self.low is None or value >= self.low + self.hysteresis) and (
            self.high is None or value <= self.high - self.hysteresis)


# --- access hours ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AccessWindow:
    """Access permitted on `days` (0 = Monday) from `start` to `end` minutes after local midnight.

    An `end` at or before `start` runs over midnight into the next day (a night
    shift "sun 22:00-06:00" belongs to Sunday and ends Monday 06:00).
    """

    days: frozenset[int]
    start: int
    end: int

    def covers(self, weekday: int, minute: float) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        return (weekday in self.days and minute >= self.start) or ((weekday - 1) % 7 in self.days and minute < self.end)


def _parse_days(text: str) -> frozenset[int]:
    if text in ("daily", "all"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) not in (1, 2) or any(e not in _DAYS for e in ends):
            raise ValueError(f"days {text!r}: use mon..sun, ranges like mon-fri, lists like mon,wed, or daily")
        first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        day = first
        while True:  # a range may wrap over the week's end (fri-mon)
            days.add(day)
            if day == last:
                break
            day = (day + 1) % 7
    return frozenset(days)


def _minutes(text: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"time {text!r} must be 00:00..24:00")
    return hours * 60 + minutes


def parse_window(text: str) -> AccessWindow:
    """One access window from "mon-fri 07:00-18:00", "sat,sun 09:00-12:00", "daily 22:00-06:00"."""
    match = _WINDOW.match(text.lower()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"access window {text!r} must look like 'mon-fri 07:00-18:00'")
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start == end or start == 24 * 60:
        raise ValueError(f"access window {text!r} is empty")
    return AccessWindow(_parse_days(match["days"]), start, end % (24 * 60) if end != 24 * 60 else end)


@dataclass(frozen=True, slots=True)
class AccessHours:
    """When access to an asset is permitted, in its local time zone. No windows: never."""

    windows: tuple[AccessWindow, ...] = ()
    timezone: str = "UTC"
    _zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", zone(self.timezone))

    def permits(self, wall: float) -> bool:
        """Whether access is permitted at UNIX time `wall` (a trusted wall clock is the caller's job)."""
        local = datetime.fromtimestamp(wall, self._zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        return any(window.covers(local.weekday(), minute) for window in self.windows)


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone `name`, or ValueError naming it."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValueError(f"timezone {name!r} is not an IANA zone name such as 'Europe/Berlin' or 'UTC'") from exc


def local_date(wall: float, timezone: str) -> str:
    """The ISO date at UNIX time `wall` in `timezone`."""
    return datetime.fromtimestamp(wall, zone(timezone)).date().isoformat()


# --- the asset and the site's rule settings ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Asset:
    """One pledged asset and everything the edge rules judge it by."""

    name: str
    kind: str
    sensors: tuple[str, ...]
    tamper: tuple[str, ...] = ()
    geofence: Geofence | None = None
    temperature: Band | None = None
    humidity: Band | None = None
    weight: Band | None = None
    access: AccessHours = AccessHours()
    stationary: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _ASSET_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} must be 1..32 of A-Z a-z 0-9 - _ and start with a letter or digit")
        if self.name == GATEWAY:
            raise ValueError(f"name {GATEWAY!r} is reserved for the gateway's own alarms")
        if self.kind not in ASSET_KINDS:
            raise ValueError(f"kind {self.kind!r} is unknown; allowed: {', '.join(ASSET_KINDS)}")
        if not set(self.tamper) <= set(self.sensors):
            raise ValueError(f"tamper lists {sorted(set(self.tamper) - set(self.sensors))}, which are not in sensors")

    def band(self, quantity: str) -> Band | None:
        return {"temperature": self.temperature, "humidity": self.humidity, "weight": self.weight}[quantity]


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """The ``[rules]`` table: how the edge rules weigh evidence, the same for every asset of the site."""

    timezone: str = "UTC"
    silence_factor: float = 3.0       # k: silent after k x the sensor's interval without a sample
    fence_fixes: int = 3              # N: consecutive confident fixes to raise (outside) or clear (inside)
    fence_sigmas: float = 2.0         # a fix is confidently outside when beyond the fence by this many sigma
    uere_m: float = 5.0               # user equivalent range error: sigma_horizontal ~ HDOP x UERE
    max_hdop: float = 10.0            # fixes with a worse HDOP are ignored (neither count nor reset)
    moving_speed_m_s: float = 1.5     # GNSS speed above this on N fixes is movement of a stationary asset
    motion_quiet_s: float = 300.0     # a motion alarm clears after this long without motion
    ack_alarm_hours: float = 6.0      # hours without a lender ack before the connectivity alarm

    def __post_init__(self) -> None:
        zone(self.timezone)
        for label, least in (("silence_factor", 1.0), ("fence_sigmas", 0.0), ("uere_m", 0.1), ("max_hdop", 0.5),
                             ("moving_speed_m_s", 0.1), ("motion_quiet_s", 1.0), ("ack_alarm_hours", 0.01)):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
                raise ValueError(f"{label} = {value!r} must be a number >= {least:g}")
        if isinstance(self.fence_fixes, bool) or not isinstance(self.fence_fixes, int) or not 1 <= self.fence_fixes <= 100:
            raise ValueError(f"fence_fixes = {self.fence_fixes!r} must be an integer 1..100")


# --- parsing the TOML tables ----------------------------------------------------------------

_ASSET_KEYS = ("name", "kind", "sensors", "tamper", "geofence", "temperature", "humidity", "weight", "access",
               "timezone", "stationary", "description")
_BAND_KEYS = ("low", "high", "hold_s", "hysteresis")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_rules(path: Path, data: object) -> RuleSettings:
    """The ``[rules]`` table (absent: the defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [rules] must be a table")
    allowed = [f for f in RuleSettings.__dataclass_fields__]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: [rules] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    try:
        return RuleSettings(**data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: [rules] {exc}") from exc


def _band(path: Path, table: str, key: str, data: object) -> Band:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{table}] {key} must be a table like {{ low = 2.0, high = 8.0, hold_s = 600 }}")
    unknown = sorted(set(data) - set(_BAND_KEYS))
    if unknown:
        raise ConfigError(f"{path}: [{table}] {key} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_BAND_KEYS)}")
    for name, value in data.items():
        if not _number(value):
            raise ConfigError(f"{path}: [{table}] {key}.{name} = {value!r} must be a number")
    try:
        return Band(**data)
    except ValueError as exc:
        raise ConfigError(f"{path}: [{table}] {key}: {exc}") from exc


def _geofence(path: Path, table: str, data: object) -> Geofence:
    shape = "{ lat = 52.52, lon = 13.405, radius_m = 150 } or { polygon = [[lat, lon], ...] }"
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{table}] geofence must be a table: {shape}")
    try:
        if set(data) == {"lat", "lon", "radius_m"}:
            if not all(_number(v) for v in data.values()):
                raise ValueError("lat, lon and radius_m must be numbers")
            return Circle(LatLon(float(data["lat"]), float(data["lon"])), float(data["radius_m"]))
        if set(data) == {"polygon"}:
            points = data["polygon"]
            if not isinstance(points, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p) for p in points):
                raise ValueError("polygon must be an array of [lat, lon] pairs")
            return Polygon(tuple(LatLon(float(lat), float(lon)) for lat, lon in points))
    except ValueError as exc:
        raise ConfigError(f"{path}: [{table}] geofence: {exc}") from exc
    raise ConfigError(f"{path}: [{table}] geofence has keys {', '.join(sorted(data)) or 'none'}; allowed: {shape}")


def _names(path: Path, table: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}: [{table}] {key} must be an array of sensor names")
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: [{table}] {key} names a sensor twice")
    return tuple(value)


def _asset(path: Path, index: int, data: object, sensor_kinds: Mapping[str, str], rules: RuleSettings) -> Asset:
    table = f"assets #{index + 1}"
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [[assets]] #{index + 1} must be a table")
    if isinstance(data.get("name"), str):
        table = f"assets #{index + 1} {data['name']}"
    unknown = sorted(set(data) - set(_ASSET_KEYS))
    if unknown:
        raise ConfigError(f"{path}: [{table}] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_ASSET_KEYS)}")
    for key in ("name", "kind", "sensors"):
        if key not in data:
            raise ConfigError(f"{path}: [{table}] needs key '{key}'")
    for key in ("name", "kind", "timezone", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: [{table}] {key} = {data[key]!r} must be a string")
    sensors = _names(path, table, "sensors", data["sensors"])
    missing = [s for s in sensors if s not in sensor_kinds]
    if missing:
        raise ConfigError(f"{path}: [{table}] sensors {', '.join(missing)} are not configured; "
                          f"allowed: the [[sensors]] names {', '.join(sensor_kinds) or '(none configured)'}")
    tamper = _names(path, table, "tamper", data.get("tamper", []))
    not_contacts = [s for s in tamper if sensor_kinds.get(s) != "contact"]
    if not_contacts:
        raise ConfigError(f"{path}: [{table}] tamper lists {', '.join(not_contacts)}; allowed: contact sensors of this asset")
    access = data.get("access", [])
    if not isinstance(access, list) or not all(isinstance(w, str) for w in access):
        raise ConfigError(f"{path}: [{table}] access must be an array of windows like \"mon-fri 07:00-18:00\"")
    stationary = data.get("stationary", data["kind"] != "vehicle")
    if not isinstance(stationary, bool):
        raise ConfigError(f"{path}: [{table}] stationary = {stationary!r} must be true or false")
    timezone = data.get("timezone", rules.timezone)
    try:
        zone(timezone)
    except ValueError as exc:
        raise ConfigError(f"{path}: [{table}] {exc}") from exc
    try:
        hours = AccessHours(tuple(parse_window(w) for w in access), timezone)
    except ValueError as exc:
        raise ConfigError(f"{path}: [{table}] access: {exc}") from exc
    bands = {q: _band(path, table, q, data[q]) for q in ("temperature", "humidity", "weight") if q in data}
    geofence = _geofence(path, table, data["geofence"]) if "geofence" in data else None
    try:
        return Asset(
            name=data["name"], kind=data["kind"], sensors=sensors, tamper=tamper, geofence=geofence, access=hours,
            stationary=stationary, description=data.get("description", ""), **bands,
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: [{table}] {exc}") from exc


def parse_assets(path: Path, data: object, sensor_kinds: Mapping[str, str],
                 rules: RuleSettings = RuleSettings()) -> tuple[Asset, ...]:
    """The ``[[assets]]`` array; `sensor_kinds` maps each configured sensor's name to its kind ("contact", ...)."""
    if not isinstance(data, list):
        raise ConfigError(f"{path}: assets must be an array of tables ([[assets]])")
    assets = tuple(_asset(path, index, item, sensor_kinds, rules) for index, item in enumerate(data))
    names = [a.name for a in assets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: asset name(s) {', '.join(duplicates)} used twice; each asset needs its own name")
    return assets


__all__ = [
    "ASSET_KINDS", "GATEWAY", "AccessHours", "AccessWindow", "Asset", "Band", "Circle", "Geofence", "LatLon",
    "Polygon", "RuleSettings", "distance_m", "local_date", "parse_assets", "parse_rules", "parse_window", "zone",
]

