"""Lost alarms are countable: every envelope the agent signs counts the alarms and gaps signed so far, and never less.

The story: a gateway signs readings, now and then an alarm, restarts, loses
power, even loses its spool. Whatever happens to it, each envelope it signs
says how many alarm envelopes and gap records it has signed up to and
including this one, so a lender missing one alarm sees "1 alarm signed and
never received". The counters live with the chain head in the spool (same
transaction as each append) and are reserved in the state file before use,
like the seq. Real spool, real state files, a real child process killed with
SIGKILL.
"""
from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.exc import SpoolUnavailableError
from agent.spool import Spool
from telemetry.envelope import CURRENT_VERSION, Counters, Envelope, carries_alarm, verify
from telemetry.senml import Record
from tests.kit.agent import IDENTITY, DEVICE, build_agent, signed_envelopes
from tests.kit.crash import killed_after

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ALARM = Record("alarm.door.cold-store", string="raised", time=1767225600.0)


def reading(value: float = 4.5) -> Record:
    return Record("temp", value=value, unit="Cel", time=1767225600.0)


def assert_counted_exactly(envelopes: list[Envelope]) -> None:
    """Each envelope's counters are the alarm envelopes and gap records signed up to it, in seq order."""
    alarms = gaps = 0
    for envelope in sorted(envelopes, key=lambda e: e.seq):
        alarms += carries_alarm(envelope.records)
        gaps += envelope.gap is not None
        assert envelope.version == CURRENT_VERSION
        assert envelope.counters == Counters(alarms, gaps), (envelope.seq, envelope.counters, alarms, gaps)


def stop(agent, *, clean: bool) -> None:
    if clean:
        agent.checkpoint()
        agent.state.mark_clean_shutdown()
    agent.spool.close()
    agent.state.close()


def test_every_envelope_counts_the_alarms_and_gaps_signed_so_far(tmp_path):
    agent = build_agent(tmp_path, recording=True)
    signed = [agent.recorder.record([reading()]), agent.recorder.record([ALARM]), agent.recorder.record([reading()])]
    assert [e.counters for e in signed] == [Counters(0, 0), Counters(1, 0), Counters(1, 0)]
    stop(agent, clean=False)  # the power went
    agent = build_agent(tmp_path, recording=True)
    after = agent.recorder.record([ALARM])
    envelopes = signed_envelopes(agent)
    assert [e.gap.reason for e in envelopes if e.gap] == ["power-loss"]
    assert after.counters == Counters(2, 1)  # the power-loss gap record counted, then this alarm
    assert_counted_exactly(envelopes)


def test_counters_survive_a_clean_restart_and_a_lost_spool(tmp_path):
    agent = build_agent(tmp_path, recording=True)
    for _ in range(3):
        agent.recorder.record([ALARM])
    agent.spool.ack([e.seq for e in signed_envelopes(agent)])  # the lender has them all
    stop(agent, clean=True)
    agent = build_agent(tmp_path, recording=True)
    assert agent.recorder.record([ALARM]).counters == Counters(4, 0)
    stop(agent, clean=True)
    for suffix in ("", "-wal", "-shm"):  # the borrower deletes the spool
        Path(str(tmp_path / "spool.db") + suffix).unlink(missing_ok=True)
    agent = build_agent(tmp_path, recording=True)
    (reset,) = signed_envelopes(agent)
    assert reset.gap.reason == "spool-reset" and reset.counters == Counters(4, 1)  # from the state file, not from 0
    assert agent.recorder.record([ALARM]).counters == Counters(5, 1)


def test_a_spool_overflow_says_how_full_it_was_and_that_it_dropped_no_alarm(tmp_path):
    agent = build_agent(tmp_path, spool={"max_bytes": 64 * 1024}, recording=True)
    for index in range(600):  # ~200 B each, every tenth an alarm: well over the bound
        agent.recorder.record([ALARM if index % 10 == 0 else reading(float(index))])
    envelopes = signed_envelopes(agent)
    gaps = [e.gap for e in envelopes if e.gap is not None]
    assert gaps and all(g.reason == "overflow" and g.alarms_dropped == 0 for g in gaps)
    assert all(g.queued is not None and g.queued > 64 * 1024 // 300 for g in gaps)  # a full spool, a few hundred held
    alarm_seqs = [e.seq for e in envelopes if e.gap is None and e.alarm]
    assert len(alarm_seqs) == 60  # every alarm is still there
    assert_counted_exactly(envelopes)


def test_readings_the_spool_could_not_take_are_declared_with_the_alarms_among_them(tmp_path):
    agent = build_agent(tmp_path, recording=True)
    store = agent.spool.append

    def disk_full(envelope):
        raise SpoolUnavailableError("spool: write failed: database or disk is full")

    agent.spool.append = disk_full
    assert agent.record([reading()]) is None and agent.record([ALARM]) is None
    agent.spool.append = store  # space again
    agent.record([reading()])
    (gap,) = [e.gap for e in signed_envelopes(agent) if e.gap is not None]
    assert (gap.reason, gap.count, gap.alarms_dropped) == ("storage-failure", 2, 1)
    assert_counted_exactly(signed_envelopes(agent))


def test_signed_counters_survive_sigkill_and_never_decrease(tmp_path):
    rng = random.Random(20261206)
    told: dict[int, tuple[int, int]] = {}  # seq -> counters the child was told were in the spool
    for _ in range(25):
        lines = killed_after(rng, [sys.executable, "-I", str(HERE / "counters_crash_child.py"), str(REPO),
                                   str(tmp_path)], most=30)
        for line in lines:
            _, seq, alarms, gaps = line.split()
            told[int(seq)] = (int(alarms), int(gaps))
    with Spool.open(tmp_path / "spool.db") as spool:
        keys = {IDENTITY.kid: IDENTITY.device_key(DEVICE)}
        envelopes = [verify(item.raw, keys).envelope for item in spool.peek(1_000_000, 1 << 30)]
    by_seq = {e.seq: e for e in envelopes}
    for seq, counters in told.items():  # every append that returned is there, with the counters it reported
        assert (by_seq[seq].counters.alarms, by_seq[seq].counters.gaps) == counters
    assert_counted_exactly(envelopes)
    assert sum(e.gap is not None for e in envelopes) >= 20  # a power-loss gap record after (almost) every kill


OPERATIONS = st.lists(st.sampled_from(["reading", "alarm", "deliver", "restart", "power-cut", "lose-spool"]),
                      min_size=1, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_no_interleaving_of_restarts_deliveries_and_lost_spools_makes_the_counters_lie(operations):
    """Across any story, each envelope counts exactly the alarm envelopes and gap records signed up to it."""
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        signed: dict[int, Envelope] = {}

        def keep(agent) -> None:
            signed.update({e.seq: e for e in signed_envelopes(agent)} if len(agent.spool) else {})

        agent = build_agent(directory, spool={"synchronous": "NORMAL"}, recording=True)
        for operation in operations:
            if operation == "reading":
                agent.recorder.record([reading()])
            elif operation == "alarm":
                agent.recorder.record([ALARM])
            elif operation == "deliver":  # the lender stores everything spooled and acks it
                keep(agent)
                agent.spool.ack(list(signed))
            else:
                keep(agent)
                stop(agent, clean=operation == "restart")
                if operation == "lose-spool":
                    for suffix in ("", "-wal", "-shm"):
                        Path(str(directory / "spool.db") + suffix).unlink(missing_ok=True)
                agent = build_agent(directory, spool={"synchronous": "NORMAL"}, recording=True)
        keep(agent)
        stop(agent, clean=True)
        assert_counted_exactly(list(signed.values()))
