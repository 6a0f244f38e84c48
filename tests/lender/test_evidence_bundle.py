"""Evidence bundles as a disputing party would try them: an honest one verifies with the lender's key alone; every
manipulation (a cut tail, a forged key, another device's rows, envelopes signed after revocation, moved arrival
times, a lender store edited afterwards) makes `lender verify` exit non-zero naming the problem."""
from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime, timezone

import pytest

from lender.evidence import registry
from telemetry.envelope import decode as decode_envelope
from telemetry.envelope import seal
from telemetry.identity import Identity
from telemetry.logentry import EntryKind, LogEntry, Registration, envelope_entry
from telemetry.merkle import leaf_hash
from telemetry.receipt import SignedCheckpoint, verify_consistency_receipt
from tests.kit.evidence import EvidenceLender, downgrade_to_schema_2


@pytest.fixture
def lender(tmp_path):
    opened = EvidenceLender(tmp_path / "lender")
    yield opened
    opened.close()


@pytest.fixture
def told(lender):
    """A story: gw-1 enrolled, 40 readings, an alarm, a signed gap and its review; gw-2 alongside."""
    gateway = lender.enroll("gw-1")
    neighbour = lender.enroll("gw-2")
    lender.readings(gateway, 25)
    lender.readings(neighbour, 12)
    lender.deliver(gateway, *gateway.door_opened_and_closed())
    lender.readings(gateway, 15)
    gap = gateway.gap("power-loss")
    lender.deliver(gateway, gap)
    code, _, err = lender.cli("review", "--device", "gw-1", "--seq", gap.seq, "--by", "ana", "--note", "power cut")
    assert code == 0, err
    return gateway, neighbour


def write(path, document: dict):
    path.write_text(json.dumps(document))
    return path


def failures(report: dict) -> list[str]:
    return [f["check"] + ": " + f["detail"] for f in report["findings"] if not f["ok"]]


def entry_of(row: dict) -> LogEntry:
    return LogEntry.decode(base64.b64decode(row["entry_b64"]))


def replace_entry(row: dict, raw: bytes, *, relabel: bool = True) -> None:
    """What a forger does: new entry bytes, and (unless told not to) the leaf and labels to match."""
    row["entry_b64"] = base64.b64encode(raw).decode()
    entry = LogEntry.decode(raw)
    row["at_ms"] = entry.at
    if relabel:
        row["leaf_hex"] = leaf_hash(raw).hex()


def test_an_honest_bundle_verifies_with_nothing_but_the_lenders_key(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "gw-1.json")
    shutil.rmtree(lender.data_dir / "enroll" / "sites")  # nothing of the lender's besides its key is needed
    code, report = lender.verify(tmp_path / "gw-1.json")
    assert code == 0 and report["ok"], failures(report)
    assert (report["envelopes"], report["first_seq"], report["last_seq"]) == (43, 1, 43)
    checks = {f["check"] for f in report["findings"]}
    assert {"checkpoint", "proof", "tail", "enrollment", "chain"} <= checks
    assert any("countersigned by technician tech-ana" in f["detail"] for f in report["findings"])
    assert document["format"] == "pledgewatch-evidence-bundle/1" and document["lender_key_hex"] == lender.key.hex()
    assert [e["kind"] for e in document["entries"]][:2] == ["registration", "envelope"]
    assert document["entries"][-1]["kind"] == "review"


def test_a_bundle_with_the_tail_cut_off_fails_as_incomplete(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "b.json")
    document["entries"] = document["entries"][:-4]  # the alarm's clearance, the gap and its review gone
    code, report = lender.verify(write(tmp_path / "cut.json", document))
    assert code != 0
    assert any(f.startswith("tail: the checkpoint commits to 45 entries of gw-1") for f in failures(report))
    assert any(f.startswith("proof:") for f in failures(report))


def test_a_bundle_missing_an_envelope_in_the_middle_fails(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "b.json")
    del document["entries"][20]
    code, report = lender.verify(write(tmp_path / "hole.json", document))
    assert code != 0 and any(f.startswith("tail:") for f in failures(report))
    assert any("chain: gw-1: gap" in f for f in failures(report))


