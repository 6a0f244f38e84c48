"""Chain verification: completeness, replays, broken links — and gaps explained by signed gap records."""
import random

from hypothesis import given, settings, strategies as st

from telemetry.chain import check_chain
from telemetry.envelope import GENESIS, Counters, Gap, seal
from telemetry.identity import Identity
from telemetry.senml import Record

KEY = Identity(bytes([3]) * 32)


def chain(count, start=1):
    out, prev = [], GENESIS
    for seq in range(start, start + count):
        envelope = seal(KEY, device="gw-1", boot=1, seq=seq, prev=prev, records=[Record("n", value=seq)])
        out.append(envelope)
        prev = envelope.digest
    return out


def test_a_complete_chain_is_intact_in_any_arrival_order():
    envelopes = chain(30)
    shuffled = envelopes[:]
    random.Random(4).shuffle(shuffled)
    report = check_chain(shuffled)
    assert report.intact and report.problems == () and (report.first, report.last, report.count) == (1, 30, 30)


def test_a_missing_envelope_is_a_gap_from_to():
    envelopes = chain(10)
    del envelopes[3:6]
    (problem,) = check_chain(envelopes).problems
    assert (problem.kind, problem.first, problem.last, problem.explained) == ("gap", 4, 6, False)


def test_a_replayed_envelope_and_a_conflicting_one_are_told_apart():
    envelopes = chain(5)
    impostor = seal(KEY, device="gw-1", boot=1, seq=3, prev=envelopes[1].digest, records=[Record("n", value=-1)])
    kinds = sorted(p.kind for p in check_chain(envelopes + [envelopes[2], impostor]).problems)
    assert kinds == ["conflict", "replay"]


def test_a_substituted_envelope_breaks_the_next_link():
    envelopes = chain(5)
    envelopes[2] = seal(KEY, device="gw-1", boot=1, seq=3, prev=envelopes[1].digest, records=[Record("n", value=99)])
    (problem,) = check_chain(envelopes).problems
    assert (problem.kind, problem.first) == ("broken-link", 4)


def test_a_gap_covered_by_a_signed_gap_record_is_explained():
    envelopes = chain(20)
    kept = envelopes[:5] + envelopes[15:]
    gap = seal(KEY, device="gw-1", boot=1, seq=21, prev=envelopes[-1].digest, gap=Gap("overflow", first=6, last=15, count=10))
    report = check_chain(kept + [gap])
    (problem,) = report.problems
    assert problem.explained_by == 21 and report.intact


def test_a_spool_reset_restarts_the_chain_explicitly():
    envelopes = chain(5)
    restart = seal(KEY, device="gw-1", boot=2, seq=6, prev=GENESIS, gap=Gap("spool-reset", first=4, last=5))
    assert check_chain(envelopes + [restart]).intact
    forged_restart = seal(KEY, device="gw-1", boot=2, seq=6, prev=GENESIS, records=[Record("n", value=1)])
    assert not check_chain(envelopes + [forged_restart]).intact


def test_a_chain_that_does_not_start_at_genesis_is_flagged_unless_told_otherwise():
    tail = chain(10)[4:]
    assert [p.kind for p in check_chain(tail).problems] == ["bad-start"]
    assert check_chain(tail, starts_at_genesis=False).intact


@settings(max_examples=1000)
@given(st.sets(st.integers(1, 40), max_size=39), st.randoms())
def test_every_missing_seq_is_reported_exactly_once(dropped, rnd):
    envelopes = [e for e in chain(40) if e.seq not in dropped or e.seq in (1, 40)]
    rnd.shuffle(envelopes)
    reported = set()
    for problem in check_chain(envelopes).problems:
        assert problem.kind == "gap"
        span = set(range(problem.first, problem.last + 1))
        assert not span & reported
        reported |= span
    assert reported == dropped - {1, 40}


def _linked(specs):
    """A chain from (boot, counters or None, restart?) per seq, each linked to the one before unless it restarts."""
    out, prev = [], GENESIS
    for seq, (boot, counters, restart) in enumerate(specs, 1):
        envelope = seal(KEY, device="gw-1", boot=boot, seq=seq, prev=GENESIS if restart else prev,
                        records=[Record("t", value=seq)], counters=None if counters is None else Counters(*counters))
        out.append(envelope)
        prev = envelope.digest
    return out


def test_a_boot_counter_that_goes_back_anywhere_is_named_not_only_between_neighbours():
    envelopes = _linked([(3, None, False), (3, None, False), (2, None, False), (4, None, False)])
    report = check_chain([envelopes[0], envelopes[2], envelopes[3]])  # seq 2 missing: no neighbour check there
    assert [p.kind for p in report.problems if p.kind != "gap"] == ["boot-regression"] and not report.intact


def test_a_chain_started_again_from_genesis_without_a_spool_reset_is_a_restart():
    report = check_chain(_linked([(1, None, False), (1, None, False), (1, None, True)]))
    assert {p.kind for p in report.problems} == {"restart", "broken-link"} and not report.intact


def test_signed_counters_going_back_mean_rolled_back_state():
    report = check_chain(_linked([(1, (2, 0), False), (1, (3, 0), False), (1, (1, 0), False)]))
    assert [p.kind for p in report.problems] == ["counter-regression"] and report.problems[0].first == 3


def test_an_honest_chain_across_reboots_with_rising_counters_is_intact():
    assert check_chain(_linked([(1, (0, 0), False), (1, (1, 0), False), (2, (1, 1), False), (3, (2, 1), False)])).intact
