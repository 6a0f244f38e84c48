"""hil.observer — the scenario's timeline: backlog at the agent and delivery at the lender, sampled as it runs.

A background thread reads, a few times a second, the agent's spool (how
many envelopes wait, the chain head's seq) and the lender's store (how many
of this device's envelopes are stored, the highest seq), each through a
short read-only SQLite connection, plus the proxy's counters. The samples are
the report's plot; nothing in the pass/fail verdict depends on them (that is
`hil.invariant`, which goes through the lender's own command line).

The observer never touches the spool while the agent is down: a read-only
connection is harmless to a live WAL database, but the rig does not want to
be anywhere near a spool that the agent is about to recover after a power cut.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SPOOL_FILE = "spool.db"
LENDER_STORE_FILE = "lender.sqlite3"


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the system: `at` is `time.time()`; None where a side could not be read."""

    at: float
    spooled: int | None        # envelopes waiting in the agent's spool
    head_seq: int | None       # the last seq the agent used
    delivered: int | None      # this device's envelopes stored at the lender
    lender_max_seq: int | None
    uploads: int | None        # datagrams towards the lender so far (proxy)
    agent_up: bool


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5, check_same_thread=False)


def read_spool(state_dir: Path) -> tuple[int, int | None] | None:
    """(envelopes spooled, chain head seq) from a spool, or None if it cannot be read right now."""
    path = Path(state_dir) / SPOOL_FILE
    if not path.exists():
        return None
    try:
        conn = _read_only(path)
        try:
            count, = conn.execute("SELECT (SELECT count(*) FROM routine) + (SELECT count(*) FROM alarm)").fetchone()
            head = conn.execute("SELECT seq FROM chain_head WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return count, head[0] if head else None


def spooled_seqs(state_dir: Path) -> list[int]:
    """Every seq still in the spool (call only while the agent is stopped)."""
    path = Path(state_dir) / SPOOL_FILE
    if not path.exists():
        return []
    conn = _read_only(path)
    try:
        rows = conn.execute("SELECT seq FROM routine UNION ALL SELECT seq FROM alarm ORDER BY 1").fetchall()
    finally:
        conn.close()
    return [seq for seq, in rows]


def read_lender(data_dir: Path, device: str) -> tuple[int, int | None] | None:
    """(envelopes stored, highest seq) of `device` at the lender, or None if the store cannot be read now."""
    path = Path(data_dir) / LENDER_STORE_FILE
    if not path.exists():
        return None
    try:
        conn = _read_only(path)
        try:
            count, top = conn.execute("SELECT count(*), max(seq) FROM envelopes WHERE device = ?", (device,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return count, top


class Observer:
    """Samples the bench every `interval_s` seconds in a daemon thread until `stop()`."""

    def __init__(self, *, state_dir: Path, lender_data: Path, device: str, agent_up: Callable[[], bool],
                 uploads: Callable[[], int | None] = lambda: None, interval_s: float = 0.25) -> None:
        self.state_dir = Path(state_dir)
        self.lender_data = Path(lender_data)
        self.device = device
        self.interval_s = interval_s
        self._agent_up = agent_up
        self._uploads = uploads
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Observer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hil-observer", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def sample(self, *, record: bool = True) -> Sample:
        """Take one sample now (recorded on the timeline unless `record` is False)."""
        up = self._agent_up()
        spool = read_spool(self.state_dir) if up else None
        lender = read_lender(self.lender_data, self.device)
        sample = Sample(time.time(), spool[0] if spool else None, spool[1] if spool else None,
                        lender[0] if lender else None, lender[1] if lender else None, self._uploads(), up)
        if record:
            with self._lock:
                self._samples.append(sample)
        return sample

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def latest(self, field: str) -> int | None:
        """The most recent non-None value of a sample field."""
        with self._lock:
            for sample in reversed(self._samples):
                value = getattr(sample, field)
                if value is not None:
                    return value
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception:  # the timeline is for people; never let it break the run
                pass
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
