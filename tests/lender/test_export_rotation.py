"""lender verify of a jsonl export follows a key handover (telemetry.rotation) from the enrolled key alone."""
import base64
import json
import subprocess
import sys

from lender.evidence.export import verify_export
from telemetry.envelope import seal
from telemetry.rotation import handover_records
from tests.telemetry.test_rotation import NEW, OLD, THIEF, Chain, rotate

ENROLLED = {OLD.kid: OLD.device_key("gw-1")}


def rows(envelopes):
    """The export's rows (lender.evidence.export.export_rows' shape), numbered as read_export numbers them."""
    return [(n, {"device": e.device, "seq": e.seq, "boot": e.boot, "kid": e.kid.hex(), "digest_hex": e.digest.hex(),
                 "prev_hex": e.prev.hex(), "envelope_b64": base64.b64encode(e.raw).decode("ascii")})
            for n, e in enumerate(envelopes, start=1)]


def rotated_chain():
    chain = Chain()
    return chain, [chain.sign(OLD), chain.sign(OLD, handover_records(rotate(), OLD.kid, NEW, 1)),
                   chain.sign(NEW), chain.sign(NEW)]


def test_an_export_across_a_rotation_verifies_with_the_enrolled_key_alone_in_any_row_order():
    _, envelopes = rotated_chain()
    result = verify_export(rows(reversed(envelopes)), ENROLLED, allow_gaps=False)
    assert result["ok"], result["failures"]
    assert result["devices"][0]["envelopes"] == 4 and result["devices"][0]["intact"]


def test_the_retired_key_and_a_key_no_handover_named_fail_the_export():
    chain, envelopes = rotated_chain()
    envelopes.append(chain.sign(OLD))                                                  # the stolen old key, after
    envelopes.append(chain.sign(OLD, handover_records(rotate(2), OLD.kid, THIEF, 1)))  # its handover to the thief
    envelopes.append(chain.sign(THIEF))
    result = verify_export(rows(envelopes), ENROLLED, allow_gaps=True)
    assert not result["ok"]
    assert [f.split(":")[0] for f in result["failures"][:3]] == ["row 5 (line 5)", "row 6 (line 6)", "row 7 (line 7)"]
    assert "retired at the key handover at seq 2" in result["failures"][0]
    assert "unknown_key" in result["failures"][2]


def test_a_race_for_one_rotation_fails_the_export():
    chain, envelopes = rotated_chain()
    thief = seal(OLD, device="gw-1", boot=1, seq=2, prev=envelopes[0].digest,
                 records=handover_records(rotate(), OLD.kid, THIEF, 1), counters=envelopes[0].counters)
    result = verify_export(rows(envelopes + [thief]), ENROLLED, allow_gaps=False)
    assert not result["ok"] and any("two hands" in f for f in result["failures"]), result["failures"]


def test_lender_verify_follows_the_rotation_in_a_jsonl_export(tmp_path):
    _, envelopes = rotated_chain()
    export = tmp_path / "gw-1.jsonl"
    export.write_text("".join(json.dumps(row) + "\n" for _, row in rows(envelopes)))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"device": "gw-1", "public_key_hex": OLD.public_key.hex(), "kid": OLD.kid.hex(),
                                 "algorithm": "EdDSA"}]))
    run = subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "verify", str(export), "--keys", str(keys)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    without = tmp_path / "without-handover.jsonl"   # the handover's row left out: the new key's rows verify with nothing
    without.write_text("".join(json.dumps(row) + "\n" for _, row in rows(envelopes) if row["seq"] != 2))
    run = subprocess.run([sys.executable, "-m", "pledgewatch", "lender", "verify", str(without), "--keys", str(keys)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "unknown_key" in run.stdout + run.stderr, run.stdout + run.stderr
