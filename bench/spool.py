"""`python -m bench spool`: the durable spool's appends/s and acks/s, small backlog vs large, per sync level.

For each synchronous level (FULL, NORMAL) two real spools are opened side by
side in a temp dir: one holding 1,000 envelopes, one holding 200,000. Timed
rounds alternate between them, so machine noise (2 shared cores here) hits
both alike; each figure is the median over rounds. One append is one
`Spool.append` call — one transaction, durable at that level when it
returns. Acks delete batches of 32 seqs (a lender's answer to one batch),
reported as envelopes acked per second. Group commit (`append_many` of 10
envelopes produced together) is measured at FULL too, and so are appends to
the 200,000 spool held at its byte bound (each append evicts the oldest
routine envelope and records the drop).

Envelope bytes are real signed envelopes (six readings, ~250 B; alarms ~310 B),
reused cyclically under fresh seqs: the spool stores opaque bytes, so signing
200,000 of them would only slow the benchmark down.

`measure()` returns the dict `python -m bench core` merges; `main()` prints
it as one JSON object. Peak RSS is this process's (ru_maxrss) after the
200,000-envelope spools have been built, appended to and acked.
"""
from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.spool import DEFAULT_SYNCHRONOUS, SYNCHRONOUS_LEVELS, Spool
from telemetry import GENESIS, Identity, Record, seal

SMALL, LARGE = 1_000, 200_000
ROUNDS = 9
APPENDS_PER_ROUND = {"FULL": 500, "NORMAL": 2000}
ACK_BATCH = 32
ACK_CALLS_PER_ROUND = {"FULL": 20, "NORMAL": 60}
GROUP = 10


@dataclass(frozen=True, slots=True)
class _Envelope:
    seq: int
    raw: bytes
    digest: bytes
    alarm: bool = False


def _templates(count: int = 64) -> list[bytes]:
    identity = Identity(bytes(range(32)))
    prev, out = GENESIS, []
    for seq in range(count):
        records = [Record("warehouse-7/temp", value=21.5 + seq % 7, unit="Cel", time=1767225600 + seq),
                   Record("warehouse-7/humidity", value=48.25, unit="%RH", time=1767225600 + seq),
                   Record("warehouse-7/battery", value=3.71, unit="V", time=1767225600 + seq),
                   Record("warehouse-7/door", boolean=False, time=1767225600 + seq),
                   Record("warehouse-7/shock", value=0.02, unit="m/s2", time=1767225600 + seq),
                   Record("warehouse-7/light", value=112.0, unit="lx", time=1767225600 + seq)]
        if seq % 16 == 0:
            records.append(Record("alarm.tamper", string="case opened", time=1767225600 + seq))
        envelope = seal(identity, device="gw-0042", boot=3, seq=seq, prev=prev, records=records)
        out.append(envelope.raw)
        prev = envelope.digest
    return out


class _Feeder:
    """Hands out envelopes with increasing seqs, cycling through real envelope bytes."""

    def __init__(self, templates: list[bytes]) -> None:
        self.templates, self.seq = templates, 0

    def take(self, count: int) -> list[_Envelope]:
        out = []
        for _ in range(count):
            raw = self.templates[self.seq % len(self.templates)]
            out.append(_Envelope(self.seq, raw, raw[-16:], alarm=self.seq % 500 == 0))
            self.seq += 1
        return out


