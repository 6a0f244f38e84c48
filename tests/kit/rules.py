"""Synthetic sample streams for the rules tests: a simulated clock, samples, GNSS fixes and noise traces.

Time in a test is seconds `t` after T0 (Monday 2026-01-05 00:00 UTC); the
monotonic clock is `BOOT + t` unless a test makes the wall clock jump.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

from agent.assets import AccessHours, Asset, LatLon, RuleSettings, parse_window
from agent.clock import Instant
from agent.rules import AlarmEvent, RulesEngine, SensorSpec
from drivers.sensor import Sample

T0 = 1_767_571_200  # Monday 2026-01-05T00:00:00Z
BOOT = 5_000.0      # monotonic seconds at T0
HOUR, DAY = 3600.0, 86400.0
DEPOT = LatLon(52.5200, 13.4050)


def at(t: float, *, synced: bool = True, wall: float | None = None, source: str = "ntp") -> Instant:
    return Instant(BOOT + t, T0 + t if wall is None else wall, synced, source if synced else "none")


def sample(name: str, value, t: float, unit: str | None = None) -> Sample:
    return Sample(name, value, unit, T0 + t)


def hours(*windows: str, timezone: str = "UTC") -> AccessHours:
    return AccessHours(tuple(parse_window(w) for w in windows), timezone)


def offset(origin: LatLon, north_m: float, east_m: float) -> LatLon:
    """The point `north_m` north and `east_m` east of `origin` (local plane; fine for fences)."""
    lat = origin.lat + math.degrees(north_m / 6_371_008.8)
    lon = origin.lon + math.degrees(east_m / (6_371_008.8 * math.cos(math.radians(origin.lat))))
    return LatLon(lat, lon)


def fix(sensor: str, position: LatLon, t: float, hdop: float | None = 1.0, speed: float | None = None) -> list[Sample]:
    """The samples one poll of a GNSS receiver gives (as drivers.gnss.GnssReceiver.read does)."""
    out = [sample(f"{sensor}.lat", position.lat, t, "lat"), sample(f"{sensor}.lon", position.lon, t, "lon")]
    if hdop is not None:
        out.append(sample(f"{sensor}.hdop", hdop, t))
    if speed is not None:
        out.append(sample(f"{sensor}.speed", speed, t, "m/s"))
    return out


def noise_trace(seed: int, count: int, *, uere_m: float = 5.0, rho: float = 0.5) -> list[tuple[float, float, float]]:
    """(north error m, east error m, HDOP) per fix: realistic receiver noise for a parked asset.

    HDOP wanders between 0.7 and 3 with occasional spikes to 6 (a truck
    parks beside the antenna); the position error is Gauss-Markov with
    per-axis sigma HDOP x UERE / sqrt(2) and correlation `rho` between fixes
    (multipath makes GNSS errors stick for tens of seconds).
    """
    rng = random.Random(seed)
    north = east = 0.0
    hdop = 1.0
    out = []
    for _ in range(count):
        hdop = min(3.0, max(0.7, hdop + rng.gauss(0, 0.1)))
        shown = hdop if rng.random() > 0.01 else rng.uniform(4, 6)
        sigma = shown * uere_m / math.sqrt(2)
        keep = math.sqrt(1 - rho * rho)
        north = rho * north + keep * rng.gauss(0, sigma)
        east = rho * east + keep * rng.gauss(0, sigma)
        out.append((north, east, round(shown, 1)))
    return out


def engine(assets: Sequence[Asset], sensors: Iterable[tuple[str, str, float]], settings: RuleSettings = RuleSettings(),
           *, start: float = 0.0, restore=None) -> RulesEngine:
    return RulesEngine(assets, [SensorSpec(*s) for s in sensors], settings, start=at(start), restore=restore)


def alarms(emissions, *kinds: str) -> list[tuple[str, str]]:
    """(name, state) of the alarm events, only of `kinds` if given."""
    return [(e.name, e.state) for e in emissions if isinstance(e, AlarmEvent) and (not kinds or e.kind in kinds)]
