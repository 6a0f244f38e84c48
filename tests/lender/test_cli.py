"""`pledgewatch lender ...` as the lender's staff run it: real subprocesses, a real server, files on disk."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from aiocoap.numbers import codes
from tests.kit.lender import PYTHON_BIN, Device, RawCoap, ack_of, batch, enroll, free_environment, oscore_post

from lender.evidence.ingest import Ingest
from lender.evidence.refusals import Refusals
from telemetry.envelope import Gap, GapReason, seal
from telemetry.senml import Record

PLEDGEWATCH = str(PYTHON_BIN / "pledgewatch")


def lender(*args, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([PLEDGEWATCH, "lender", *map(str, args)], capture_output=True, text=True, timeout=60,
                          env=free_environment(), input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"lender {args} exited {done.returncode}: {done.stderr}")
    return done


class Serving:
    """`pledgewatch lender serve` in a subprocess, with the port it printed."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [PLEDGEWATCH, "lender", "serve", "--data", str(data_dir), "--bind", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=free_environment())
        line = self.banner = self.process.stdout.readline()
        match = re.search(r"coap://127\.0\.0\.1:(\d+)/t", line)
        if not match:
            self.process.kill()
            raise AssertionError(f"lender serve did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(match.group(1))
        self.uri = f"coap://127.0.0.1:{self.port}/t"

    def stop(self, signum=signal.SIGTERM) -> tuple[int, str, str]:
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def device() -> Device:
    return Device("gw-7")


@pytest.fixture
def filled(store, data_dir, device):
    """A lender store holding 20 envelopes of gw-7, with a signed gap record explaining seqs 8..9."""
    enroll(store, data_dir, device)
    envelopes = device.chain(10)
    record = device.next(gap=Gap(GapReason.OVERFLOW.value, first=8, last=9, count=2))
    envelopes += [record] + device.chain(9)
    kept = [e for e in envelopes if e.seq not in (8, 9)]
    assert Ingest(store).batch(batch(kept), peer="test").stored == tuple(e.seq for e in kept)
    return kept


# --- registry --------------------------------------------------------------------------------

def test_register_list_and_revoke_a_device(data_dir, tmp_path, device):
    key = device.identity.public_key.hex()
    out = lender("register", "--data", data_dir, "--device", "gw-7", "--public-key", key, "--asset", "loan 42 forklift",
                 "--oscore-out", tmp_path / "to-the-gateway").stdout
    assert f"device-side OSCORE context written to {tmp_path / 'to-the-gateway'}" in out
    context = tmp_path / "to-the-gateway"
    assert stat.S_IMODE(context.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in context.iterdir()} == {
        "settings.json": 0o600, "secret.json": 0o600}
    (row,) = json.loads(lender("devices", "--data", data_dir, "--json").stdout)
    assert row["device"] == "gw-7" and row["public_key_hex"] == key and row["status"] == "active"
    assert row["kid"] == device.identity.kid.hex() and row["asset"] == "loan 42 forklift"
    assert (row["algorithm"], row["key_storage"]) == ("EdDSA", "software")
    again = lender("register", "--data", data_dir, "--device", "gw-7", "--public-key", key, check=False)
    assert again.returncode == 1 and "registered already" in again.stderr
    assert "revoked gw-7" in lender("revoke", "--data", data_dir, "--device", "gw-7").stdout
    assert json.loads(lender("devices", "--data", data_dir, "--json").stdout)[0]["status"] == "revoked"
    assert "revoked" in lender("devices", "--data", data_dir).stdout


def test_registration_refuses_bad_keys_and_ids_and_unknown_devices_clearly(data_dir):
    bad_key = lender("register", "--data", data_dir, "--device", "gw-1", "--public-key", "abcd", check=False)
    assert bad_key.returncode == 1 and "32 bytes" in bad_key.stderr
    bad_id = lender("register", "--data", data_dir, "--device", "../etc", "--public-key", "00" * 32, check=False)
    assert bad_id.returncode == 1 and "cannot be registered" in bad_id.stderr
    lender("register", "--data", data_dir, "--device", "gw-1", "--public-key", "11" * 32, "--no-oscore")
    unknown = lender("revoke", "--data", data_dir, "--device", "gw-2", check=False)
    assert unknown.returncode == 1 and "no device 'gw-2'" in unknown.stderr
    missing = lender("devices", "--data", data_dir / "typo", check=False)
    assert missing.returncode == 2 and "no lender store" in missing.stderr


# --- serve -----------------------------------------------------------------------------------

def test_serve_insecure_warns_takes_batches_and_stops_cleanly_on_sigterm(store, data_dir, device):
    enroll(store, data_dir, device)
    with Serving(data_dir, "--insecure") as serving:
        client = RawCoap(serving.port)
        answer = client.post(batch(device.chain(3)))
        assert answer.code == codes.CHANGED and ack_of(answer.payload) == {1: [1, 2, 3], 2: [], 3: []}
        assert client.post(b"\xff\x00garbage").code == codes.BAD_REQUEST
        client.close()
        code, out, err = serving.stop(signal.SIGTERM)
    assert code == 0 and "lender: stopped" in out
    assert "insecure" in err and "WARNING" in err
    assert store.counts().envelopes == 3


def test_serve_without_insecure_refuses_plain_coap_and_stops_on_sigint(store, data_dir, device):
    enroll(store, data_dir, device)
    with Serving(data_dir) as serving:
        client = RawCoap(serving.port)
        assert client.post(batch(device.chain(1))).code == codes.UNAUTHORIZED
        client.close()
        code, out, err = serving.stop(signal.SIGINT)
    assert code == 0 and "OSCORE only" in serving.banner and "insecure" not in err
    assert store.counts().envelopes == 0


def test_a_lender_killed_with_sigkill_serves_its_oscore_devices_again_after_restart(store, data_dir, tmp_path):
    gateway = Device("gw-9")
    side = enroll(store, data_dir, gateway, oscore=True, device_context=tmp_path / "gw-9-side").device_context
    with Serving(data_dir) as serving:
        first = asyncio.run(oscore_post(serving.uri, side, batch(gateway.chain(3))))
        assert first.code == codes.CHANGED
        serving.process.kill()  # no clean shutdown: the OSCORE replay window is left "unknown" on disk
        serving.process.wait(10)
    with Serving(data_dir) as serving:  # the device's next request goes through the Echo round trip
        again = asyncio.run(oscore_post(serving.uri, side, batch(gateway.chain(3))))
        assert again.code == codes.CHANGED and ack_of(again.payload)[1] == [4, 5, 6]
        assert serving.stop()[0] == 0
    assert store.counts().envelopes == 6


def _coap_client() -> str | None:
    for name in ("coap-client", "coap-client-notls", "coap-client-gnutls", "coap-client-openssl"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_coap_client() is None, reason="libcoap's coap-client is not installed (apt-get install libcoap3-bin)")
def test_libcoap_coap_client_posts_a_batch_and_gets_the_ack_and_4_00_for_garbage(store, data_dir, device, tmp_path):
    enroll(store, data_dir, device)
    small, large = batch(device.chain(3)), batch(device.chain(40))  # the second one goes block-wise
    (tmp_path / "small.cbor").write_bytes(small)
    (tmp_path / "large.cbor").write_bytes(large)
    (tmp_path / "garbage").write_bytes(b"this is not CBOR")
    client = _coap_client()
    with Serving(data_dir, "--insecure") as serving:
        def post(name: str, *extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([client, "-m", "post", "-t", "60", "-f", str(tmp_path / name), *extra, serving.uri],
                                  capture_output=True, timeout=60)
        post("small.cbor", "-o", str(tmp_path / "ack1"))
        assert ack_of((tmp_path / "ack1").read_bytes()) == {1: [1, 2, 3], 2: [], 3: []}
        post("large.cbor", "-b", "512", "-o", str(tmp_path / "ack2"))
        assert ack_of((tmp_path / "ack2").read_bytes()) == {1: list(range(4, 44)), 2: [], 3: []}
        garbage = post("garbage")
        assert b"4.00" in garbage.stdout + garbage.stderr
        assert serving.stop()[0] == 0
    assert store.counts().envelopes == 43


# --- queries ---------------------------------------------------------------------------------

def test_readings_since_a_time_show_verified_values(filled, data_dir):
    rows = [json.loads(line) for line in
            lender("readings", "--data", data_dir, "--device", "gw-7", "--since", "2026-01-01T00:00:15Z",
                   "--json").stdout.splitlines()]
    assert [r["seq"] for r in rows] == [15, 16, 17, 18, 19, 20]
    assert all(r["unit"] == "Cel" and r["verified"] and isinstance(r["value"], float) for r in rows)
    table = lender("readings", "--data", data_dir, "--device", "gw-7", "--since", "1767225619").stdout
    assert "temp" in table and "2026-01-01T00:00:19.000Z" in table and "00:00:18" not in table


def test_gaps_show_missing_ranges_and_the_signed_record_that_explains_them(filled, data_dir, store, device):
    out = lender("gaps", "--data", data_dir).stdout
    assert "gw-7: missing seqs 8..9 (2 missing): explained by signed gap record seq 11 (overflow)" in out
    assert "gw-7: signed gap record seq 11: overflow, seqs 8..9, 2 reading(s)" in out
    Ingest(store).batch(batch([device.next() for _ in range(3)][2:]), peer="test")  # 21, 22 never arrive
    (entry,) = json.loads(lender("gaps", "--data", data_dir, "--json").stdout)
    assert [(m["first"], m["last"], m["explained"]) for m in entry["missing"]] == [(8, 9, True), (21, 22, False)]
    assert "UNEXPLAINED" in lender("gaps", "--data", data_dir, "--device", "gw-7").stdout


def test_quarantine_lists_refused_envelopes_with_their_reason(store, data_dir, device):
    enroll(store, data_dir, device)
    forged = seal(Device("x").identity, device="gw-7", boot=1, seq=1, prev=bytes(16))
    Ingest(store).batch(batch([device.next(), forged]), peer="10.1.2.3:5683")
    (row,) = [json.loads(line) for line in lender("quarantine", "--data", data_dir, "--json").stdout.splitlines()]
    assert row["reason"] == 2 and row["reason_name"] == "unknown_key" and row["last_peer"] == "10.1.2.3:5683"
    assert base64.b64decode(row["raw_b64"]) == forged.raw


def test_quarantine_counts_refusals_by_kind_and_reason_and_escapes_what_came_from_outside(store, data_dir, device):
    enroll(store, data_dir, device)
    ingest = Ingest(store, refusals=Refusals(samples_per_minute=3))
    for n in range(10):  # junk: three kept, the rest only counted
        ingest.batch(b"\xff" + bytes([n]), peer="203.0.113.9:40000")
    ingest.flush_refusals()
    forged = seal(Device("x").identity, device="gw-7", boot=1, seq=1, prev=bytes(16))
    ingest.batch(batch([forged]), peer="198.51.100.1:5683\n\x1b[32mINFO stored")
    counts = json.loads(lender("quarantine", "--data", data_dir, "--json", "--counts").stdout)
    assert {(c["kind"], c["reason_name"]): (c["refused"], c["kept"], c["counted_only"]) for c in counts} == {
        ("request", "malformed"): (10, 3, 7), ("envelope", "unknown_key"): (1, 1, 0)}
    out = lender("quarantine", "--data", data_dir).stdout
    assert "request   malformed               10        3             7" in out
    assert "\x1b" not in out and "\\x1b[32mINFO stored" in out  # the peer's text, escaped: one line, no colour


def test_text_a_device_signed_reaches_the_terminal_escaped(store, data_dir, device):
    # the borrower runs the device: a signed string value or gap reason is evidence, kept as it is, shown escaped
    enroll(store, data_dir, device)
    text = "ok\n2026-01-05 OPEN ALARM none \x1b[2J"
    envelope = seal(device.identity, device="gw-7", boot=1, seq=1, prev=bytes(16),
                    records=[Record("note", string=text, time=1_767_225_600)])
    gap = seal(device.identity, device="gw-7", boot=1, seq=2, prev=envelope.digest, gap=Gap(text, 5, 6, 2))
    Ingest(store).batch(batch([envelope, gap]), peer="test")
    assert [r.string for r in store.readings("gw-7")] == [text]
    for command in (("readings", "--device", "gw-7", "--since", "0"), ("gaps",)):
        out = lender(*command, "--data", data_dir).stdout
        assert "\x1b" not in out and "\\x1b[2J" in out and "\n2026-01-05" not in out


# --- export and offline verification ----------------------------------------------------------

def test_a_jsonl_export_carries_every_envelopes_exact_bytes_and_verifies_offline(filled, data_dir, tmp_path):
    export = lender("export", "--data", data_dir, "--device", "gw-7", "--format", "jsonl").stdout
    rows = [json.loads(line) for line in export.splitlines()]
    assert [base64.b64decode(r["envelope_b64"]) for r in rows] == [e.raw for e in filled]
    assert all({"device", "seq", "envelope_b64"} <= set(r) for r in rows)
    (tmp_path / "export.jsonl").write_text(export)
    keys = lender("devices", "--data", data_dir, "--json").stdout
    (tmp_path / "keys.json").write_text(keys)
    result = lender("verify", tmp_path / "export.jsonl", "--keys", tmp_path / "keys.json")
    assert "verify: OK: 18 row(s), 0 failure(s)" in result.stdout
    assert "explained by signed gap record seq 11" in result.stdout
    assert lender("verify", tmp_path / "export.jsonl", "--data", data_dir).returncode == 0


def test_verify_detects_a_tampered_export_line(filled, data_dir, tmp_path):
    lender("devices", "--data", data_dir, "--json").stdout
    (tmp_path / "keys.json").write_text(lender("devices", "--data", data_dir, "--json").stdout)
    lines = lender("export", "--data", data_dir, "--device", "gw-7").stdout.splitlines()
    row = json.loads(lines[4])
    raw = bytearray(base64.b64decode(row["envelope_b64"]))
    raw[raw.index(b"Cel") + 5] ^= 0x01  # change one reading's value inside the signed payload
    row["envelope_b64"] = base64.b64encode(bytes(raw)).decode()
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines[:4] + [json.dumps(row)] + lines[5:]) + "\n")
    result = lender("verify", tampered, "--keys", tmp_path / "keys.json", check=False)
    assert result.returncode == 1
    assert "FAIL row 5 (line 5): bad_signature" in result.stdout and "verify: FAILED" in result.stdout
    relabelled = json.loads(lines[2])
    relabelled["seq"] = 99  # the row's label no longer matches its signed envelope
    (tmp_path / "relabelled.jsonl").write_text("\n".join(lines[:2] + [json.dumps(relabelled)] + lines[3:]) + "\n")
    result = lender("verify", tmp_path / "relabelled.jsonl", "--keys", tmp_path / "keys.json", check=False)
    assert result.returncode == 1 and "its signed envelope says 'gw-7' seq 3" in result.stdout


