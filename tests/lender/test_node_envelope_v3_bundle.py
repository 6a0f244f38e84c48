"""A node's compact envelopes (version 3) in the lender's evidence: stored beside version 2 on one chain, exported in a
bundle that `lender verify` checks with the lender's key alone, and a changed reading in it is caught."""
from __future__ import annotations

import base64
import json

import pytest

from telemetry.envelope import Envelope, seal
from telemetry.logentry import EntryKind, LogEntry
from telemetry.merkle import leaf_hash
from telemetry.senml import Record
from tests.kit.evidence import EvidenceLender


@pytest.fixture
def lender(tmp_path):
    opened = EvidenceLender(tmp_path / "lender")
    yield opened
    opened.close()


def node_report(device, *, compact: bool, tamper_open: bool = False) -> Envelope:
    """The next report of an enrolled node (kit.pledge.Gateway's chain state), as firmware of either version signs it."""
    t = device.clock()
    records = [Record("temp", value=4.5, unit="Cel", time=t),
               Record("alarm.tamper", boolean=True, time=t) if tamper_open else Record("tamper", boolean=False, time=t),
               Record("batt", value=3.599609375, unit="V", time=t)]
    envelope = seal(device.identity, device=device.name, boot=device.boot, seq=device.seq + 1, prev=device.prev,
                    records=records, counters=device.counters.after(records, None), token=device.token,
                    binding=device.binding, compact=compact)
    device.seq, device.prev, device.counters = envelope.seq, envelope.digest, envelope.counters
    return envelope


def test_version_2_and_3_node_envelopes_verify_in_a_bundle_and_a_changed_reading_does_not(lender, tmp_path):
    node = lender.enroll("yard-17")
    sent = []
    for compact, tamper in ((False, False), (False, False), (True, False), (True, True), (True, False)):
        envelope = node_report(node, compact=compact, tamper_open=tamper)
        ack = lender.deliver(node, envelope)
        assert ack.stored == (envelope.seq,), ack
        sent.append(envelope)
        lender.now += 900
    assert [e.version for e in sent] == [2, 2, 3, 3, 3] and len(sent[2].raw) < len(sent[1].raw) - 25
    stored = list(lender.store.envelopes("yard-17"))
    assert [(e.version, e.alarm_count, e.binding) for e in stored] == [
        (2, 0, node.binding), (2, 0, node.binding), (3, 0, node.binding), (3, 1, node.binding), (3, 1, node.binding)]

    path = tmp_path / "yard-17.json"
    document = lender.bundle("yard-17", path)
    code, report = lender.verify(path)
    assert code == 0 and report["ok"], [f for f in report["findings"] if not f["ok"]]
    assert (report["envelopes"], report["first_seq"], report["last_seq"]) == (5, 1, 5)

    # a disputing party changes the temperature of a version 3 report (4.5 -> 9.0, the half float's high byte)
    for row in document["entries"]:
        entry = LogEntry.decode(base64.b64decode(row["entry_b64"]))
        if entry.kind is EntryKind.ENVELOPE and entry.body == sent[3].raw:
            forged = bytearray(sent[3].raw)
            at = forged.index(bytes.fromhex("01f94480"))  # reading 1 (temp): half float 4.5
            forged[at + 2] = 0x48                          # 9.0
            raw = LogEntry(entry.kind, entry.device, entry.at, bytes(forged)).encode()
            row["entry_b64"] = base64.b64encode(raw).decode()
            row["leaf_hex"] = leaf_hash(raw).hex()
            break
    else:
        raise AssertionError("the version 3 envelope is not in the bundle")
    path.write_text(json.dumps(document))
    code, report = lender.verify(path)
    assert code != 0 and not report["ok"]
    assert any("signature" in f["detail"] for f in report["findings"] if not f["ok"]), report["findings"]
