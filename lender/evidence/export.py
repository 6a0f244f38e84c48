"""Evidence export and offline verification: a device's stored envelopes as rows, its evidence bundle, and checking both.

An export has one row per stored envelope with its exact bytes (base64), so
anyone holding the devices' public keys can check every signature and every
chain link without the lender's database (`pledgewatch lender export` /
`pledgewatch lender verify`, docs/lender-guide.md). A bundle
(`--format bundle`) is the device's whole record in the lender's log with the
proofs that make it checkable against the lender's public key alone
(telemetry.bundle, docs/evidence.md).
"""
from __future__ import annotations

import base64
import binascii
import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from lender.evidence.registry import iso_time
from lender.evidence.store import SQLiteStore
from lender.exc import ExportFormatError
from telemetry.bundle import FORMAT as BUNDLE_FORMAT
from telemetry.bundle import BundleEntry, BundleReport, build_bundle, verify_bundle
from telemetry.chain import check_chain
from telemetry.envelope import Envelope, verify
from telemetry.exc import BundleFormatError, TelemetryError
from telemetry.identity import DeviceKey, algorithm_named
from telemetry.merkle import leaf_hash
from telemetry.rotation import RotationError, read_handover

EXPORT_FIELDS = ("device", "seq", "boot", "kid", "received_at", "alarm", "digest_hex", "prev_hex", "envelope_b64")


def export_rows(store: SQLiteStore, device: str) -> Iterator[dict]:
    """One dict per stored envelope of `device`, by seq: the export's rows."""
    for e in store.envelopes(device):
        yield {
            "device": e.device,
            "seq": e.seq,
            "boot": e.boot,
            "kid": e.kid.hex(),
            "received_at": iso_time(e.received_at),
            "alarm": e.alarm,
            "digest_hex": e.digest.hex(),
            "prev_hex": e.prev.hex(),
            "envelope_b64": base64.b64encode(e.raw).decode("ascii"),
        }