def test_verify_fails_on_a_deleted_row_unless_gaps_are_allowed(filled, data_dir, tmp_path):
    (tmp_path / "keys.json").write_text(lender("devices", "--data", data_dir, "--json").stdout)
    lines = lender("export", "--data", data_dir, "--device", "gw-7").stdout.splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:12] + lines[13:]) + "\n")
    result = lender("verify", tmp_path / "cut.jsonl", "--keys", tmp_path / "keys.json", check=False)
    assert result.returncode == 1 and "gap: seqs 15..15 missing" in result.stdout
    allowed = lender("verify", tmp_path / "cut.jsonl", "--keys", tmp_path / "keys.json", "--allow-gaps", "--json")
    report = json.loads(allowed.stdout)
    assert report["ok"] and [p["kind"] for p in report["devices"][0]["problems"]] == ["gap", "gap"]
    (tmp_path / "twice.jsonl").write_text("\n".join(lines + lines[3:4]) + "\n")
    replayed = lender("verify", tmp_path / "twice.jsonl", "--keys", tmp_path / "keys.json", check=False)
    assert replayed.returncode == 1 and "replay" in replayed.stdout


def test_a_csv_export_verifies_too_and_verify_refuses_unreadable_input(filled, data_dir, tmp_path):
    out = lender("export", "--data", data_dir, "--device", "gw-7", "--format", "csv", "--output",
                 tmp_path / "export.csv")
    assert "exported 18 envelope(s)" in out.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "export.csv").read_text())))
    assert len(rows) == 18 and rows[0]["device"] == "gw-7" and rows[0]["seq"] == "1"
    assert lender("verify", tmp_path / "export.csv", "--data", data_dir).returncode == 0
    (tmp_path / "keys.json").write_text("not json")
    broken = lender("verify", tmp_path / "export.csv", "--keys", tmp_path / "keys.json", check=False)
    assert broken.returncode == 2 and "cannot be read as JSON" in broken.stderr
    absent = lender("verify", tmp_path / "nothing.jsonl", "--data", data_dir, check=False)
    assert absent.returncode == 2 and "cannot open" in absent.stderr
    no_keys = lender("verify", tmp_path / "export.csv", check=False)  # default registry: none on this machine
    assert no_keys.returncode == 2 and "no lender store" in no_keys.stderr