def _fill(spool: Spool, feeder: _Feeder, count: int) -> None:
    while count:
        step = min(count, 2000)
        spool.append_many(feeder.take(step))
        count -= step


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _measure_level(directory: Path, level: str, templates: list[bytes]) -> dict:
    spools, feeders, open_seconds = {}, {}, {}
    for size in (SMALL, LARGE):
        path = directory / f"spool-{level.lower()}-{size}.db"
        with Spool.open(path, synchronous="NORMAL") as spool:  # building the backlog is not what is measured
            feeders[size] = _Feeder(templates)
            _fill(spool, feeders[size], size)
        start = time.perf_counter()
        spools[size] = Spool.open(path, synchronous=level)  # quick_check + schema check + counting
        open_seconds[size] = time.perf_counter() - start
    appends, groups, acks = {SMALL: [], LARGE: []}, {SMALL: [], LARGE: []}, {SMALL: [], LARGE: []}
    per_round = APPENDS_PER_ROUND[level]
    try:
        for _ in range(ROUNDS):
            for size in (SMALL, LARGE):
                spool, batch = spools[size], feeders[size].take(per_round)
                seconds = _timed(lambda: [spool.append(e) for e in batch])
                appends[size].append(per_round / seconds)
            if level == "FULL":
                for size in (SMALL, LARGE):
                    spool = spools[size]
                    batches = [feeders[size].take(GROUP) for _ in range(per_round // GROUP)]
                    seconds = _timed(lambda: [spool.append_many(b) for b in batches])
                    groups[size].append(len(batches) * GROUP / seconds)
            for size in (SMALL, LARGE):
                spool = spools[size]
                # The lender acks the batches the uplink sent, oldest first (peeking is not timed).
                sent = [e.seq for e in spool.peek(ACK_CALLS_PER_ROUND[level] * ACK_BATCH, 1 << 30)]
                batches = [sent[i:i + ACK_BATCH] for i in range(0, len(sent), ACK_BATCH)]
                deleted = []
                seconds = _timed(lambda: deleted.extend(spool.ack(b) for b in batches))
                assert sum(deleted) == len(sent)
                acks[size].append(len(sent) / seconds)
        # Offline for days: the spool at its byte bound, so every append also evicts the oldest routine one.
        large = spools[LARGE]
        bound = large.stats().bytes
        large.close()
        spools[LARGE] = large = Spool.open(large.path, synchronous=level, max_bytes=bound)
        at_bound = []
        for _ in range(ROUNDS):
            batch = feeders[LARGE].take(per_round)
            seconds = _timed(lambda: [large.append(e) for e in batch])
            at_bound.append(per_round / seconds)
        report = large.take_drops()
        assert report is not None and report.count >= ROUNDS * per_round * 0.9, report
        result = {
            "append_per_s_200k_at_bound": round(statistics.median(at_bound)),
            "append_per_s_1k": round(statistics.median(appends[SMALL])),
            "append_per_s_200k": round(statistics.median(appends[LARGE])),
            "ack_per_s_1k": round(statistics.median(acks[SMALL])),
            "ack_per_s_200k": round(statistics.median(acks[LARGE])),
            "open_s_1k": round(open_seconds[SMALL], 3),
            "open_s_200k": round(open_seconds[LARGE], 3),
            "spooled_bytes_200k": spools[LARGE].stats().bytes,
            "file_bytes_200k": spools[LARGE].path.stat().st_size,
        }
        if groups[SMALL]:
            result["group_append_per_s_1k"] = round(statistics.median(groups[SMALL]))
            result["group_append_per_s_200k"] = round(statistics.median(groups[LARGE]))
        result["flatness"] = round(result["append_per_s_200k"] / result["append_per_s_1k"], 3)
        return result
    finally:
        for spool in spools.values():
            spool.close()


def measure() -> dict:
    """Spool figures at both levels; top-level keys are for the chosen (default) level."""
    templates = _templates()
    levels = {}
    with tempfile.TemporaryDirectory(prefix="pledgewatch-bench-spool-") as directory:
        for level in SYNCHRONOUS_LEVELS:
            levels[level] = _measure_level(Path(directory), level, templates)
    chosen = levels[DEFAULT_SYNCHRONOUS]
    return {
        "spool_sync": DEFAULT_SYNCHRONOUS,
        "spool_append_per_s_1k": chosen["append_per_s_1k"],
        "spool_append_per_s_200k": chosen["append_per_s_200k"],
        "spool_ack_per_s_1k": chosen["ack_per_s_1k"],
        "spool_ack_per_s_200k": chosen["ack_per_s_200k"],
        "spool_append_flatness": chosen["flatness"],
        "spool_envelope_bytes_mean": round(sum(map(len, templates)) / len(templates)),
        "spool_ack_batch": ACK_BATCH,
        "spool_group_size": GROUP,
        "spool_levels": levels,
        "peak_rss_mb_200k": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