def load_keys(path: Path) -> dict[bytes, DeviceKey]:
    """Device keys by kid from a keys file: the JSON array `lender devices --json` prints (each device's enrolled
    key, where `verify_export` starts following its chain)."""
    try:
        entries = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportFormatError(f"keys file {path} cannot be read as JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ExportFormatError(f"keys file {path} must be a JSON array (the output of `lender devices --json`)")
    keys = {}
    for number, entry in enumerate(entries, 1):
        try:
            # after a rotation the key in force is not where the chain starts: the enrolled key is (telemetry.rotation)
            enrolled = entry.get("enrolled_public_key_hex")
            public = bytes.fromhex(enrolled if isinstance(enrolled, str) else entry["public_key_hex"])
            algorithm = entry.get("algorithm") if enrolled is None or enrolled == entry.get("public_key_hex") else None
            key = DeviceKey(entry["device"], public,   # files from before ES256 have no algorithm: the key names it
                            None if algorithm is None else algorithm_named(algorithm))
        except (AttributeError, TypeError, KeyError, ValueError, TelemetryError) as exc:
            raise ExportFormatError(
                f"keys file {path}, entry {number}: needs device and a public_key_hex (64 hex digits for Ed25519, "
                f"130 for P-256) agreeing with its algorithm ({exc})") from exc
        keys[key.kid] = key
    return keys


def read_export(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, row) for each row of a jsonl or csv export; row None for a line that is not a JSON object."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise ExportFormatError(f"cannot open {path}: {exc.strerror}") from exc
    with handle:
        try:
            first = handle.read(1)
            handle.seek(0)
            if first == "{" or first == "":
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = None
                    yield number, row if isinstance(row, dict) else None
            else:
                reader = csv.DictReader(handle)
                for row in reader:
                    yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise ExportFormatError(f"{path} is not UTF-8 text: {exc}") from exc


def verify_export(rows: Iterable[tuple[int, dict | None]], keys: dict[bytes, DeviceKey], *, allow_gaps: bool) -> dict:
    """Re-verify export rows: each envelope's signature, the row against its envelope, each device's chain.

    A key handover (telemetry.rotation) that verified puts the new key it
    names in force for the device's later seqs and retires the old one: the
    rows are verified in seq order per device, so the chain is followed across
    a rotation from the keys given (the enrolled ones) alone.
    """
    failures: list[str] = []
    by_device: dict[str, list[Envelope]] = {}
    rows_seen = 0
    signed: list[tuple[str, int, int, str, dict, bytes]] = []
    for number, row in rows:
        rows_seen += 1
        where = f"row {rows_seen} (line {number})"
        if row is None:
            failures.append(f"{where}: not a JSON object")
            continue
        encoded = row.get("envelope_b64")
        if not isinstance(encoded, str):
            failures.append(f"{where}: no envelope_b64")
            continue
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            failures.append(f"{where}: envelope_b64 is not base64")
            continue
        decoded = verify(raw, {}).envelope   # None when it does not decode: the verdict below says why
        signed.append((decoded.device if decoded else "", decoded.seq if decoded else 0, rows_seen, where, row, raw))
    known = dict(keys)
    handed: dict[bytes, tuple[str, int, str]] = {}   # kid -> (device, handover seq, "retired" | "from")
    for device, seq, _, where, row, raw in sorted(signed, key=lambda item: item[:3]):
        verdict = verify(raw, known)
        if not verdict.ok:
            failures.append(f"{where}: {verdict.reason.name.lower()}: {verdict.detail}")
            continue
        envelope = verdict.envelope
        change = handed.get(envelope.kid)
        if change is not None and change[0] == envelope.device and (
                (change[2] == "retired" and envelope.seq > change[1]) or (change[2] == "from" and envelope.seq <= change[1])):
            failures.append(f"{where}: seq {envelope.seq} is signed by key {envelope.kid.hex()}, "
                            f"{'retired' if change[2] == 'retired' else 'not in force'} at the key handover at "
                            f"seq {change[1]}")
            continue
        if str(row.get("device")) != envelope.device or str(row.get("seq")) != str(envelope.seq):
            failures.append(f"{where}: the row says device {row.get('device')!r} seq {row.get('seq')!r}, "
                            f"its signed envelope says {envelope.device!r} seq {envelope.seq}")
            continue
        for field, actual in (("digest_hex", envelope.digest.hex()), ("prev_hex", envelope.prev.hex()),
                              ("boot", str(envelope.boot))):
            if field in row and str(row[field]) != actual:
                failures.append(f"{where}: {field} {row[field]!r} differs from the signed envelope's {actual}")
        try:
            handover = read_handover(envelope)
        except RotationError as exc:
            failures.append(f"{where}: {exc}")
            handover = None
        if handover is not None:
            if handover.new_key.kid in handed or envelope.kid in handed and handed[envelope.kid][2] == "retired":
                failures.append(f"{where}: a second key handover from key {envelope.kid.hex()} (seq {envelope.seq}): "
                                "the old key is in two hands")
            else:
                handed[envelope.kid] = (envelope.device, envelope.seq, "retired")
                handed[handover.new_key.kid] = (envelope.device, envelope.seq, "from")
                known[handover.new_key.kid] = handover.new_key
        by_device.setdefault(envelope.device, []).append(envelope)
    devices = []
    for device, envelopes in sorted(by_device.items()):
        report = check_chain(envelopes)
        problems = []
        for p in report.problems:
            tolerated = p.kind in ("gap", "bad-start") and (p.explained or allow_gaps)
            problems.append({"kind": p.kind, "first": p.first, "last": p.last, "detail": p.detail,
                             "explained_by": p.explained_by, "fails": not tolerated})
            if not tolerated:
                failures.append(f"{device}: {p.kind}: {p.detail}")
        devices.append({"device": device, "envelopes": report.count, "first": report.first, "last": report.last,
                        "intact": report.intact, "problems": problems})
    if rows_seen == 0:
        failures.append("the export holds no rows")
    return {"ok": not failures, "rows": rows_seen, "devices": devices, "failures": failures}


# --- evidence bundles (telemetry.bundle, docs/evidence.md) -----------------------------------------

def export_bundle(store: SQLiteStore, device: str) -> tuple[dict, list[str]]:
    """The device's self-contained evidence bundle against the latest checkpoint, and warnings.

    A warning names an entry whose evidence the store no longer holds as it
    was logged (edited or deleted afterwards): the bundle still carries what
    the store holds and the leaf the log recorded, so `lender verify` shows
    the very same problem to anyone.
    """
    latest = store.checkpoint()  # the log read afresh; the heads in memory are this checkpoint's
    log = store.log
    proof = log.head_proof(device)
    if proof is None:
        raise ExportFormatError(f"the lender's log holds nothing of device {device!r}")
    size = latest.checkpoint.tree_size
    entries = [BundleEntry(index, leaf, entry) for index, leaf, entry in log.device_entries(device, size, proof.head.count)]
    warnings = []
    for item in entries:
        if item.entry is None:
            warnings.append(f"entry {item.index} of {device}: the store no longer holds it (deleted after logging)")
        elif leaf_hash(item.entry) != item.leaf:
            warnings.append(f"entry {item.index} of {device}: the store holds other bytes than the log recorded "
                            "(edited after logging)")
    indices = [item.index for item in entries]
    carried = {latest.checkpoint.tree_size: latest}
    for index in (indices[0], indices[-1]):  # when the device's first and last entries were first signed
        covering = log.first_checkpoint_covering(index)
        if covering is not None:
            carried.setdefault(covering.checkpoint.tree_size, covering)
    checkpoints = [carried[s] for s in sorted(carried)]
    consistency = [log.consistency_path(old.checkpoint.tree_size, new.checkpoint.tree_size)
                   for old, new in zip(checkpoints, checkpoints[1:])]
    document = build_bundle(device, log.identity.public_key, checkpoints, consistency, entries,
                            log.multi_proof(indices, size), proof.head, proof.slot, proof.path)
    return document, warnings


def parse_lender_key(text: str) -> bytes:
    """The lender's public key from 64 hex digits, or from a file holding them (as `lender key` prints)."""
    candidate = text.strip()
    if len(candidate) != 64:
        try:
            candidate = Path(text).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportFormatError(f"--lender-key {text!r} is neither 64 hex digits nor a readable file: {exc}") from exc
    try:
        key = bytes.fromhex(candidate)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ExportFormatError("the lender's key is 64 hex digits (an Ed25519 public key, as `lender key` prints)")
    return key


def read_bundle(path: Path) -> object:
    """The JSON document in `path` (a bundle, or something the caller will refuse as one)."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportFormatError(f"{path} cannot be read as an evidence bundle (JSON): {exc}") from exc


def verify_bundle_file(path: Path, lender_key: bytes, *, allow_gaps: bool) -> BundleReport:
    """Verify the bundle in `path` against the pinned lender key (telemetry.bundle.verify_bundle)."""
    try:
        return verify_bundle(read_bundle(path), lender_key, allow_gaps=allow_gaps)
    except BundleFormatError as exc:
        raise ExportFormatError(f"{path}: {exc}") from exc


def is_bundle(path: Path) -> bool:
    """Whether `path` starts like a bundle (a JSON object naming the bundle format), read cheaply."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(256)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("{") and BUNDLE_FORMAT in head
