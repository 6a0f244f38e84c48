"""Evidence export and offline verification: a device's stored envelopes as rows, and re-verifying such rows.

An export has one row per stored envelope with its exact bytes (base64), so
anyone holding the devices' public keys can check every signature and every
chain link without the lender's database (`pledgewatch lender export` /
`pledgewatch lender verify`, docs/lender-guide.md).
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
from telemetry.chain import check_chain
from telemetry.envelope import Envelope, verify
from telemetry.exc import TelemetryError
from telemetry.identity import DeviceKey

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
    """Device keys by kid from a keys file: the JSON array `lender devices --json` prints."""
    try:
        entries = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportFormatError(f"keys file {path} cannot be read as JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ExportFormatError(f"keys file {path} must be a JSON array (the output of `lender devices --json`)")
    keys = {}
    for number, entry in enumerate(entries, 1):
        try:
            key = DeviceKey(entry["device"], bytes.fromhex(entry["public_key_hex"]))
        except (TypeError, KeyError, ValueError, TelemetryError) as exc:
            raise ExportFormatError(
                f"keys file {path}, entry {number}: needs device and a 64-hex-digit public_key_hex ({exc})") from exc
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
    """Re-verify export rows: each envelope's signature, the row against its envelope, each device's chain."""
    failures: list[str] = []
    by_device: dict[str, list[Envelope]] = {}
    rows_seen = 0
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
        verdict = verify(raw, keys)
        if not verdict.ok:
            failures.append(f"{where}: {verdict.reason.name.lower()}: {verdict.detail}")
            continue
        envelope = verdict.envelope
        if str(row.get("device")) != envelope.device or str(row.get("seq")) != str(envelope.seq):
            failures.append(f"{where}: the row says device {row.get('device')!r} seq {row.get('seq')!r}, "
                            f"its signed envelope says {envelope.device!r} seq {envelope.seq}")
            continue
        for field, actual in (("digest_hex", envelope.digest.hex()), ("prev_hex", envelope.prev.hex()),
                              ("boot", str(envelope.boot))):
            if field in row and str(row[field]) != actual:
                failures.append(f"{where}: {field} {row[field]!r} differs from the signed envelope's {actual}")
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
