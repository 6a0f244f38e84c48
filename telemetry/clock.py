"""The clock statement: what a device says, in each envelope it signs, about the time it put on its records.

    7: {1: synced (bool), 2: source ("ntp" | "gnss" | "modem" | "lender" | "none"),
        3: uptime in ms since boot (uint), ? 4: the system clock in Unix seconds (uint), only when not synced}

A record carries a wall-clock time only while the device's clock is
synchronized; the uptime lets the lender order and date records relative to
their arrival when it is not. Both are the device's word, never the lender's
proof: the lender checks them against time it can vouch for.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from telemetry.exc import ClockStatementError

SYNCED, SOURCE, UPTIME_MS, SYSTEM = 1, 2, 3, 4   # keys of the payload's clock map (7)
SOURCES = ("ntp", "gnss", "modem", "lender", "none")   # "lender": the time of the lender token the device holds


def iso_utc(seconds: float) -> str:
    """UTC ISO 8601 with a Z, to the millisecond: how the lender's tools print times (OverflowError, OSError or
    ValueError for a time no calendar holds)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _uint(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


@dataclass(frozen=True, slots=True)
class ClockStatement:
    """One device's clock at the moment it sealed an envelope."""

    synced: bool
    source: str
    uptime_ms: int
    system: int | None = None   # the unsynchronized system clock, Unix seconds

    def __post_init__(self) -> None:
        if type(self.synced) is not bool or self.source not in SOURCES or not _uint(self.uptime_ms):
            raise ClockStatementError(f"clock statement: synced must be a bool, source one of {', '.join(SOURCES)}, "
                                      "uptime_ms an unsigned integer")
        if self.system is not None and (self.synced or not _uint(self.system)):
            raise ClockStatementError("clock statement: the system clock (4) is an unsigned integer, "
                                      "given only while the clock is unsynchronized")

    def to_cbor(self) -> dict[int, object]:
        out: dict[int, object] = {SYNCED: self.synced, SOURCE: self.source, UPTIME_MS: self.uptime_ms}
        if self.system is not None:
            out[SYSTEM] = self.system
        return out

    @classmethod
    def from_cbor(cls, item: object) -> ClockStatement:
        """From an envelope's decoded clock map; ClockStatementError if it is not the map above."""
        if not isinstance(item, dict) or not {SYNCED, SOURCE, UPTIME_MS} <= set(item) <= {SYNCED, SOURCE, UPTIME_MS, SYSTEM}:
            raise ClockStatementError("clock statement: expected a map with keys 1, 2, 3 (and 4)")
        return cls(item[SYNCED], item[SOURCE], item[UPTIME_MS], item.get(SYSTEM))

    @property
    def uptime_s(self) -> float:
        return self.uptime_ms / 1000
