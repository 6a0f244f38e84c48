"""Real signed envelopes for the spool tests, built by `telemetry` like the agent builds them.

A gateway's routine envelope here is ~210 bytes (four readings); an alarm
envelope carries an `alarm.tamper` record on top (~270 bytes).
"""
from __future__ import annotations

from telemetry import GENESIS, Envelope, Identity, Record, seal

GATEWAY = Identity(bytes(range(32)))  # a test key, never a real device's
T0 = 1767225600  # 2026-01-01T00:00:00Z


def reading(seq: int, prev: bytes, *, alarm: bool = False, boot: int = 3) -> Envelope:
    """One signed envelope as the agent would build it from a warehouse gateway's sensors."""
    records = [
        Record("warehouse-7/temp", value=21.5 + seq % 7, unit="Cel", time=T0 + seq),
        Record("warehouse-7/humidity", value=48.25, unit="%RH", time=T0 + seq),
        Record("warehouse-7/battery", value=3.71, unit="V", time=T0 + seq),
        Record("warehouse-7/door", boolean=False, time=T0 + seq),
    ]
    if alarm:
        records.append(Record("alarm.tamper", string="case opened", time=T0 + seq))
    return seal(GATEWAY, device="gw-0042", boot=boot, seq=seq, prev=prev, records=records)


def chain(count: int, *, first_seq: int = 0, prev: bytes = GENESIS, alarm_every: int = 0) -> list[Envelope]:
    """`count` chained envelopes from `first_seq`; every `alarm_every`-th seq (if > 0) is an alarm."""
    out = []
    for seq in range(first_seq, first_seq + count):
        envelope = reading(seq, prev, alarm=bool(alarm_every) and seq % alarm_every == 0)
        out.append(envelope)
        prev = envelope.digest
    return out

