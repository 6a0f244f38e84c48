"""Chain verification: is a device's sequence of envelopes complete, unreplayed and linked?

Pure: takes decoded envelopes (any order, as a lender receives them with alarms
first) and returns the problems as data. A link is checked wherever the
envelope before it is present; every missing seq is a gap, marked explained
when a signed gap record covers it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from telemetry.envelope import GENESIS, Envelope, GapReason


@dataclass(frozen=True, slots=True)
class ChainProblem:
    """One thing wrong with a chain.

    `kind` is 'gap', 'replay', 'conflict', 'broken-link', 'bad-start', or (checked over the whole chain, not
    only between neighbours) 'restart' (a link to genesis after the first envelope), 'boot-regression' (the
    boot counter goes back) and 'counter-regression' (version 2's signed counters go back).
    """

    kind: str
    first: int
    last: int
    detail: str
    explained_by: int | None = None  # seq of the signed gap record that accounts for a gap

    @property
    def explained(self) -> bool:
        return self.explained_by is not None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The verdict on one device's chain."""

    device: str
    first: int | None
    last: int | None
    count: int
    problems: tuple[ChainProblem, ...]

    @property
    def intact(self) -> bool:
        """True when the chain has no problem except gaps that signed gap records explain."""
        return all(p.kind == "gap" and p.explained for p in self.problems)


def _explaining(gap_records: list[Envelope], first: int, last: int) -> int | None:
    for record in gap_records:
        gap = record.gap
        if gap.first is not None and gap.last is not None and gap.first <= first and last <= gap.last:
            return record.seq
    return None


def check_chain(envelopes: Iterable[Envelope], *, starts_at_genesis: bool = True) -> ChainReport:
    """Check one device's envelopes. `starts_at_genesis`: the lowest seq must link to the genesis digest."""
    by_seq: dict[int, Envelope] = {}
    problems: list[ChainProblem] = []
    device = None
    for envelope in envelopes:
        if device is None:
            device = envelope.device
        elif envelope.device != device:
            raise ValueError(f"check_chain takes one device's envelopes; got {device!r} and {envelope.device!r}")
        seen = by_seq.get(envelope.seq)
        if seen is None:
            by_seq[envelope.seq] = envelope
        elif seen.raw == envelope.raw:
            problems.append(ChainProblem("replay", envelope.seq, envelope.seq, f"seq {envelope.seq} arrived again"))
        else:
            problems.append(
                ChainProblem("conflict", envelope.seq, envelope.seq, f"two different envelopes claim seq {envelope.seq}")
            )
    if not by_seq:
        return ChainReport(device or "", None, None, 0, tuple(problems))
    seqs = sorted(by_seq)
    gap_records = [by_seq[s] for s in seqs if by_seq[s].gap is not None]
    first = by_seq[seqs[0]]
    if starts_at_genesis and first.prev != GENESIS:
        problems.append(ChainProblem("bad-start", first.seq, first.seq, f"first envelope seq {first.seq} does not link to genesis"))
    for before, after in zip(seqs, seqs[1:]):
        if after != before + 1:
            problems.append(
                ChainProblem(
                    "gap", before + 1, after - 1, f"seqs {before + 1}..{after - 1} missing",
                    _explaining(gap_records, before + 1, after - 1),
                )
            )
            continue
        current = by_seq[after]
        restart = current.gap is not None and current.gap.reason == GapReason.SPOOL_RESET.value and current.prev == GENESIS
        if current.prev != by_seq[before].digest and not restart:
            problems.append(
                ChainProblem("broken-link", after, after, f"seq {after} does not link to seq {before} (prev-hash mismatch)")
            )
    problems += _regressions([by_seq[s] for s in seqs])
    return ChainReport(device, seqs[0], seqs[-1], len(seqs), tuple(problems))


def _regressions(chain: list[Envelope]) -> list[ChainProblem]:
    """What goes backwards anywhere along the chain (in seq order): boot counter, signed counters, a restart."""
    problems = []
    for before, after in zip(chain, chain[1:]):
        if after.boot < before.boot:
            problems.append(ChainProblem("boot-regression", after.seq, after.seq,
                                         f"seq {after.seq} has boot {after.boot}, seq {before.seq} had {before.boot}"))
        restart = after.gap is not None and after.gap.reason == GapReason.SPOOL_RESET.value
        if after.prev == GENESIS and not restart:
            problems.append(ChainProblem("restart", after.seq, after.seq, f"seq {after.seq} starts the chain again"))
        if before.counters is not None and after.counters is not None and (
                after.counters.alarms < before.counters.alarms or after.counters.gaps < before.counters.gaps):
            problems.append(ChainProblem("counter-regression", after.seq, after.seq,
                                         f"seq {after.seq}'s signed counters are below seq {before.seq}'s"))
    return problems