def test_a_bundle_forged_from_scratch_with_another_device_key_fails(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "b.json")
    forger = Identity.generate()
    rows = document["entries"]
    registration = entry_of(rows[0])
    body = registration.body
    replace_entry(rows[0], LogEntry(EntryKind.REGISTRATION, "gw-1", registration.at,
                                    Registration(forger.public_key, body.asset)).encode())
    prev = bytes(16)
    for row in rows[1:]:
        entry = entry_of(row)
        if entry.kind is not EntryKind.ENVELOPE:
            continue
        original = decode_envelope(entry.body)
        forged = seal(forger, device="gw-1", boot=original.boot, seq=original.seq, prev=prev, records=original.records,
                      gap=original.gap, counters=original.counters, token=original.token, binding=original.binding)
        prev = forged.digest
        replace_entry(row, envelope_entry("gw-1", entry.at, forged.raw))
    code, report = lender.verify(write(tmp_path / "forged.json", document))
    assert code != 0
    assert any(f.startswith("proof: the entries' recorded leaves and the proof do not give the checkpoint's root")
               for f in failures(report))


def test_rows_of_another_device_in_a_bundle_fail(lender, told, tmp_path):
    mine = lender.bundle("gw-1", tmp_path / "gw-1.json")
    theirs = lender.bundle("gw-2", tmp_path / "gw-2.json")
    mine["entries"] = sorted(mine["entries"] + theirs["entries"][1:4], key=lambda row: row["index"])
    code, report = lender.verify(write(tmp_path / "mixed.json", mine))
    assert code != 0
    assert sum(f.startswith("device: entry") and "gw-2's envelope, not gw-1's" in f for f in failures(report)) == 3


def test_envelopes_signed_after_the_revocation_fail(lender, told, tmp_path):
    gateway, _ = told
    registry.revoke(lender.store, "gw-1", now=lender.now)
    document = lender.bundle("gw-1", tmp_path / "b.json")
    lender.now += 86400  # a day later, the borrower still holds the gateway's key and signs "all is well"
    late = gateway.reading(4.5)
    last = document["entries"][-1]
    document["entries"].append({"index": last["index"] + 1, "kind": "envelope", "at_ms": int(lender.now * 1000),
                                "leaf_hex": "", "entry_b64": ""})
    replace_entry(document["entries"][-1], envelope_entry("gw-1", int(lender.now * 1000), late.raw))
    code, report = lender.verify(write(tmp_path / "late.json", document))
    assert code != 0
    found = failures(report)
    assert any(f.startswith("revocation: entry") and "logged after the device was revoked" in f for f in found)
    assert any("dates readings after the device was revoked" in f for f in found)
    assert any(f.startswith("proof:") for f in found)


def test_a_moved_arrival_time_fails_whether_or_not_the_leaf_is_forged_too(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "b.json")
    row = document["entries"][5]
    entry = entry_of(row)
    moved = envelope_entry("gw-1", entry.at - 3_600_000, entry.body)
    replace_entry(row, moved, relabel=False)
    code, report = lender.verify(write(tmp_path / "moved.json", document))
    assert code != 0 and any(f.startswith(f"entry: entry {row['index']} (envelope gw-1 seq 5): its bytes are not the "
                                          "ones the log recorded") for f in failures(report))
    row["leaf_hex"] = leaf_hash(moved).hex()
    code, report = lender.verify(write(tmp_path / "moved.json", document))
    assert code != 0 and any(f.startswith("proof:") for f in failures(report))


def test_a_shown_arrival_time_that_is_not_the_logged_one_fails(lender, told, tmp_path):
    document = lender.bundle("gw-1", tmp_path / "b.json")
    document["entries"][3]["at_ms"] -= 60_000
    code, report = lender.verify(write(tmp_path / "shown.json", document))
    assert code != 0 and any(f.startswith("arrival: entry") for f in failures(report))


def test_a_bundle_checked_against_another_lenders_key_fails(lender, told, tmp_path):
    lender.bundle("gw-1", tmp_path / "b.json")
    code, out, _ = lender.cli("verify", tmp_path / "b.json", "--lender-key", Identity.generate().public_key.hex())
    assert code != 0 and "not signed by the lender's key" in out and "verify: FAILED" in out


