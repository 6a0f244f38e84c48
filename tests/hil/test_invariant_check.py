"""The end-of-scenario invariant on real signed envelopes: it names exactly the seqs that were lost,
accepts gaps that signed gap records explain, and refuses duplicates, forgeries and broken chains."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.exc import InvariantViolation
from hil.invariant import check, describe_seqs, ranges
from telemetry.envelope import GENESIS, Gap, seal
from telemetry.identity import Identity
from telemetry.senml import Record

DEVICE = "gw-test"
IDENTITY = Identity(bytes(range(32)))
KEY = IDENTITY.device_key(DEVICE)


def chain(count: int, gaps: dict[int, Gap] | None = None, identity: Identity = IDENTITY):
    """Envelopes 1..count as the agent seals them; `gaps` makes those seqs gap records."""
    prev, out = GENESIS, []
    for seq in range(1, count + 1):
        gap = (gaps or {}).get(seq)
        records = () if gap else (Record("temp", value=20.0 + seq / 4, unit="Cel", time=1767225600 + seq),)
        envelope = seal(identity, device=DEVICE, boot=1, seq=seq, prev=prev, records=records, gap=gap)
        prev = envelope.digest
        out.append(envelope)
    return out


def rows(envelopes):
    """Export rows as `lender export --format jsonl` writes them."""
    return [{"device": e.device, "seq": e.seq, "envelope_b64": base64.b64encode(e.raw).decode()} for e in envelopes]


def test_a_complete_chain_holds_the_invariant():
    report = check(DEVICE, head_seq=20, rows=rows(chain(20)), keys=[KEY])
    assert report.ok and report.stored == 20 and report.readings_delivered == 20 and report.lost == ()
    report.raise_if_failed()


def test_missing_seqs_are_named_as_lost():
    envelopes = [e for e in chain(30) if e.seq not in {7, 8, 9, 21}]
    report = check(DEVICE, head_seq=30, rows=rows(envelopes), keys=[KEY])
    assert report.lost == (7, 8, 9, 21)
    with pytest.raises(InvariantViolation, match=r"lost seqs 7\.\.9, 21 \(4 envelope\(s\) the agent accepted"):
        report.raise_if_failed()


def test_the_agents_last_envelopes_that_never_arrived_are_lost_too():
    report = check(DEVICE, head_seq=12, rows=rows(chain(10)), keys=[KEY])
    assert report.lost == (11, 12)


def test_a_gap_a_signed_gap_record_explains_is_not_a_loss():
    envelopes = chain(12, gaps={10: Gap("overflow", first=4, last=6, count=3)})
    kept = [e for e in envelopes if e.seq not in (4, 5, 6)]
    report = check(DEVICE, head_seq=12, rows=rows(kept), keys=[KEY])
    assert report.ok, report.failures
    assert report.readings_lost_in_gaps == 3 and report.gaps[0].reason == "overflow"


def test_a_gap_record_without_a_range_explains_nothing():
    envelopes = chain(12, gaps={10: Gap("power-loss")})
    report = check(DEVICE, head_seq=12, rows=rows([e for e in envelopes if e.seq != 5]), keys=[KEY])
    assert report.lost == (5,)


def test_seqs_still_in_the_spool_are_not_delivered_rather_than_lost():
    report = check(DEVICE, head_seq=15, rows=rows(chain(12)), keys=[KEY], spooled=[13, 14, 15])
    assert report.lost == () and report.not_delivered == (13, 14, 15)
    assert "seqs 13..15 were still in the agent's spool" in report.failures[0]


def test_a_seq_exported_twice_is_stored_more_than_once():
    envelopes = chain(5)
    report = check(DEVICE, head_seq=5, rows=rows(envelopes + envelopes[2:3]), keys=[KEY])
    assert report.duplicates == (3,) and not report.ok
    assert any("stored more than once" in f for f in report.failures)


def test_an_envelope_signed_by_another_key_does_not_verify():
    forged = chain(5, identity=Identity(bytes(32)))
    report = check(DEVICE, head_seq=5, rows=rows(chain(4) + forged[4:]), keys=[KEY])
    assert not report.ok and report.bad_signatures and "seq 5" in report.bad_signatures[0]


def test_a_broken_link_fails_the_chain():
    good = chain(6)
    other = seal(IDENTITY, device=DEVICE, boot=1, seq=4, prev=bytes(16), records=(Record("temp", value=1.0),))
    report = check(DEVICE, head_seq=6, rows=rows(good[:3] + [other] + good[4:]), keys=[KEY])
    assert not report.ok and any("broken-link" in p for p in report.chain_problems)


def test_seqs_the_agent_never_used_are_foreign():
    report = check(DEVICE, head_seq=3, rows=rows(chain(5)), keys=[KEY])
    assert report.foreign == (4, 5) and not report.ok


def test_an_agent_that_measured_nothing_fails():
    assert "never used a seq" in check(DEVICE, head_seq=None, rows=[], keys=[KEY]).failures[0]


def test_describe_seqs_reads_like_a_person_wrote_it():
    assert ranges([5, 1, 2, 3, 9]) == [(1, 3), (5, 5), (9, 9)]
    assert describe_seqs([1, 2, 3, 5, 9]) == "1..3, 5, 9"
    assert describe_seqs(range(0, 100, 2), limit=3) == "0, 2, 4, … (47 more runs)"


ENVELOPES = chain(60)


@given(st.sets(st.integers(1, 60)), st.sets(st.integers(1, 60)))
def test_exactly_the_dropped_seqs_that_are_not_spooled_are_named_lost(dropped, spooled):
    spooled = spooled & dropped
    report = check(DEVICE, head_seq=60, rows=rows([e for e in ENVELOPES if e.seq not in dropped]), keys=[KEY],
                   spooled=spooled)
    assert set(report.lost) == dropped - spooled
    assert set(report.not_delivered) == spooled
    assert report.ok == (not dropped)
    assert report.stored == 60 - len(dropped)
