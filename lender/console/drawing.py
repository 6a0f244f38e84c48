"""Pictures the asset page draws on the server, as inline SVG: time series, bars per day, the geofence map.

No JavaScript and no online service: a chart is a polyline in an SVG, the map
is the fence circle and the recent GNSS fixes in Web Mercator pixels (the
projection of slippy-map tiles), with a scale bar. When the console is given
a tile URL template (``--tiles https://tiles.example/{z}/{x}/{y}.png``) the
tiles covering the view are drawn underneath; without one the map needs no
network at all. Every text that reaches the SVG is escaped (markupsafe).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from markupsafe import Markup

WIDTH, HEIGHT, MARGIN = 640, 180, 40
MAP_SIZE = 420
TILE = 256
EARTH_CIRCUMFERENCE_M = 40_075_016.686


@dataclass(frozen=True, slots=True)
class Point:
    at: float       # Unix seconds
    value: float


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    at: float
    seq: int


def _label(at: float, days: bool = False) -> str:
    moment = datetime.fromtimestamp(at, timezone.utc)
    return moment.strftime("%m-%d" if days else "%m-%d %H:%M")


def _number(value: float) -> str:
    return f"{value:.4g}"


def line_chart(points: Sequence[Point], *, unit: str, title: str, low: float | None = None,
               high: float | None = None) -> Markup:
    """A time series with the enrolled band (dashed) when there is one; an empty note when there are no points."""
    if not points:
        return Markup('<p class="empty">no {} readings</p>').format(title)
    points = sorted(points, key=lambda p: p.at)
    t0, t1 = points[0].at, points[-1].at
    values = [p.value for p in points] + [v for v in (low, high) if v is not None]
    v0, v1 = min(values), max(values)
    if v1 - v0 < 1e-9:
        v0, v1 = v0 - 1, v1 + 1
    pad = (v1 - v0) * 0.08
    v0, v1 = v0 - pad, v1 + pad
    span = max(t1 - t0, 1.0)

    def x(at: float) -> float:
        return MARGIN + (at - t0) / span * (WIDTH - 2 * MARGIN)

    def y(value: float) -> float:
        return HEIGHT - MARGIN / 2 - (value - v0) / (v1 - v0) * (HEIGHT - MARGIN)

    parts = [Markup('<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">').format(WIDTH, HEIGHT, title),
             Markup('<rect class="frame" x="{}" y="{}" width="{}" height="{}"/>').format(
                 MARGIN, MARGIN / 2, WIDTH - 2 * MARGIN, HEIGHT - MARGIN)]
    for bound in (low, high):
        if bound is not None:
            parts.append(Markup('<line class="band" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"/>').format(
                MARGIN, WIDTH - MARGIN, y(bound), y(bound)))
            parts.append(Markup('<text class="axis" x="{}" y="{:.1f}">{}</text>').format(
                WIDTH - MARGIN + 3, y(bound) + 4, _number(bound)))
    coords = " ".join(f"{x(p.at):.1f},{y(p.value):.1f}" for p in points)
    parts.append(Markup('<polyline class="series" points="{}"/>').format(coords))
    if len(points) == 1:
        parts.append(Markup('<circle class="series-dot" cx="{:.1f}" cy="{:.1f}" r="3"/>').format(
            x(points[0].at), y(points[0].value)))
    parts += [
        Markup('<text class="axis" x="2" y="{:.1f}">{}</text>').format(y(v1 - pad) + 4, _number(v1 - pad)),
        Markup('<text class="axis" x="2" y="{:.1f}">{}</text>').format(y(v0 + pad) + 4, _number(v0 + pad)),
        Markup('<text class="axis" x="{}" y="{}">{}</text>').format(MARGIN, HEIGHT - 2, _label(t0)),
        Markup('<text class="axis end" x="{}" y="{}">{}</text>').format(WIDTH - MARGIN, HEIGHT - 2, _label(t1)),
        Markup('<text class="title" x="{}" y="14">{} ({}), last {} </text>').format(
            MARGIN, title, unit, _number(points[-1].value)),
        Markup("</svg>"),
    ]
    return Markup("").join(parts)


def bar_chart(days: Sequence[tuple[str, float]], *, unit: str, title: str) -> Markup:
    """One bar per day (label, value), e.g. a machine's run-hours: utilization is a credit signal."""
    if not days:
        return Markup('<p class="empty">no {} yet</p>').format(title)
    top = max(v for _, v in days) or 1.0
    slot = (WIDTH - 2 * MARGIN) / len(days)
    parts = [Markup('<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">').format(WIDTH, HEIGHT, title),
             Markup('<text class="title" x="{}" y="14">{} ({} per day)</text>').format(MARGIN, title, unit)]
    for i, (label, value) in enumerate(days):
        h = value / top * (HEIGHT - MARGIN - 10)
        left = MARGIN + i * slot
        parts.append(Markup('<rect class="bar" x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}">'
                            '<title>{}: {} {}</title></rect>').format(
            left + slot * 0.15, HEIGHT - MARGIN / 2 - h, slot * 0.7, h, label, _number(value), unit))
        if len(days) <= 14 or i % math.ceil(len(days) / 14) == 0:
            parts.append(Markup('<text class="axis" x="{:.1f}" y="{}">{}</text>').format(left, HEIGHT - 2, label[5:]))
    parts.append(Markup('<text class="axis" x="2" y="{}">{}</text>').format(MARGIN, _number(top)))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _mercator(lat: float, lon: float, zoom: int) -> tuple[float, float]:
    scale = TILE * 2 ** zoom
    lat = max(-85.05112878, min(85.05112878, lat))
    phi = math.radians(lat)
    return ((lon + 180.0) / 360.0 * scale, (1 - math.log(math.tan(phi) + 1 / math.cos(phi)) / math.pi) / 2 * scale)