@pytest.mark.parametrize("edit", [
    "UPDATE envelopes SET received_at = received_at - 86400 WHERE device = 'gw-1' AND seq = 7",
    "UPDATE envelopes SET raw = (SELECT raw FROM envelopes WHERE device = 'gw-1' AND seq = 8)"
    " WHERE device = 'gw-1' AND seq = 7",
    "DELETE FROM envelopes WHERE device = 'gw-1' AND seq = 7",
    "UPDATE envelopes SET log_index = (SELECT max(log_index) FROM envelopes WHERE device = 'gw-1' AND seq IN (7, 8))"
    " + (SELECT min(log_index) FROM envelopes WHERE device = 'gw-1' AND seq IN (7, 8)) - log_index"
    " WHERE device = 'gw-1' AND seq IN (7, 8)",
], ids=["arrival-time", "bytes", "deleted", "reordered"])
def test_an_envelope_edited_in_the_lenders_store_afterwards_is_caught_by_the_consistency_check_and_the_bundle(
        lender, told, tmp_path, edit):
    code, kept, _ = lender.cli("checkpoint", "--json")
    (tmp_path / "kept.json").write_text(kept)
    lender.readings(told[0], 5)  # the log grows on after someone kept that checkpoint
    code, out, _ = lender.cli("prove-consistency", tmp_path / "kept.json", "--json")
    assert code == 0, out
    lender.store._conn.execute(edit)
    code, out, _ = lender.cli("prove-consistency", tmp_path / "kept.json", "--json")
    result = json.loads(out)
    assert code != 0 and not result["ok"]
    assert any(p.startswith("entry ") and "gw-1 seq 7" in p for p in result["problems"]), result["problems"]
    code, _, err = lender.cli("export", "--device", "gw-1", "--format", "bundle", "--output", tmp_path / "b.json")
    assert code != 0 and "WARNING entry" in err
    code, report = lender.verify(tmp_path / "b.json")
    assert code != 0
    assert any(f.startswith("entry: entry") for f in failures(report)), failures(report)


def test_the_checkpoint_command_prints_what_a_third_party_keeps(lender, told):
    code, out, _ = lender.cli("checkpoint", "--json")
    shown = json.loads(out)
    assert code == 0 and {"tree_size", "root_hex", "time", "cose_b64"} <= set(shown)
    signed = SignedCheckpoint.decode(base64.b64decode(shown["cose_b64"]), lender.key)
    assert (signed.checkpoint.tree_size, signed.checkpoint.root.hex()) == (shown["tree_size"], shown["root_hex"])
    code, out, _ = lender.cli("key")
    assert code == 0 and out.strip() == lender.key.hex()


def test_prove_consistency_hands_out_a_receipt_of_consistency(lender, told, tmp_path):
    code, kept, _ = lender.cli("checkpoint", "--json")
    (tmp_path / "kept.json").write_text(kept)
    lender.readings(told[0], 3)
    code, out, _ = lender.cli("prove-consistency", tmp_path / "kept.json", "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["new"]["tree_size"] == json.loads(kept)["tree_size"] + 3
    old = SignedCheckpoint.decode(base64.b64decode(json.loads(kept)["cose_b64"]), lender.key).checkpoint
    assert verify_consistency_receipt(base64.b64decode(result["receipt_b64"]), old, lender.key).tree_size == \
        result["new"]["tree_size"]


def test_a_checkpoint_from_another_lender_is_refused_by_prove_consistency(lender, told, tmp_path):
    other = SignedCheckpoint.sign(lender.store.checkpoint().checkpoint, Identity.generate())
    (tmp_path / "other.cose").write_bytes(other.encode())
    code, _, err = lender.cli("prove-consistency", tmp_path / "other.cose")
    assert code != 0 and "not a checkpoint signed by this lender's key" in err


def test_the_jsonl_export_and_its_verify_keep_working_beside_bundles(lender, told, tmp_path):
    code, _, err = lender.cli("export", "--device", "gw-1", "--output", tmp_path / "rows.jsonl")
    assert code == 0, err
    code, out, _ = lender.cli("verify", tmp_path / "rows.jsonl", "--data", lender.data_dir)
    assert code == 0 and "verify: OK" in out
    lender.bundle("gw-1", tmp_path / "b.json")
    code, _, err = lender.cli("verify", tmp_path / "b.json", "--data", lender.data_dir)
    assert code != 0 and "--lender-key" in err


def test_a_file_that_is_no_bundle_is_refused_with_a_reason(lender, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"format": "something else"}))
    code, _, err = lender.cli("verify", tmp_path / "x.json", "--lender-key", lender.key.hex())
    assert code == 2 and "not an evidence bundle" in err


