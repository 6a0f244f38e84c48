"""hil.measure — delivery during each fault and the latency of every alarm: the figures a run's report and scenarios use.

    delivery_during(samples, start, end)   ->  Delivery: envelopes produced and stored at the lender in a window
    delivery_per_fault(faults, samples)    ->  one FaultDelivery per fault that lasted
    stored_by(received, seqs, moment)      ->  how many of these seqs the lender had stored by then
    alarm_deliveries(received, booted_at)  ->  one AlarmDelivery per alarm envelope: signed at the gateway -> stored
    latency_summary(alarms)                ->  count, p50, p99 and max of their latencies (nearest rank)

Delivery is read off the timeline (`hil.observer` samples): the agent's chain
head (produced) and the lender's count of the device's stored envelopes
(delivered), each at the last sample at or before the window's ends. A
backlog draining inside the window can make delivered exceed produced.

An alarm's latency is from the moment the agent signed it -- the envelope's
clock statement carries the agent's uptime (CLOCK_BOOTTIME, which the rig's
clock shim leaves alone), mapped to this host's wall clock, since the agent
runs on this host -- to the moment the lender stored it (its export's
`received_at`). Raised and cleared alarm envelopes both count: both skip the
batching delay.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hil.faults import FaultRecord
from hil.observer import Sample


@dataclass(frozen=True, slots=True)
class Delivery:
    """What was produced and delivered between `start` and `end` (wall seconds)."""

    start: float
    end: float
    produced: int     # envelopes the agent signed in the window (its chain head moved this far)
    delivered: int    # envelopes the lender stored in the window

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def per_minute(self) -> float:
        return self.delivered * 60.0 / self.seconds if self.seconds > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        """Delivered over produced (None when nothing was produced)."""
        return self.delivered / self.produced if self.produced > 0 else None

    def describe(self) -> str:
        share = "" if self.fraction is None else f", {self.fraction:.0%} of the {self.produced} produced"
        return f"{self.delivered} delivered in {self.seconds:.0f} s ({self.per_minute:.0f}/min{share})"

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "produced": self.produced, "delivered": self.delivered,
                "per_minute": round(self.per_minute, 2),
                "fraction": None if self.fraction is None else round(self.fraction, 4)}


def _value_at(samples: Sequence[Sample], moment: float, field: str) -> int | None:
    """The last known value of `field` at or before `moment` (else the first one after it)."""
    before = [getattr(s, field) for s in samples if s.at <= moment and getattr(s, field) is not None]
    if before:
        return before[-1]
    after = [getattr(s, field) for s in samples if getattr(s, field) is not None]
    return after[0] if after else None


def delivery_during(samples: Sequence[Sample], start: float, end: float) -> Delivery | None:
    """Envelopes produced and delivered from `start` to `end`, read off `samples` (None without readings)."""
    values = {}
    for field in ("head_seq", "delivered"):
        first, last = _value_at(samples, start, field), _value_at(samples, end, field)
        if first is None or last is None:
            return None
        values[field] = max(0, last - first)
    return Delivery(start, end, values["head_seq"], values["delivered"])


def head_at(samples: Sequence[Sample], moment: float) -> int | None:
    """The agent's chain head (its last seq) at the last sample at or before `moment`."""
    return _value_at(samples, moment, "head_seq")


def stored_by(received: Iterable[tuple[object, float]], seqs: range, moment: float) -> int:
    """How many envelopes with a seq in `seqs` the lender had stored at or before `moment` (wall seconds)."""
    return sum(1 for envelope, stored_at in received if envelope.seq in seqs and stored_at <= moment)


@dataclass(frozen=True, slots=True)
class FaultDelivery:
    """Delivery while one fault lasted."""

    kind: str
    detail: str
    delivery: Delivery

    def to_json(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, **self.delivery.to_json()}


def delivery_per_fault(faults: Iterable[FaultRecord], samples: Sequence[Sample]) -> list[FaultDelivery]:
    """Delivery during each fault that lasted and ended (instants such as power cuts have no 'during')."""
    out = []
    for fault in faults:
        if fault.instant or fault.end is None or fault.end <= fault.start:
            continue
        delivery = delivery_during(samples, fault.start, fault.end)
        if delivery is not None:
            out.append(FaultDelivery(fault.kind, fault.detail, delivery))
    return out


@dataclass(frozen=True, slots=True)
class AlarmDelivery:
    """One alarm envelope: when the gateway signed it and when the lender stored it (wall seconds)."""

    seq: int
    name: str
    state: str | None
    signed_at: float
    stored_at: float

    @property
    def latency(self) -> float:
        return self.stored_at - self.signed_at

    def to_json(self) -> dict:
        return {"seq": self.seq, "name": self.name, "state": self.state, "signed_at": self.signed_at,
                "stored_at": self.stored_at, "latency_s": round(self.latency, 3)}


def booted_at() -> float:
    """This host's boot, in wall seconds (what CLOCK_BOOTTIME counts from)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def alarm_deliveries(received: Iterable[tuple[object, float]], booted: float) -> list[AlarmDelivery]:
    """Every alarm envelope among (envelope, stored at) pairs that carries a clock statement, by seq."""
    out = []
    for envelope, stored_at in received:
        statement = envelope.clock_statement
        if not envelope.alarm or statement is None:
            continue
        record = next(r for r in envelope.records if r.name.startswith("alarm."))
        out.append(AlarmDelivery(envelope.seq, record.name, record.string, booted + statement.uptime_s, stored_at))
    return sorted(out, key=lambda a: a.seq)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (None for no values): p99 of fewer than 100 values is their maximum."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(alarms: Sequence[AlarmDelivery]) -> dict:
    """Count, p50, p99 and max of the alarms' latencies, in seconds (None where there are none)."""
    latencies = [a.latency for a in alarms]
    rounded = {name: None if value is None else round(value, 3) for name, value in (
        ("p50_s", percentile(latencies, 50)), ("p99_s", percentile(latencies, 99)),
        ("max_s", max(latencies) if latencies else None))}
    return {"count": len(latencies), **rounded}
