"""hil.invariant — the check every scenario ends with, at the lender.

After the bench is quiet (faults healed, the agent drained and stopped), the
rig asks the lender for its evidence (`pledgewatch lender export`, with the
keys from `lender devices --json`) and the agent for its chain head
(`pledgewatch agent status --json`), and checks:

1. every seq the agent used, 1..head, is stored at the lender **exactly once**
   or lies inside a range that a signed gap record explains — a seq that is
   neither is a *lost* reading, and is named;
2. every stored envelope's signature verifies with the device's registered key;
3. the chain verifies (`telemetry.chain.check_chain`): every link matches,
   nothing replayed or in conflict, and every gap explained by a signed gap
   record;
4. nothing is left in the agent's spool (a seq still spooled is named as
   *not delivered*, not lost: the agent still holds it).

`check()` is pure (the export rows, the keys and the agent's numbers in, an
`InvariantReport` out); `InvariantReport.raise_if_failed()` raises
`InvariantViolation` (an AssertionError) whose message names the seqs.
"""
from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hil.exc import InvariantViolation
from telemetry.chain import check_chain
from telemetry.envelope import Envelope, verify
from telemetry.identity import DeviceKey


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted runs of consecutive seqs: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return [(a, b) for a, b in runs]


def describe_seqs(seqs: Iterable[int], limit: int = 12) -> str:
    """'17..23, 40' for people (at most `limit` runs, then '… (N more runs)')."""
    runs = ranges(seqs)
    text = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in runs[:limit])
    if len(runs) > limit:
        text += f", … ({len(runs) - limit} more runs)"
    return text


@dataclass(frozen=True, slots=True)
class GapSummary:
    """One signed gap record as stored at the lender."""

    seq: int
    reason: str
    first: int | None
    last: int | None
    count: int | None


@dataclass(frozen=True, slots=True)
class InvariantReport:
    """The verdict for one device at the end of a scenario."""

    device: str
    head_seq: int                       # the last seq the agent used
    stored: int                         # envelopes stored at the lender
    readings_delivered: int             # SenML records in stored envelopes (gap records excluded)
    alarms_delivered: int               # stored alarm envelopes
    gaps: tuple[GapSummary, ...]
    lost: tuple[int, ...]               # used by the agent, not stored, not explained, not spooled
    not_delivered: tuple[int, ...]      # still in the agent's spool
    duplicates: tuple[int, ...]         # seqs exported more than once
    foreign: tuple[int, ...]            # stored seqs above the agent's head
    bad_signatures: tuple[str, ...]
    chain_problems: tuple[str, ...]
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def readings_lost_in_gaps(self) -> int:
        """Readings the agent itself reported lost (gap records' counts): explained, signed losses."""
        return sum(g.count or 0 for g in self.gaps)

    def raise_if_failed(self) -> None:
        if self.failures:
            raise InvariantViolation(
                f"invariant violated at the lender for {self.device} (agent's chain head seq {self.head_seq}, "
                f"{self.stored} stored): " + "; ".join(self.failures))

    def to_json(self) -> dict:
        return {
            "device": self.device, "head_seq": self.head_seq, "stored": self.stored,
            "readings_delivered": self.readings_delivered, "alarms_delivered": self.alarms_delivered,
            "readings_lost_in_gaps": self.readings_lost_in_gaps,
            "gaps": [{"seq": g.seq, "reason": g.reason, "first": g.first, "last": g.last, "count": g.count}
                     for g in self.gaps],
            "lost": describe_seqs(self.lost, 1000), "not_delivered": describe_seqs(self.not_delivered, 1000),
            "duplicates": list(self.duplicates), "ok": self.ok, "failures": list(self.failures),
        }


def _decode_rows(rows: Sequence[Mapping], keys: Mapping[bytes, DeviceKey], device: str,
                 bad: list[str]) -> list[Envelope]:
    envelopes = []
    for number, row in enumerate(rows, 1):
        seq = row.get("seq")
        try:
            raw = base64.b64decode(row["envelope_b64"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            bad.append(f"export row {number} (seq {seq}) has no readable envelope_b64")
            continue
        verdict = verify(raw, keys)
        if not verdict.ok:
            bad.append(f"seq {seq}: {verdict.reason.name.lower()}: {verdict.detail}")
            continue
        envelope = verdict.envelope
        if envelope.device != device or envelope.seq != seq:
            bad.append(f"export row {number} says {row.get('device')} seq {seq}, its envelope {envelope.device} "
                       f"seq {envelope.seq}")
            continue
        envelopes.append(envelope)
    return envelopes


def check(device: str, *, head_seq: int | None, rows: Sequence[Mapping], keys: Iterable[DeviceKey],
          spooled: Iterable[int] = ()) -> InvariantReport:
    """The invariant for `device`: `rows` from the lender's export, `head_seq` and `spooled` from the agent."""
    head = head_seq or 0
    key_map = {k.kid: k for k in keys}
    bad: list[str] = []
    exported = [row.get("seq") for row in rows]
    duplicates = sorted(seq for seq, n in Counter(exported).items() if n > 1)
    envelopes = _decode_rows(rows, key_map, device, bad)
    by_seq = {e.seq: e for e in envelopes}
    report = check_chain(envelopes) if envelopes else None
    gap_envelopes = [e for e in envelopes if e.gap is not None]
    gaps = tuple(GapSummary(e.seq, e.gap.reason, e.gap.first, e.gap.last, e.gap.count) for e in gap_envelopes)

    def explained(seq: int) -> bool:
        return any(g.first is not None and g.last is not None and g.first <= seq <= g.last for g in gaps)

    spooled_set = set(spooled)
    missing = [s for s in range(1, head + 1) if s not in by_seq and not explained(s)]
    not_delivered = tuple(s for s in missing if s in spooled_set)
    lost = tuple(s for s in missing if s not in spooled_set)
    foreign = tuple(sorted(s for s in by_seq if s > head))
    chain_problems = tuple(
        f"{p.kind} {p.first}..{p.last}: {p.detail}" for p in (report.problems if report else ())
        if not (p.kind == "gap" and (p.explained or set(range(p.first, p.last + 1)) <= set(missing)))
    )
    readings = sum(len(e.records) for e in envelopes if e.gap is None)
    alarms = sum(1 for e in envelopes if e.alarm)

    failures = []
    if lost:
        failures.append(f"lost seqs {describe_seqs(lost)} ({len(lost)} envelope(s) the agent accepted were never "
                        "stored at the lender, and no signed gap record explains them)")
    if not_delivered:
        failures.append(f"seqs {describe_seqs(not_delivered)} were still in the agent's spool at the end "
                        f"({len(not_delivered)} not delivered)")
    if duplicates:
        failures.append(f"seqs {describe_seqs(duplicates)} are stored more than once")
    if foreign:
        failures.append(f"the lender holds seqs {describe_seqs(foreign)} above the agent's chain head {head}")
    if bad:
        failures.append(f"{len(bad)} stored envelope(s) do not verify: " + "; ".join(bad[:5]))
    if chain_problems:
        failures.append("the chain does not verify: " + "; ".join(chain_problems[:5]))
    if head == 0:
        failures.append("the agent never used a seq: nothing was measured")
    return InvariantReport(device=device, head_seq=head, stored=len(envelopes), readings_delivered=readings,
                           alarms_delivered=alarms, gaps=gaps, lost=lost, not_delivered=not_delivered,
                           duplicates=tuple(duplicates), foreign=foreign, bad_signatures=tuple(bad),
                           chain_problems=chain_problems, failures=tuple(failures))