def fence_map(fence: dict | None, fixes: Sequence[Fix], *, tiles: str | None = None) -> Markup:
    """The geofence circle and the recent fixes (newest ringed), with tiles underneath when a URL is set."""
    circle = None
    if isinstance(fence, dict) and all(isinstance(fence.get(k), (int, float)) for k in ("lat", "lon", "radius_m")):
        circle = (float(fence["lat"]), float(fence["lon"]), float(fence["radius_m"]))
    if circle is None and not fixes:
        return Markup('<p class="empty">no geofence enrolled and no GNSS fixes</p>')
    lats = [f.lat for f in fixes] + ([circle[0]] if circle else [])
    lons = [f.lon for f in fixes] + ([circle[1]] if circle else [])
    lat_c = (min(lats) + max(lats)) / 2
    metres_per_degree = EARTH_CIRCUMFERENCE_M / 360
    reach = max([circle[2] if circle else 50.0]
                + [math.hypot((f.lat - lat_c) * metres_per_degree,
                              (f.lon - (min(lons) + max(lons)) / 2) * metres_per_degree * math.cos(math.radians(lat_c)))
                   for f in fixes])
    # the zoom at which the farthest point sits inside the picture, with a margin
    metres_per_pixel_0 = EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat_c)) / TILE
    zoom = int(max(0, min(19, math.floor(math.log2(metres_per_pixel_0 * (MAP_SIZE * 0.42) / max(reach, 1.0))))))
    metres_per_pixel = metres_per_pixel_0 / 2 ** zoom
    cx, cy = _mercator(lat_c, (min(lons) + max(lons)) / 2, zoom)
    left, top = cx - MAP_SIZE / 2, cy - MAP_SIZE / 2
    parts = [Markup('<svg class="map" viewBox="0 0 {0} {0}" role="img" aria-label="geofence and GNSS fixes">').format(
        MAP_SIZE), Markup('<rect class="ground" width="{0}" height="{0}"/>').format(MAP_SIZE)]
    if tiles:
        count = 2 ** zoom
        for tx in range(int(left // TILE), int((left + MAP_SIZE) // TILE) + 1):
            for ty in range(int(top // TILE), int((top + MAP_SIZE) // TILE) + 1):
                if 0 <= ty < count:
                    url = tiles.replace("{z}", str(zoom)).replace("{x}", str(tx % count)).replace("{y}", str(ty))
                    parts.append(Markup('<image href="{}" x="{:.1f}" y="{:.1f}" width="{}" height="{}"/>').format(
                        url, tx * TILE - left, ty * TILE - top, TILE, TILE))
    else:
        for i in range(1, 6):  # a plain grid stands in for the ground
            parts.append(Markup('<line class="grid" x1="{0}" x2="{0}" y1="0" y2="{1}"/>'
                                '<line class="grid" y1="{0}" y2="{0}" x1="0" x2="{1}"/>').format(
                i * MAP_SIZE / 6, MAP_SIZE))
    if circle:
        x, y = _mercator(circle[0], circle[1], zoom)
        parts.append(Markup('<circle class="fence" cx="{:.1f}" cy="{:.1f}" r="{:.1f}"><title>geofence: {} m around '
                            '{:.5f}, {:.5f}</title></circle>').format(
            x - left, y - top, circle[2] / metres_per_pixel, _number(circle[2]), circle[0], circle[1]))
        parts.append(Markup('<circle class="centre" cx="{:.1f}" cy="{:.1f}" r="2"/>').format(x - left, y - top))
    newest = max(fixes, key=lambda f: f.seq) if fixes else None
    for fix in sorted(fixes, key=lambda f: f.seq):
        x, y = _mercator(fix.lat, fix.lon, zoom)
        parts.append(Markup('<circle class="{}" cx="{:.1f}" cy="{:.1f}" r="{}"><title>seq {}: {:.5f}, {:.5f} at {}'
                            '</title></circle>').format(
            "fix newest" if fix is newest else "fix", x - left, y - top, 6 if fix is newest else 3, fix.seq,
            fix.lat, fix.lon, _label(fix.at)))
    bar_m = _round_distance(metres_per_pixel * MAP_SIZE / 4)
    bar_px = bar_m / metres_per_pixel
    parts.append(Markup('<line class="scale" x1="12" x2="{:.1f}" y1="{}" y2="{}"/><text class="axis" x="12" y="{}">{}'
                        '</text>').format(12 + bar_px, MAP_SIZE - 12, MAP_SIZE - 12, MAP_SIZE - 18,
                                          f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _round_distance(metres: float) -> float:
    magnitude = 10 ** math.floor(math.log10(max(metres, 1e-3)))
    for step in (5, 2, 1):
        if step * magnitude <= metres:
            return step * magnitude
    return magnitude
