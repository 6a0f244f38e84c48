"""The agent's signing step: readings in, signed and chained envelopes durably in the spool out.

The recorder owns the device's chain: the next seq and the previous digest.
Both come back from the spool's chain head at start (written in the same
transaction as each append), and seqs are reserved in blocks in the agent's
state file first, so a seq is never reused even when the spool itself is lost.

At start it also tells the lender what it cannot otherwise know, each as a
signed gap record: the previous run ended without a clean shutdown (power
loss), or the spool was damaged and moved aside (unacked readings lost). After
every append it turns the spool's overflow drops into a gap record.

Every envelope is version 2 (telemetry.envelope): it carries the signed
counters (alarm envelopes and gap records signed so far, this one included),
the newest lender token the agent holds (agent.freshness) and the enrollment
binding when the config names one. The counters are kept exactly like the
seq: the spool stores those of its chain head in the same transaction as each
append, and the state file reserves them before an envelope carrying higher
ones is appended (one write per alarm or gap envelope, which are rare), so
neither a restart, a SIGKILL nor a lost spool ever makes the agent sign lower
counters than it signed before. (A borrower who restores an older state and
spool makes them go back with the seq: that is the lender's to see.)
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.freshness import LenderTokens
from agent.spool import REASON_OVERFLOW, Spool
from agent.state import AgentState
from telemetry.clock import ClockStatement
from durable.exc import KeyStoreError
from durable.tpmcounter import CountedTpmKey, counted
from telemetry import tpmcount
from telemetry.envelope import GENESIS, Counters, Envelope, Gap, GapReason, seal
from telemetry.identity import Identity
from telemetry.senml import Record

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000  # seqs reserved per state write: one fsync'd state write per 1,000 envelopes



@dataclass(frozen=True, slots=True)
class Urgent:
    """An envelope the spool keeps in its alarm lane though it holds no alarm: a lender's inspection answer,
    which must overtake the backlog. Its signed counters are the envelope's own (it is not counted as an alarm)."""

    envelope: Envelope
    alarm = True

    @property
    def seq(self) -> int:
        return self.envelope.seq

    @property
    def raw(self) -> bytes:
        return self.envelope.raw

    @property
    def digest(self) -> bytes:
        return self.envelope.digest

    @property
    def counters(self) -> Counters | None:
        return self.envelope.counters

class Recorder:
    """Seals readings into envelopes and appends them to the spool; one per device, single-threaded."""

    def __init__(self, identity: Identity, device: str, boot: int, spool: Spool, state: AgentState,
                 seq: int, prev: bytes, counters: Counters = Counters(0, 0), *, binding: bytes | None = None,
                 tokens: LenderTokens | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity  # a TPM key is wrapped so that the TPM counts each signature (durable.tpmcounter)
        self.device = device
        self.boot = boot
        self.spool = spool
        self.state = state
        self.seq = seq  # the last seq used
        self.prev = prev  # the digest of the last envelope appended
        self.counters = counters  # the counters of the last envelope appended
        self.binding = binding  # the enrollment binding every envelope carries (None: not configured)
        self.tokens = tokens  # the newest lender token, for every envelope (None: none held)
        self._monotonic = monotonic
        self.signed_at = monotonic()  # when the last envelope was signed (or the recorder started)

    @property
    def identity(self):
        return self._identity

    @identity.setter
    def identity(self, signer) -> None:
        """The signer of every later envelope; a new TPM key (a rotation) is counted and certified like the first."""
        self._identity = counted(signer)
        self._certify_due = isinstance(self._identity, CountedTpmKey)

    def _counter_records(self, seq: int, at: float | None) -> list[Record]:
        """The TPM's certified count for the envelope `seq` about to be signed (the first of a boot); [] if the
        TPM could not certify it (logged; the next envelope tries again)."""
        if not self._certify_due:
            return []
        try:
            nv_public, attest, signature = self._identity.certify(
                tpmcount.qualifying_data(self.device, self.boot, seq, self.prev))
        except KeyStoreError as exc:
            log.error("the TPM did not certify its envelope counter (the next envelope tries again): %s", exc)
            return []
        return [Record(tpmcount.RECORD, data=tpmcount.encode(nv_public, attest, signature), time=at)]

    @classmethod
    def start(cls, identity: Identity, device: str, spool: Spool, state: AgentState, *, now: float,
              binding: bytes | None = None, tokens: LenderTokens | None = None,
              monotonic: Callable[[], float] = time.monotonic) -> Recorder:
        """Resume the chain after a (re)start and record what the lender must hear about it."""
        run = state.begin_run()
        head = spool.head()
        ceiling = state.seq_ceiling  # -1 before the first reservation
        options = {"binding": binding, "tokens": tokens, "monotonic": monotonic}
        if head is not None:
            counters = Counters(*spool.head_counters())
            recorder = cls(identity, device, run.boot, spool, state, head.seq, head.digest, counters, **options)
        elif ceiling < 0:  # the very first start
            recorder = cls(identity, device, run.boot, spool, state, 0, GENESIS, Counters(*state.counters_ceiling),
                           **options)
        else:
            # The spool lost its chain head (damaged and moved aside): restart above every
            # seq and counter that may have been used, from genesis, and say so in a signed gap record.
            recorder = cls(identity, device, run.boot, spool, state, ceiling, GENESIS,
                           Counters(*state.counters_ceiling), **options)
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

    def _next_counters(self, records: tuple[Record, ...], gap: Gap | None) -> Counters:
        counters = self.counters.after(records, gap)
        alarms, gaps = self.state.counters_ceiling
        if counters.alarms > alarms or counters.gaps > gaps:
            self.state.reserve_counters(counters.alarms, counters.gaps)
        return counters

    def append(self, records: Iterable[Record] = (), gap: Gap | None = None, clock: ClockStatement | None = None,
               *, urgent: bool = False) -> Envelope:
        """Sign one envelope holding `records` (and `gap`, and the clock statement `clock`), append it durably;
        `urgent`: in the spool's alarm lane (sent first, never dropped) though it holds no alarm."""
        records = tuple(records)
        seq = self._next_seq()
        certified = self._counter_records(seq, next((r.time for r in records if r.time is not None), None))
        records += tuple(certified)
        envelope = seal(self.identity, device=self.device, boot=self.boot, seq=seq, prev=self.prev,
                        records=records, gap=gap, clock=clock, counters=self._next_counters(records, gap),
                        token=self.tokens.token if self.tokens is not None else None, binding=self.binding)
        self.spool.append(Urgent(envelope) if urgent else envelope)  # raises, leaving the chain as it was, if not stored
        self.seq, self.prev, self.counters = envelope.seq, envelope.digest, envelope.counters
        if certified:
            self._certify_due = False
        self.signed_at = self._monotonic()
        return envelope

    def record(self, records: Iterable[Record], clock: ClockStatement | None = None, *, urgent: bool = False) -> Envelope:
        """Seal and spool readings, then report any overflow the append caused."""
        envelope = self.append(records, clock=clock, urgent=urgent)
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
            reason = report.ranges[0].reason
            overflow = {"queued": report.queued, "alarms_dropped": report.alarms_dropped} if reason == REASON_OVERFLOW else {}
            gap_envelope = self.append(gap=Gap(reason, first=first, last=last, count=count, **overflow))
            log.warning("spool overflow: %d routine readings (seqs %d..%d) dropped; gap record seq %d",
                        count, first, last, gap_envelope.seq)
        self.spool.clear_drops(report)
        return gap_envelope