def test_an_enrolled_device_from_a_store_older_than_the_log_gets_a_bundle_that_verifies(lender, tmp_path):
    gateway = lender.enroll("gw-1")
    lender.readings(gateway, 12)
    lender.close()
    downgrade_to_schema_2(lender.data_dir)
    lender.open()   # the upgraded lender logs what the old store held
    lender.bundle("gw-1", tmp_path / "b.json")
    code, report = lender.verify(tmp_path / "b.json")
    assert code == 0, failures(report)
    assert any("the log holds no enrollment request" in f["detail"] for f in report["findings"])


def _contents_moved_between_indices(document: dict, kept: dict) -> None:
    """Two envelopes trade places: bytes, recorded leaf, kind and time move, the indices stay in order."""
    first, second = document["entries"][5], document["entries"][6]
    for key in ("entry_b64", "leaf_hex", "kind", "at_ms"):
        first[key], second[key] = second[key], first[key]


def _older_checkpoint_as_target(document: dict, kept: dict) -> None:
    """The checkpoint the entries are proven against replaced by an older one of the same lender."""
    document["checkpoints"][-1] = {k: kept[k] for k in ("tree_size", "root_hex", "time_ms", "cose_b64")}
    document["consistency"][-1]["new_size"] = kept["tree_size"]


@pytest.mark.parametrize(("manipulate", "expected"), [
    (lambda d, kept: d["entries"].insert(6, d["entries"].pop(5)), "not a bundle: the entries must be sorted by index"),
    (_contents_moved_between_indices, "proof:"),
    (_older_checkpoint_as_target, "consistency:"),
    (lambda d, kept: d.update(consistency=[]), "not a bundle: a bundle carries one consistency proof per pair"),
    (lambda d, kept: d.update(checkpoints=d["checkpoints"][::-1]), "consistency:"),
], ids=["rows-reordered", "contents-moved-between-indices", "older-checkpoint-as-target", "consistency-dropped",
        "checkpoints-reversed"])
def test_reordering_entries_or_swapping_checkpoints_fails(lender, told, tmp_path, manipulate, expected):
    code, kept, _ = lender.cli("checkpoint", "--json")
    lender.readings(told[0], 3)   # the log grows on after someone kept that checkpoint
    document = lender.bundle("gw-1", tmp_path / "b.json")
    manipulate(document, json.loads(kept))
    path = write(tmp_path / "manipulated.json", document)
    if expected.startswith("not a bundle: "):
        code, _, err = lender.cli("verify", path, "--lender-key", lender.key.hex(), "--json")
        assert code == 2 and expected.removeprefix("not a bundle: ") in err
        return
    code, report = lender.verify(path)
    assert code != 0 and any(f.startswith(expected) for f in failures(report)), failures(report)


def test_an_older_honest_bundle_verifies_and_says_as_of_when_so_its_reader_sees_its_limit(lender, told, tmp_path):
    old = lender.bundle("gw-1", tmp_path / "old.json")
    lender.now += 3600
    lender.deliver(told[0], *told[0].door_opened_and_closed())   # the alarm comes after that export
    new = lender.bundle("gw-1", tmp_path / "new.json")
    shown = {}
    for name, document in (("old", old), ("new", new)):
        code, report = lender.verify(tmp_path / f"{name}.json")
        assert code == 0, failures(report)
        signed = SignedCheckpoint.decode(base64.b64decode(document["checkpoints"][-1]["cose_b64"]), lender.key)
        when = datetime.fromtimestamp(signed.checkpoint.time_ms / 1000, timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        details = {f["check"]: f["detail"] for f in report["findings"]}
        assert f"entries as of {when} (the lender's time): nothing logged after it is covered" in details["checkpoint"]
        assert details["tail"].startswith(f"complete as of {when}: ")
        shown[name] = (report["tree_size"], report["last_seq"])
    assert shown["old"][0] < shown["new"][0] and shown["old"][1] + 2 == shown["new"][1]
