"""Version 1 envelopes (issue 12's wire change): a lender still takes them, marked "legacy: no freshness".

A gateway still running a version 1 agent signs no counters, carries no lender
token and no binding. The lender stores what it signs and says so in `lender
status --json` ("freshness"); a version 2 gateway shows "lender token". A
borrower who puts an old agent back on a version 2 gateway (to drop the
counters and tokens) gets every envelope stored and the downgrade named as a
chain risk. Judged by the real lender (tests.kit.pledge: a SQLiteStore, Ingest
and `python -m pledgewatch lender status --json` in a subprocess).
"""
from __future__ import annotations

import time

from telemetry.alarms import CLEARED, RAISED, alarm_name
from telemetry.envelope import Envelope, seal
from telemetry.senml import Record
from tests.kit.pledge import ASSET, SENSORS, Gateway, PledgeLender

LEGACY = "legacy: no freshness"


def version_1(gateway: Gateway, *records: Record) -> Envelope:
    """The next envelope of the gateway's chain as a version 1 agent signs it: no counters, token or binding."""
    envelope = seal(gateway.identity, device=gateway.name, boot=gateway.boot, seq=gateway.seq + 1, prev=gateway.prev,
                    records=records)
    assert envelope.version == 1 and envelope.counters is None and envelope.token is None
    gateway.seq, gateway.prev = envelope.seq, envelope.digest
    return envelope


def test_version_1_envelopes_are_stored_and_named_legacy_and_a_downgrade_after_version_2_is_a_chain_risk(tmp_path):
    lender = PledgeLender(tmp_path / "lender", now=time.time() - 30)   # `lender status` judges at the real time
    try:
        t = lender.now
        door = alarm_name("door", ASSET)
        old = lender.gateway("gw-old", bound=False)                       # a version 1 agent has no binding to sign
        v1 = [version_1(old, Record(f"asset.{ASSET}.kind", string="stock", time=t),
                        Record(f"asset.{ASSET}.sensors", string=",".join(SENSORS), time=t)),
              version_1(old, Record("temp", value=4.5, unit="Cel", time=t)),
              version_1(old, Record(door, string=RAISED, time=t)),
              version_1(old, Record(door, string=CLEARED, time=t))]
        assert lender.deliver(old, *v1).stored == (1, 2, 3, 4)

        new = lender.gateway("gw-new", heartbeat_s=300.0)
        lender.deliver(new, new.manifest())
        assert new.token is not None
        lender.deliver(new, new.reading())                                # signed with the lender's token

        downgraded = lender.gateway("gw-downgraded", heartbeat_s=300.0)
        lender.deliver(downgraded, downgraded.manifest())
        lender.deliver(downgraded, downgraded.reading())
        legacy = version_1(downgraded, Record("temp", value=4.5, unit="Cel", time=t))
        assert lender.deliver(downgraded, legacy).stored == (legacy.seq,)

        statuses = lender.status_json()
    finally:
        lender.close()

    by_device: dict[str, list[dict]] = {}
    for status in statuses:
        by_device.setdefault(status["device"], []).append(status)
    assert set(by_device) == {"gw-old", "gw-new", "gw-downgraded"}, statuses
    assert [(s["state"], s["freshness"], s["risks"], s["last_seq"]) for s in by_device["gw-old"]] \
        == [("OK", LEGACY, [], 4)] * 2
    assert [(s["state"], s["freshness"], s["risks"]) for s in by_device["gw-new"]] == [("OK", "lender token", [])] * 2
    for status in by_device["gw-downgraded"]:
        assert status["state"] == "RISK" and status["freshness"] == LEGACY, status
        assert [(r["kind"], r["seq"]) for r in status["risks"]] == [("chain", legacy.seq)], status
        assert "version 1 after version 2" in status["risks"][0]["detail"]
