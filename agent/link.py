"""The uplink's model of its link: round trip, retransmission timeout, loss and liveness, measured as it sends.

Pure bookkeeping, no I/O: `agent.uplink` reports every attempt's fate here and
reads back the timeout for the next one, the spacing of an alarm's resends,
whether the link is lossy (then batches fit one datagram) and whether the
lender was heard from since a given moment (then a failed exchange is bad luck
on a lossy link, not an unreachable lender, and no backoff follows).

Round trip and RTO: every datagram attempt carries its own CoAP token
(`agent.datagram`), so an answer names the attempt it answers and every
sample is exact -- Karn's ambiguity, which CoCoA's "weak" estimator works
around for CON retransmissions, does not arise. The estimator is RFC 6298's
(CoCoA's "strong" one): SRTT and RTTVAR with gains 1/8 and 1/4,
RTO = SRTT + max(G, 4·RTTVAR), clamped to [min_rto, max_rto]; before the first
sample the RTO is the configured `ack_timeout` (RFC 7252's ACK_TIMEOUT, CoCoA's
initial RTO). A block-wise exchange (several datagrams, retransmitted by
aiocoap) yields a sample only when it ended sooner than one timeout, so no
retransmission can have happened.

Loss: an exponentially weighted average (gain 1/8) over attempts, 1 for an
attempt whose timeout passed unanswered, 0 for an answer (a late answer counts
0 too: its timeout was spurious, and its sample raises the RTO). It estimates
the loss of a round trip (request and answer), 1 - (1 - up)(1 - down): 19 % on
a link that loses 10 % each way, 51 % at 30 %. The link is *lossy* from
`LOSSY_ABOVE` until the average is under `CLEAN_BELOW` *and* the last
`CLEAN_RUN` attempts were all answered: one lost datagram switches to small
batches for a few dozen answers, and a link that loses one round trip in five
does not look clean after a lucky streak (the average alone, with a standard
deviation of about 0.1 there, dips under 3 % every few minutes).
"""
from __future__ import annotations

from dataclasses import dataclass

RTT_GAIN = 1 / 8          # RFC 6298 alpha
RTTVAR_GAIN = 1 / 4       # RFC 6298 beta
LOSS_GAIN = 1 / 8
LOSSY_ABOVE = 0.10        # loss average at or above which the link counts as lossy
CLEAN_BELOW = 0.03        # ... and below which it is clean again,
CLEAN_RUN = 32            # ... once this many attempts in a row were answered (at 19 % loss: 0.1 % of the time)
CLOCK_GRANULARITY = 0.001  # G of RFC 6298, seconds
MAX_RTO = 60.0            # RFC 6298 (2.5): a maximum of at least 60 s


@dataclass(slots=True)
class LinkModel:
    """The link as measured by the uplink's own exchanges (see the module docstring)."""

    initial_rto: float
    min_rto: float
    max_rto: float = MAX_RTO
    srtt: float | None = None
    rttvar: float | None = None
    loss: float = 0.0
    lossy: bool = False
    last_answer: float | None = None    # when (the uplink's monotonic clock) an authenticated answer last arrived
    answered_run: int = 0               # attempts answered in a row since the last timeout
    # counters, for reports and benches
    attempts: int = 0
    answers: int = 0
    timeouts: int = 0

    @classmethod
    def for_timeout(cls, ack_timeout: float) -> LinkModel:
        """The model before any sample: RTO = `ack_timeout`; the floor is 1 s (RFC 6298) or `ack_timeout` if smaller."""
        return cls(initial_rto=ack_timeout, min_rto=min(ack_timeout, 1.0), max_rto=max(MAX_RTO, ack_timeout))

    @property
    def rto(self) -> float:
        """How long an attempt waits for its answer before the next one goes."""
        if self.srtt is None:
            return self.initial_rto
        value = self.srtt + max(CLOCK_GRANULARITY, 4 * self.rttvar)
        return min(self.max_rto, max(self.min_rto, value))

    @property
    def resend_spacing(self) -> float:
        """How often an alarm is sent again while unanswered on a live link: one smoothed round trip (at least `min_rto`)."""
        if self.srtt is None:
            return self.rto
        return min(self.rto, max(self.min_rto, self.srtt))

    def sent(self) -> None:
        """One more attempt went out."""
        self.attempts += 1

    def answered(self, rtt: float, now: float) -> None:
        """An authenticated answer to an attempt sent `rtt` seconds earlier."""
        rtt = max(0.0, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - RTTVAR_GAIN) * self.rttvar + RTTVAR_GAIN * abs(self.srtt - rtt)
            self.srtt = (1 - RTT_GAIN) * self.srtt + RTT_GAIN * rtt
        self.answers += 1
        self.answered_run += 1
        self.last_answer = now if self.last_answer is None else max(self.last_answer, now)
        self._observe(0.0)

    def heard(self, now: float) -> None:
        """An authenticated answer that gives no round-trip sample (a block-wise exchange that took retransmissions)."""
        self.last_answer = now if self.last_answer is None else max(self.last_answer, now)

    def timed_out(self) -> None:
        """An attempt's timeout passed without its answer (it may still come: then `answered` too)."""
        self.timeouts += 1
        self.answered_run = 0
        self._observe(1.0)

    def heard_since(self, moment: float) -> bool:
        """Whether an authenticated answer arrived at or after `moment`."""
        return self.last_answer is not None and self.last_answer >= moment

    def _observe(self, lost: float) -> None:
        self.loss += LOSS_GAIN * (lost - self.loss)
        if self.lossy and self.loss < CLEAN_BELOW and self.answered_run >= CLEAN_RUN:
            self.lossy = False
        elif not self.lossy and self.loss >= LOSSY_ABOVE:
            self.lossy = True

    def snapshot(self) -> dict[str, float | int | bool | None]:
        """The figures, rounded, for logs and benches."""
        return {"srtt_s": None if self.srtt is None else round(self.srtt, 4),
                "rttvar_s": None if self.rttvar is None else round(self.rttvar, 4),
                "rto_s": round(self.rto, 4), "loss": round(self.loss, 4), "lossy": self.lossy,
                "attempts": self.attempts, "answers": self.answers, "timeouts": self.timeouts}
