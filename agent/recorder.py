"""The agent's signing step: readings in, signed and chained envelopes durably in the spool out.

The recorder owns the device's chain: the next seq and the previous digest.
Both come back from the spool's chain head at start (written in the same
transaction as each append), and seqs are reserved in blocks in the agent's
state file first, so a seq is never reused even when the spool itself is lost.

At start it also tells the lender what it cannot otherwise know, each as a
signed gap record: the previous run ended without a clean shutdown (power
loss), or the spool was damaged and moved aside (unacked readings lost). After
every append it turns the spool's overflow drops into a gap record.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from agent.spool import Spool
from agent.state import AgentState
from telemetry.clock import ClockStatement
from telemetry.envelope import GENESIS, Envelope, Gap, GapReason, seal
from telemetry.identity import Identity
from telemetry.senml import Record

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # seqs reserved per state write: one fsync'd state write per 1,000 envelopes


class Recorder:
    """Seals readings into envelopes and appends them to the spool; one per device, single-threaded."""

    def __init__(self, identity: Identity, device: str, boot: int, spool: Spool, state: AgentState,
                 seq: int, prev: bytes) -> None:
        self.identity = identity
        self.device = device
        self.boot = boot
        self.spool = spool
        self.state = state
        self.seq = seq  # the last seq used
        self.prev = prev  # the digest of the last envelope appended

    @classmethod
    def start(cls, identity: Identity, device: str, spool: Spool, state: AgentState, *, now: float) -> Recorder:
        """Resume the chain after a (re)start and record what the lender must hear about it."""
        run = state.begin_run()
        head = spool.head()
        ceiling = state.seq_ceiling  # -1 before the first reservation
        if head is not None:
            recorder = cls(identity, device, run.boot, spool, state, head.seq, head.digest)
        elif ceiling < 0:
            recorder = cls(identity, device, run.boot, spool, state, 0, GENESIS)  # the very first start
        else:
            # The spool lost its chain head (damaged and moved aside): restart above every
            # seq that may have been used, from genesis, and say so in a signed gap record.
            recorder = cls(identity, device, run.boot, spool, state, ceiling, GENESIS)
            first = state.acked_watermark + 1
            log.error("the spool lost its chain head; resuming above seq %d with a spool-reset gap record", ceiling)
            recorder.append(gap=Gap(GapReason.SPOOL_RESET.value, first=max(first, 1), last=ceiling))
        if not run.previous_run_clean:
            recorder.append(gap=Gap(GapReason.POWER_LOSS.value), records=[Record("boot", value=run.boot, time=now)])
        recorder.report_drops()
        return recorder

    def _next_seq(self) -> int:
        seq = self.seq + 1
        if seq > self.state.seq_ceiling:
            self.state.reserve_seqs(seq + SEQ_BLOCK)
        return seq

    def append(self, records: Iterable[Record] = (), gap: Gap | None = None, clock: ClockStatement | None = None) -> Envelope:
        """Sign one envelope holding `records` (and `gap`, and the clock statement `clock`), append it durably."""
        envelope = seal(self.identity, device=self.device, boot=self.boot, seq=self._next_seq(), prev=self.prev,
                        records=tuple(records), gap=gap, clock=clock)
        self.spool.append(envelope)  # raises, leaving the chain where it was, if it could not be stored
        self.seq, self.prev = envelope.seq, envelope.digest
        return envelope

    def record(self, records: Iterable[Record], clock: ClockStatement | None = None) -> Envelope:
        """Seal and spool readings, then report any overflow the append caused."""
        envelope = self.append(records, clock=clock)
        self.report_drops()
        return envelope

    def report_drops(self) -> Envelope | None:
        """Turn the spool's unreported drops into one signed gap record, then clear them."""
        report = self.spool.take_drops()
        if report is None:
            return None
        gap_envelope = None
        if report.ranges:
            first = min(r.first_seq for r in report.ranges)
            last = max(r.last_seq for r in report.ranges)
            count = sum(r.last_seq - r.first_seq + 1 for r in report.ranges)
            gap_envelope = self.append(gap=Gap(report.ranges[0].reason, first=first, last=last, count=count))
            log.warning("spool overflow: %d routine readings (seqs %d..%d) dropped; gap record seq %d",
                        count, first, last, gap_envelope.seq)
        self.spool.clear_drops(report)
        return gap_envelope
