"""What the lender does with what it refuses: keeps what a key vouches for, samples junk, counts all, logs calmly.

A refusal a registered device's key vouches for — a valid envelope
signature (a fork, a conflict, a chain violation, an envelope signed after
revocation, a signed NaN), or the OSCORE context that protected the request —
is evidence: it is always offered to the quarantine, which keeps it up to its
whole limit (lender.evidence.store: `Refused.attributable`). Anything else is
junk anyone can make: of each (kind, reason) at most `SAMPLES_PER_MINUTE` are
kept each minute, the rest only counted here and added to the store's counts
(`flush`, every few seconds and at shutdown). The quarantine keeps junk only
below `JUNK_SHARE` of its limit, so junk never takes the space evidence needs.

Log lines about refusals are rate-limited: `LOG_LINES` per `LOG_WINDOW_S`,
then one summary line per window with how many were not logged, by reason,
and the peers that sent most. Every piece of text from outside is escaped
(lender.untrusted).

Thread-safe: the ingest thread and the strangers' lane share one instance.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from lender.evidence.store import EvidenceStore, Refused
from lender.exc import StoreError
from lender.untrusted import shown

log = logging.getLogger("lender.refusals")

SAMPLES_PER_MINUTE = 20       # junk kept per (kind, reason) each minute
LOG_LINES = 20                # refusal lines logged per window; the rest go into the window's summary
LOG_WINDOW_S = 60.0
FLUSH_S = 5.0                 # counted junk reaches the store at least this often (while refusals come)
PEERS_TRACKED = 1000          # distinct peers counted per window for the summary


class Refusals:
    """The policy above, with its counters; `keep` decides, `note` logs, `flush` and `tick` run periodically."""

    def __init__(self, *, samples_per_minute: int = SAMPLES_PER_MINUTE, log_lines: int = LOG_LINES,
                 log_window_s: float = LOG_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.samples_per_minute = samples_per_minute
        self.log_lines = log_lines
        self.log_window_s = log_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, int], list[float]] = {}            # (kind, reason) -> [minute start, kept]
        self._counted: dict[tuple[str, int], list[float]] = {}            # (kind, reason) -> [count, first, last]
        self._window_start = clock()
        self._logged = 0
        self._unlogged: collections.Counter = collections.Counter()      # reason -> refusals not logged
        self._peers: collections.Counter = collections.Counter()
        self._last_flush = clock()
        self.total = 0

    # --- the quarantine ---

    def keep(self, refused: Refused) -> bool:
        """Whether to offer `refused` to the quarantine now; if not, it is counted (and reaches the store at `flush`)."""
        if refused.attributable:
            return True
        key = (refused.kind, int(refused.reason))
        now = self._clock()
        with self._lock:
            sample = self._samples.get(key)
            if sample is None or now - sample[0] >= 60.0:
                sample = self._samples[key] = [now, 0]
            if sample[1] < self.samples_per_minute:
                sample[1] += 1
                return True
            counted = self._counted.get(key)
            if counted is None:
                self._counted[key] = [1, refused.received_at, refused.received_at]
            else:
                counted[0] += 1
                counted[1] = min(counted[1], refused.received_at)
                counted[2] = max(counted[2], refused.received_at)
            return False

    def record(self, store: EvidenceStore, refused: Refused) -> bool:
        """`keep` it in `store`'s quarantine, or count it; True when it was kept."""
        return self.keep(refused) and store.quarantine(refused)

    def flush_due(self) -> bool:
        with self._lock:
            return bool(self._counted) and self._clock() - self._last_flush >= FLUSH_S

    def flush(self, store: EvidenceStore) -> int:
        """Add the refusals counted since the last flush to `store`'s counts; how many."""
        with self._lock:
            counted, self._counted = self._counted, {}
            self._last_flush = self._clock()
        if not counted:
            return 0
        try:
            store.count_refusals({key: (int(c), first, last) for key, (c, first, last) in counted.items()})
        except StoreError as exc:
            log.error("refusals counted but not written to the store (they are kept for the next try): %s", exc)
            with self._lock:
                for key, (count, first, last) in counted.items():
                    mine = self._counted.setdefault(key, [0, first, last])
                    mine[0] += count
                    mine[1], mine[2] = min(mine[1], first), max(mine[2], last)
            return 0
        return int(sum(c for c, _, _ in counted.values()))

    # --- the log ---

    def note(self, what: str, peer: str, reason: str, detail: str) -> None:
        """One refusal for the log: `what` was refused from `peer` for `reason` (a short name), with `detail`."""
        emit = summary = None
        with self._lock:
            summary = self._roll_window()
            self.total += 1
            host = _host(peer)
            if len(self._peers) < PEERS_TRACKED or host in self._peers:
                self._peers[host] += 1
            if self._logged < self.log_lines:
                self._logged += 1
                emit = (what, peer, reason, detail)
            else:
                self._unlogged[reason] += 1
        if summary:
            log.warning("%s", summary)
        if emit is not None:
            what, peer, reason, detail = emit
            log.info("refused %s from %s (%s): %s", shown(what), shown(peer), shown(reason), shown(detail, 300))

    def tick(self, *, final: bool = False) -> None:
        """Log the window's summary when it is over (call periodically: a quiet lender still says what it refused);
        `final`: now, however short the window (the lender stops)."""
        with self._lock:
            summary = self._roll_window(final)
        if summary:
            log.warning("%s", summary)

    def _roll_window(self, final: bool = False) -> str | None:
        now = self._clock()
        if now - self._window_start < self.log_window_s and not final:
            return None
        unlogged = sum(self._unlogged.values())
        summary = None
        if unlogged:
            reasons = ", ".join(f"{shown(r)} {n:,}" for r, n in self._unlogged.most_common(6))
            peers = ", ".join(f"{shown(p)} ({n:,})" for p, n in self._peers.most_common(3))
            summary = (f"refusals in the last {now - self._window_start:.0f} s: {self._logged + unlogged:,}, "
                       f"{unlogged:,} of them not logged one by one ({reasons}); most from {peers}; "
                       "`pledgewatch lender quarantine` has the counts")
        self._window_start, self._logged = now, 0
        self._unlogged.clear()
        self._peers.clear()
        return summary


def _host(peer: str) -> str:
    """The host of a peer as lender.coap names it ("203.0.113.9:40000", "[2001:db8::1]:5683 (OSCORE)")."""
    address = peer.partition(" ")[0]
    host, colon, port = address.rpartition(":")
    return host.strip("[]") if colon and port.isdigit() else address
