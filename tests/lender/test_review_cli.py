"""`pledgewatch lender review`: a staff member's review clears a signed gap record, and only that, and is kept.

A gap the device declares is a risk (the lender cannot know whose hand caused
it) until a person at the lender looks at it and writes down who and why. The
review clears that gap record only: not another one, not seqs nothing
explains, and never alarms the signed counters say were lost.
"""
from __future__ import annotations

import json
import time

import pytest

from telemetry.envelope import GapReason
from tests.kit.pledge import ASSET, PledgeLender


@pytest.fixture
def lender(tmp_path):
    opened = PledgeLender(tmp_path / "lender", now=time.time() - 60)   # `lender status` judges at the real time
    yield opened
    opened.close()


def power_cut(lender: PledgeLender, gateway) -> int:
    """The gateway restarts without a clean shutdown and says so in a signed gap record; its seq."""
    gateway.boot += 1
    record = gateway.gap(GapReason.POWER_LOSS.value)
    lender.deliver(gateway, record, gateway.manifest())
    return record.seq


def review(lender: PledgeLender, seq: int, device: str = "gw-1"):
    return lender.cli("review", "--device", device, "--seq", str(seq), "--by", "m.weber",
                      "--note", "mains outage at the site confirmed by the utility")


@pytest.fixture
def gateway(lender):
    gateway = lender.gateway(heartbeat_s=300.0)
    lender.deliver(gateway, gateway.manifest(), gateway.reading())
    return gateway


def test_a_review_clears_the_gap_record_and_the_asset_is_ok_again(lender, gateway):
    seq = power_cut(lender, gateway)
    before = lender.status_json()
    assert {s["state"] for s in before} == {"GAPS"}
    assert all([(r["kind"], r["seq"]) for r in s["risks"]] == [("gap", seq)] for s in before)

    done = review(lender, seq)

    assert done.returncode == 0, done.stderr
    assert f"reviewed gw-1 seq {seq} by m.weber" in done.stdout
    after = lender.status_json()
    assert {(s["asset"], s["state"]) for s in after} == {(ASSET, "OK"), ("gateway", "OK")}


def test_the_review_is_kept_and_listed_with_the_gap_record(lender, gateway):
    seq = power_cut(lender, gateway)
    review(lender, seq)

    (kept,) = lender.store.reviews("gw-1")
    assert (kept.seq, kept.reviewer, kept.note) == (seq, "m.weber", "mains outage at the site confirmed by the utility")
    (entry,) = json.loads(lender.cli("gaps", "--json", "--device", "gw-1").stdout)
    (record,) = entry["gap_records"]
    assert record["seq"] == seq and record["reason"] == "power-loss"
    assert [(r["by"], r["note"]) for r in record["reviews"]] == [("m.weber", kept.note)]
    assert f"seq {seq}: power-loss, seqs not stated; reviewed by m.weber" in lender.cli("gaps").stdout


def test_an_unreviewed_gap_record_is_listed_as_not_reviewed(lender, gateway):
    seq = power_cut(lender, gateway)
    (entry,) = json.loads(lender.cli("gaps", "--json").stdout)
    assert [(g["seq"], g["reviews"]) for g in entry["gap_records"]] == [(seq, [])]
    assert "NOT REVIEWED" in lender.cli("gaps").stdout


def test_reviewing_a_seq_that_is_no_gap_record_fails_and_keeps_nothing(lender, gateway):
    seq = power_cut(lender, gateway)

    for wrong, device in ((seq + 1, "gw-1"), (2, "gw-1"), (seq, "gw-9")):
        done = review(lender, wrong, device)
        assert done.returncode == 1
        assert "no signed gap record" in done.stderr
    assert lender.store.reviews() == []
    assert {s["state"] for s in lender.status_json()} == {"GAPS"}


def test_a_review_clears_only_the_gap_record_it_names(lender, gateway):
    first = power_cut(lender, gateway)
    second = power_cut(lender, gateway)

    review(lender, first)

    statuses = lender.status_json()
    assert {s["state"] for s in statuses} == {"GAPS"}
    assert all([(r["kind"], r["seq"]) for r in s["risks"]] == [("gap", second)] for s in statuses)


def test_a_review_does_not_clear_seqs_that_nothing_explains(lender, gateway):
    gateway.reading()                      # signed, never delivered, no gap record claims it
    seq = power_cut(lender, gateway)

    review(lender, seq)

    statuses = lender.status_json()
    assert {s["state"] for s in statuses} == {"GAPS"}
    assert all(s["unexplained_gaps"] == [[3, 3]] for s in statuses)


def test_a_review_of_the_gap_record_over_a_lost_alarm_leaves_the_alarm_lost(lender, gateway):
    """The borrower deletes the door alarm from the spool and has the agent sign an overflow record over it;
    a credit officer, told it was a full spool, reviews the record: the signed counters still say otherwise."""
    alarm = gateway.alarm()
    record = gateway.gap(GapReason.OVERFLOW.value, first=alarm.seq, last=alarm.seq, queued=4096, alarms_dropped=0)
    lender.deliver(gateway, record, gateway.heartbeat())

    review(lender, record.seq)

    statuses = lender.status_json()
    assert {s["state"] for s in statuses} == {"RISK"}
    assert all([r["kind"] for r in s["risks"]] == ["alarm-lost"] for s in statuses)
    assert all("1 alarm(s) signed by the device and never received" in s["risks"][0]["detail"] for s in statuses)
