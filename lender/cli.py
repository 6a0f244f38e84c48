"""Lender: receive, verify and store telemetry; registry, readings, gaps, evidence export and offline verification.

`pledgewatch lender SUBCOMMAND`, for the lender's collateral-risk staff:

    serve      run the CoAP server in the foreground (until SIGINT / SIGTERM); --workers N over PostgreSQL
    migrate    apply the store's schema migrations; --from DIR --to URL moves a SQLite lender into PostgreSQL
    web        run the web console for the lender's staff (lender.console)
    users      the console's staff accounts: add, remove, list, login-link
    register   register a device's public key (and create its OSCORE context pair)
    revoke     refuse a device's telemetry from now on
    devices    list registered devices (--json for tools)
    readings   a device's verified readings since a time
    gaps       missing seqs per device, and the signed gap records that explain them
    quarantine what was refused, and why
    export     a device's evidence: one row per envelope with its exact bytes, or a self-contained bundle
    verify     re-verify an export with the devices' keys, or a bundle with only the lender's key
    key        the lender's public key: what a third party pins
    checkpoint the latest signed checkpoint of the lender's log
    receipt    a COSE receipt that the lender logged one envelope (for a node's owner, or anyone it concerns)
    prove-consistency  prove the log only grew since an older checkpoint, auditing it against the evidence
    alarms     alarms raised and cleared, per asset, and the lender's own (risks)
    status     per asset: last seen, last verified reading, open alarms, gaps, risks
    review     record a staff member's review of a signed gap record

Exit codes: 0 success, 1 a check failed or the operation was refused, 2 bad usage
or unreadable input.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import functools
import json
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from durable.exc import DurableError
from durable.files import atomic_write
from durable.sdnotify import notify
from lender.enrollment import registration
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence import registry
from lender.evidence.alarms import (
    AlarmRecord,
    AssetStatus,
    alarm_events,
    asset_status,
    open_alarms,
)
from lender.evidence.export import (
    EXPORT_FIELDS,
    export_bundle,
    export_rows,
    is_bundle,
    load_keys,
    parse_lender_key,
    read_export,
    verify_bundle_file,
    verify_export,
)
from lender.evidence.commands import CommandDesk, IssuedCommand, answers_at_next_wake
from lender.evidence.ingest import DEFAULT_MAX_BODY
from lender.evidence.log import lender_identity
from lender.evidence.registry import iso_time, parse_time
from lender.evidence.risks import MISSED_HEARTBEATS, Judge, device_risks
from lender.evidence.store import EvidenceStore, Reading, Review, SQLiteStore, explain_gaps
from lender.evidence.stores import is_store_url, open_store
from lender.evidence.tokens import token_key
from lender.exc import (
    ExportFormatError,
    InvalidTechnicianError,
    LenderError,
    ServeError,
    StoreError,
)
from lender.untrusted import escape_logs, shown
from telemetry.alarms import GATEWAY
from telemetry.command import Configure, Permit
from telemetry.envelope import Reason
from telemetry.exc import WireFormatError
from telemetry.logentry import envelope_entry
from telemetry.merkle import verify_consistency
from telemetry.receipt import SignedCheckpoint

DEFAULT_DATA = os.environ.get("PLEDGEWATCH_LENDER_DATA", "/var/lib/pledgewatch/lender")
# A postgresql:// URL: the evidence in PostgreSQL instead of DATA/lender.sqlite3 (a password belongs in ~/.pgpass
# or PGPASSWORD, not in the URL, which shows in the process list).
DEFAULT_STORE = os.environ.get("PLEDGEWATCH_LENDER_STORE") or None


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the lender's sub-commands to `parser` (called by pledgewatch.cli)."""
    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="lender_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, run, help_text: str, *, data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if data:
            store_options(p)
        p.set_defaults(run=_guarded(run))
        return p

    p = command("serve", _serve, "run the lender's CoAP server in the foreground until SIGINT or SIGTERM")
    p.add_argument("--bind", default="127.0.0.1:5683", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:5683)")
    p.add_argument("--insecure", action="store_true",
                   help="also accept plain CoAP without OSCORE (testing only; warns at start)")
    p.add_argument("--max-body", type=_positive_int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                   help=f"largest batch accepted, block-wise included (default {DEFAULT_MAX_BODY})")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the web console here, in the same process (see `lender web`)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes on the one port (SO_REUSEPORT; needs --store postgresql://...)")
    p.add_argument("--require-hardware-key", action="store_true", default=None,
                   help="enroll only device keys a TPM attests (the same as require_hardware_key = true in "
                        "DATA/enroll/policy.toml, which applies without the option)")
    _console_options(p)

    p = command("migrate", _migrate, "bring the store's schema up to this program's version; with --from DIR "
                                     "--to URL, copy a SQLite lender into PostgreSQL and verify the copy")
    p.add_argument("--from", dest="source", type=Path, metavar="DIR",
                   help="the SQLite lender's data directory to copy (stop the lender serving it first)")
    p.add_argument("--to", dest="target", metavar="URL", help="the PostgreSQL store to copy it into")
    p.add_argument("--json", action="store_true", help="the copy's verification as one JSON object")

    p = command("register", _register, "register a device's Ed25519 public key and create its OSCORE context pair")
    p.add_argument("--device", required=True, help="device id (1..64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--public-key", required=True, metavar="HEX",
                   help="the device's public key: Ed25519, 64 hex digits; or P-256 (a TPM key), 130 hex digits 04||X||Y")
    p.add_argument("--asset", help="the pledged asset this device watches (free text, e.g. a contract reference)")
    p.add_argument("--oscore-out", type=Path, metavar="DIR",
                   help="where to write the device's side of the OSCORE context (default DATA/device-contexts/DEVICE)")
    p.add_argument("--no-oscore", action="store_true", help="register without an OSCORE context (insecure lenders)")

    p = command("revoke", _revoke, "refuse a device's telemetry from now on (its stored evidence stays)")
    p.add_argument("--device", required=True)

    p = command("devices", _devices, "list the registered devices")
    p.add_argument("--json", action="store_true",
                   help="a JSON array (device, kid, public_key_hex, status, ..., algorithm, key_storage)")

    p = command("readings", _readings, "a device's verified readings")
    p.add_argument("--device", required=True)
    p.add_argument("--since", type=_time_arg, metavar="T",
                   help="ISO 8601 time (UTC if no zone), Unix seconds, or an age such as 30m, 12h, 7d")
    p.add_argument("--until", type=_time_arg, metavar="T", help="same forms as --since (exclusive)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command("gaps", _gaps, "missing seqs per device, and which signed gap records explain them")
    p.add_argument("--device", help="only this device")
    p.add_argument("--json", action="store_true")

    p = command("quarantine", _quarantine, "refused envelopes and requests, newest first, and the counts by kind and "
                                           "reason")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true", help="JSON lines, with the raw bytes in base64")
    p.add_argument("--counts", action="store_true", help="only the counts by kind and reason (with --json: one array)")

    p = command("export", _export, "a device's evidence: one row per stored envelope with its exact bytes, or "
                                   "(--format bundle) its whole record in the lender's log with the proofs")
    p.add_argument("--device", required=True)
    p.add_argument("--format", choices=("jsonl", "csv", "bundle"), default="jsonl",
                   help="jsonl or csv rows, or a self-contained evidence bundle (docs/evidence.md)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write here instead of standard output")

    p = command("key", _key, "print the lender's public key (hex): what a third party pins to verify its evidence")

    p = command("checkpoint", _checkpoint, "print the latest signed checkpoint of the lender's log")
    p.add_argument("--json", action="store_true",
                   help="one JSON object: tree_size, root_hex, time, time_ms, devices, heads_root_hex, cose_b64")

    p = command("receipt", _receipt, "a COSE receipt (RFC 9942) that the lender logged an envelope, with its entry")
    p.add_argument("--device", required=True)
    p.add_argument("--seq", required=True, type=int)

    p = command("prove-consistency", _prove_consistency,
                "prove the lender's log only grew since an older checkpoint, after auditing it against the evidence")
    p.add_argument("old", type=Path, metavar="OLD",
                   help="a checkpoint kept earlier: `lender checkpoint --json` output, its COSE bytes, or a bundle")
    p.add_argument("--json", action="store_true", help="the proof and the findings as one JSON object")

    alarms = command("alarms", _alarms, "alarms raised and cleared, per asset (lender.evidence.alarms)")
    status = command("status", _status,
                     "per asset: last seen, last verified reading, open alarms, gaps (lender.evidence.alarms)")
    _alarm_arguments(alarms, status)

    p = command("review", _review, "record that a staff member reviewed a signed gap record (kept as an audit record)")
    p.add_argument("--device", required=True)
    p.add_argument("--seq", required=True, type=int, help="the seq of the gap record reviewed")
    p.add_argument("--by", required=True, metavar="NAME", help="who reviewed it")
    p.add_argument("--note", required=True, help="what they found (for the record)")

    _command_commands(command)

    p = command("verify", _verify, "re-verify an export offline (signatures, chain, gaps), or an evidence bundle "
                                   "against the lender's key alone", data=False)
    p.add_argument("file", type=Path, metavar="FILE", help="an export (jsonl or csv) or an evidence bundle")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--lender-key", metavar="HEX_OR_FILE",
                      help="verify FILE as an evidence bundle against this lender public key (`lender key` prints it)")
    keys.add_argument("--keys", type=Path, metavar="FILE", help="the devices' keys: `lender devices --json` output")
    store_options(keys, data_default=False, data_help="take the keys from this lender's registry (the default)")
    p.add_argument("--allow-gaps", action="store_true",
                   help="do not fail on gaps that no signed gap record explains (they are still reported)")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")

    _technician_commands(sub, _guarded, DEFAULT_DATA)
    _console_commands(sub, _guarded, DEFAULT_DATA)


def store_options(p, default_data: str = DEFAULT_DATA, *, data_default: bool = True,
                  data_help: str = "the lender's data directory") -> None:
    """`--data DIR` and `--store URL`, the same on every lender sub-command that reads or writes the lender's state.

    `p` is a parser or an argument group. Without --store the state is in DIR
    (SQLite); with it, the evidence, the registry, the log and the OSCORE state
    are in PostgreSQL and DIR keeps the lender's keys, its enrollment floor and
    the console's records (docs/decisions.md, "What stays in DATA").
    """
    p.add_argument("--data", type=Path, default=Path(default_data) if data_default else None, metavar="DIR",
                   help=f"{data_help} (default {default_data}, or $PLEDGEWATCH_LENDER_DATA)")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="URL",
                   help="keep the evidence in PostgreSQL at this postgresql:// URL instead of DATA's SQLite "
                        "file (or $PLEDGEWATCH_LENDER_STORE); DATA still holds the lender's keys")


def _guarded(run):
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (LenderError, DurableError, ValueError) as exc:
            print(f"pledgewatch lender {args.lender_command}: error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, (ExportFormatError, StoreError)) else 1
        except BrokenPipeError:  # `... | head`
            sys.stderr.close()
            return 0
    return guarded


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _open(args: argparse.Namespace, *, create: bool = False) -> EvidenceStore:
    return open_store(args.data, getattr(args, "store", None), create=create)


# --- serve -------------------------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    from lender.server import (  # aiocoap only where it is needed
        LenderServer,
        parse_bind,
    )

    bind = parse_bind(args.bind)
    escape_logs()  # a line written from an attacker's bytes stays one line that says what it is
    if args.workers > 1:
        return _serve_workers(args, bind)

    async def serve() -> None:
        server = LenderServer(args.data, bind=bind, insecure=args.insecure, max_body=args.max_body,
                              store_url=args.store, require_hardware_key=args.require_hardware_key)
        await server.start()
        console = await _start_console(args, args.http) if args.http else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            mode = "plain CoAP and OSCORE (insecure)" if args.insecure else "OSCORE only"
            print(f"lender: serving coap://{_hostport(*server.address)}/t, {mode}, "
                  f"{len(server.credentials)} OSCORE context(s), data in {_where(args)}", flush=True)
            _notify("READY=1")
            await stop.wait()
            _notify("STOPPING=1")
        finally:
            if console is not None:
                await console.stop()
            await server.stop()
        print("lender: stopped", flush=True)

    asyncio.run(serve())
    return 0


def _serve_workers(args: argparse.Namespace, bind: tuple[str, int]) -> int:
    """`serve --workers N`: N processes on one port over the PostgreSQL store (lender.workers), until SIGTERM."""
    import logging
    import threading

    from lender.workers import WorkerConfig, WorkerGroup

    if not is_store_url(args.store):
        raise ServeError("--workers needs --store postgresql://...: a SQLite store has one writer, one lender")
    if args.http:
        raise ServeError("--http serves the console from one process; with --workers run `lender web` beside them")
    config = WorkerConfig(args.data, args.store, bind, args.insecure, args.max_body,
                          logging.getLogger().getEffectiveLevel(), args.require_hardware_key)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    group = WorkerGroup(config, args.workers).start()
    try:
        mode = "plain CoAP and OSCORE (insecure)" if args.insecure else "OSCORE only"
        print(f"lender: serving coap://{_hostport(*group.address)}/t with {args.workers} workers, {mode}, "
              f"{group.contexts} OSCORE context(s), data in {_where(args)}", flush=True)
        _notify("READY=1")
        stop.wait()
        _notify("STOPPING=1")
    finally:
        group.stop()
    print(f"lender: stopped ({group.restarts} worker restart(s))", flush=True)
    return 0


def _where(args: argparse.Namespace) -> str:
    if getattr(args, "store", None):
        from lender.evidence.postgres import redacted

        return f"{redacted(args.store)} (keys in {args.data})"
    return str(args.data)


def _notify(state: str) -> None:
    try:
        notify(state)
    except OSError as exc:
        print(f"lender: could not notify systemd: {exc}", file=sys.stderr)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- migrate -----------------------------------------------------------------------------------

def _migrate(args: argparse.Namespace) -> int:
    if (args.source is None) != (args.target is None):
        raise ServeError("lender migrate: give both --from DIR and --to postgresql://... (or neither)")
    if args.source is None:
        if not args.store:  # SQLite migrates in place whenever it is opened
            with _open(args, create=True) as store:
                print(f"lender store {store.path}: schema up to date")
            return 0
        from lender.evidence.postgres import SCHEMA_VERSION, PostgresStore

        with PostgresStore(args.store, args.data, quarantine_limit=1) as store:
            applied = store.migrate()
            print(f"lender store {store.path}: schema version {SCHEMA_VERSION}"
                  + (f" (applied {', '.join(map(str, applied))})" if applied else ", nothing to apply"))
        return 0
    return _migrate_copy(args)


def _migrate_copy(args: argparse.Namespace) -> int:
    """Copy the SQLite lender in --from into the PostgreSQL store at --to, then verify; safe to run again."""
    from lender.evidence.postgres import PostgresStore, redacted
    from lender.evidence.transfer import copy_store, verify_copy
    from lender.server import SERVE_LOCK, lock_data_dir

    if not is_store_url(args.target):
        raise ServeError(f"--to takes a postgresql:// URL, got {str(args.target)[:40]!r}")
    lock = lock_data_dir(args.source)  # no lender may serve the directory while it moves
    try:
        with PostgresStore.open(args.target, args.source) as target:
            copied = copy_store(args.source, target)
            devices = [d.device for d in target.devices() if d.oscore_context]
            moved = _adopt_contexts(args.target, args.source, devices)
            report = verify_copy(args.source, target)
    finally:
        os.close(lock)
    result = {"ok": report.ok, "from": str(args.source), "to": redacted(args.target),
              "added": copied.added, "oscore_contexts_moved": moved,
              "counts": {name: {"source": a, "target": b} for name, (a, b) in report.counts.items()},
              "log": {"tree_size": report.tree_size, "root_hex": report.root.hex(),
                      "entries_audited": report.entries_audited},
              "problems": report.problems}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, (mine, theirs) in report.counts.items():
            print(f"{name:<20} source {mine:>9}  target {theirs:>9}  (added now {copied.added.get(name, 0)})")
        print(f"log: root {report.root.hex() or '-'} at {report.tree_size} entries, the same in the target; "
              f"{report.entries_audited} entries audited against the copied evidence")
        print(f"OSCORE contexts moved to the database now: {moved}")
        for problem in report.problems:
            print(f"FAIL {problem}")
        print(f"migrate: {'OK' if report.ok else 'FAILED'}: {args.source} -> {redacted(args.target)} "
              f"(serve with --data {args.source} --store URL; {SERVE_LOCK} stays with the directory)")
    return 0 if report.ok else 1


def _adopt_contexts(url: str, data: Path, devices: list[str]) -> int:
    """Move the lender's side of these devices' OSCORE contexts from DATA/oscore into the shared store."""
    from lender.enrollment.shared import adopt_directory
    from lender.evidence.postgres import OscoreStateTable

    table = OscoreStateTable(url)
    try:
        return sum(adopt_directory(table, device, Path(data) / "oscore" / device) for device in devices
                   if (Path(data) / "oscore" / device).is_dir())
    finally:
        table.close()


# --- registry ----------------------------------------------------------------------------------

def _register(args: argparse.Namespace) -> int:
    public_key = registry.parse_public_key(args.public_key)
    with _open(args, create=True) as store:
        done = registration.register(
            store, args.data, args.device, public_key, asset=args.asset,
            with_oscore=not args.no_oscore, device_context=args.oscore_out,
        )
    device = done.device
    if done.device_context is not None and args.store:  # every worker, on every host, serves it from the database
        _adopt_contexts(args.store, args.data, [device.device])
    print(f"registered {device.device}: kid {device.kid.hex()}, asset {device.asset or '-'}")
    if done.device_context is not None:
        print(f"OSCORE: lender side {Path(args.data) / device.oscore_context}, "
              f"device sender id {device.oscore_id.hex()}")
        print(f"device-side OSCORE context written to {done.device_context} "
              "(mode 0700; copy it to the gateway's security context directory, then delete it here)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _open(args) as store:
        device = registry.revoke(store, args.device)
    print(f"revoked {device.device} at {iso_time(device.revoked_at)}; its telemetry is refused from now on")
    return 0


def _devices(args: argparse.Namespace) -> int:
    from lender.enrollment.desk import with_recorded_key_storage
    with _open(args) as store:
        devices = [with_recorded_key_storage(args.data, d) for d in store.devices()]
    if args.json:
        print(json.dumps([d.to_json() for d in devices], indent=1))
        return 0
    rows = [("DEVICE", "KID", "KEY", "STATUS", "ASSET", "REGISTERED")] + [
        (d.device, d.kid.hex(), f"{d.algorithm}/{d.key_storage.value}", d.status.value, d.asset or "-",
         iso_time(d.registered_at)) for d in devices]
    _print_table(rows)
    return 0


def _print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


# --- queries -----------------------------------------------------------------------------------

def _reading_value(reading) -> object:
    for value in (reading.value, reading.string, reading.boolean, reading.sum):
        if value is not None:
            return value
    return None if reading.data is None else reading.data.hex()


def _readings(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = list(store.readings(args.device, args.since, args.until))
        known = store.device(args.device) is not None
    if not known and not rows:
        print(f"pledgewatch lender readings: no device {args.device!r} is registered", file=sys.stderr)
        return 1
    if args.json:
        for r in rows:
            print(json.dumps({
                "device": r.device, "seq": r.seq, "time": iso_time(r.at), "name": r.name,
                "value": r.value, "string": r.string, "boolean": r.boolean,
                "data_hex": None if r.data is None else r.data.hex(), "sum": r.sum, "unit": r.unit,
                "verified": True,
            }))
        return 0
    table = [("TIME", "SEQ", "NAME", "VALUE", "UNIT")]
    table += [(iso_time(r.at), r.seq, r.name, shown(_reading_value(r), 200), r.unit or "") for r in rows]  # signed text
    _print_table(table)
    print(f"{len(rows)} reading(s) of {args.device}, every one from a verified envelope", file=sys.stderr)
    return 0


def _gaps(args: argparse.Namespace) -> int:
    with _open(args) as store:
        missing = store.missing_ranges(args.device)
        records = store.gap_records(args.device)
        reviews = store.reviews(args.device)
        devices = [args.device] if args.device else sorted(
            {d.device for d in store.devices()} | set(store.envelope_devices()))
    findings = explain_gaps(missing, records)
    report = []
    for device in devices:
        mine = [f for f in findings if f.missing.device == device]
        report.append({
            "device": device,
            "missing": [{
                "first": f.missing.first, "last": f.missing.last,
                "count": None if f.missing.first is None else f.missing.last - f.missing.first + 1,
                "explained": f.explained,
                "explained_by": None if f.explained_by is None else f.explained_by.seq,
                "partly_explained_by": [g.seq for g in f.partly_explained_by],
            } for f in mine],
            "gap_records": [{"seq": g.seq, "reason": g.reason, "first": g.first, "last": g.last, "count": g.count,
                             "reviews": [{"by": r.reviewer, "note": r.note, "at": iso_time(r.at)} for r in reviews
                                         if (r.device, r.seq) == (device, g.seq)]}
                            for g in records if g.device == device],
        })
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    reasons = {(g.device, g.seq): g.reason for g in records}
    for entry in report:
        device = entry["device"]
        if not entry["missing"] and not entry["gap_records"]:
            print(f"{device}: no gaps")
            continue
        for m in entry["missing"]:
            span = (f"seqs ..{m['last']} (the chain's start never arrived)" if m["first"] is None
                    else f"seqs {m['first']}..{m['last']} ({m['count']} missing)")
            if m["explained"]:
                why = f"explained by signed gap record seq {m['explained_by']} ({shown(reasons[(device, m['explained_by'])])})"
            elif m["partly_explained_by"]:
                why = "partly explained by signed gap record(s) seq " + ", ".join(map(str, m["partly_explained_by"]))
            else:
                why = "UNEXPLAINED: no signed gap record covers it"
            print(f"{device}: missing {span}: {why}")
        for g in entry["gap_records"]:
            span = f"seqs {g['first']}..{g['last']}" if g["first"] is not None else "seqs not stated"
            count = f", {g['count']} reading(s)" if g["count"] is not None else ""
            reviewed = "; ".join(f"reviewed by {r['by']} at {r['at']}: {r['note']}" for r in g["reviews"])
            print(f"{device}: signed gap record seq {g['seq']}: {shown(g['reason'])}, {span}{count}; "
                  f"{reviewed or 'NOT REVIEWED (pledgewatch lender review)'}")
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    with _open(args) as store:
        entries = [] if args.counts else store.quarantined(args.limit)
        overflow = store.quarantine_overflow()
        tally = store.quarantine_tally()
    rows = [{"kind": kind, "reason": reason, "reason_name": Reason(reason).name.lower(),
             "refused": tally.get((kind, reason), (0, 0))[1] + overflow.get((kind, reason), 0),
             "kept": tally.get((kind, reason), (0, 0))[0], "counted_only": overflow.get((kind, reason), 0)}
            for kind, reason in sorted(set(tally) | set(overflow))]
    if args.counts:
        if args.json:
            print(json.dumps(rows))
            return 0
        _print_refusal_counts(rows)
        return 0
    if args.json:
        for q in entries:
            print(json.dumps({
                "id": q.id, "kind": q.kind, "reason": int(q.reason), "reason_name": q.reason.name.lower(),
                "detail": q.detail, "device": q.device, "seq": q.seq, "kid": None if q.kid is None else q.kid.hex(),
                "batch_index": q.batch_index, "size": q.size, "count": q.count, "first_peer": q.first_peer,
                "last_peer": q.last_peer, "first_seen": iso_time(q.first_seen), "last_seen": iso_time(q.last_seen),
                "raw_b64": base64.b64encode(q.raw).decode("ascii"),
            }))
        return 0
    for q in entries:  # every field that came from outside is escaped: a device id, a peer, a decoder's complaint
        what = f"{q.device} seq {q.seq}" if q.device is not None else f"{q.size}-byte {q.kind}"
        print(f"{iso_time(q.last_seen)}  {q.reason.name.lower():<13} x{q.count:<4} {shown(what)} from "
              f"{shown(q.last_peer)}: {shown(q.detail, 500)}")
    if entries:
        print()
    _print_refusal_counts(rows)
    return 0


def _print_refusal_counts(rows: list[dict]) -> None:
    """The refusals by kind and reason: how many, how many distinct items the quarantine keeps, how many it only
    counted (junk beyond the sample, or anything once the quarantine was full)."""
    if not rows:
        print("nothing refused")
        return
    print(f"{'kind':<9} {'reason':<13} {'refused':>12} {'kept':>8} {'counted only':>13}")
    for row in rows:
        print(f"{row['kind']:<9} {row['reason_name']:<13} {row['refused']:>12,} {row['kept']:>8,} "
              f"{row['counted_only']:>13,}")


# --- export and verify ------------------------------------------------------------------------

def _export(args: argparse.Namespace) -> int:
    if args.format == "bundle":
        return _export_bundle(args)
    with _open(args) as store:
        if store.device(args.device) is None and args.device not in store.envelope_devices():
            print(f"pledgewatch lender export: no device {args.device!r} in {args.data}", file=sys.stderr)
            return 1
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
        try:
            count = 0
            if args.format == "jsonl":
                for row in export_rows(store, args.device):
                    out.write(json.dumps(row) + "\n")
                    count += 1
            else:
                writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
                writer.writeheader()
                for row in export_rows(store, args.device):
                    writer.writerow(row)
                    count += 1
        finally:
            if args.output:
                out.close()
    print(f"exported {count} envelope(s) of {args.device}", file=sys.stderr)
    return 0


def _export_bundle(args: argparse.Namespace) -> int:
    with _open(args) as store:
        document, warnings = export_bundle(store, args.device)
    text = json.dumps(document, indent=1) + "\n"
    if args.output:
        atomic_write(args.output, text.encode("utf-8"), 0o644)
    else:
        sys.stdout.write(text)
    for warning in warnings:
        print(f"pledgewatch lender export: WARNING {warning}", file=sys.stderr)
    checkpoint = document["checkpoints"][-1]
    print(f"exported the bundle of {args.device}: {len(document['entries'])} log entries, proven against the "
          f"checkpoint of {checkpoint['tree_size']} entries", file=sys.stderr)
    return 1 if warnings else 0


def _verify(args: argparse.Namespace) -> int:
    if args.lender_key is not None:
        return _verify_bundle(args)
    if is_bundle(args.file):
        raise ExportFormatError(f"{args.file} is an evidence bundle: verify it against the lender's public key "
                                "with --lender-key (`pledgewatch lender key` prints it)")
    if args.keys is not None:
        keys = load_keys(args.keys)
    else:
        if args.data is None:
            args.data = Path(DEFAULT_DATA)
        with _open(args) as store:
            # revoked too (what it signed before still counts); the enrolled key: rotations are followed from it
            keys = {d.enrolled().kid: d.enrolled() for d in store.devices()}
    result = verify_export(read_export(args.file), keys, allow_gaps=args.allow_gaps)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for d in result["devices"]:
            state = "chain intact" if d["intact"] else "chain NOT intact"
            print(f"{d['device']}: {d['envelopes']} envelope(s), seqs {d['first']}..{d['last']}, "
                  f"signatures verified, {state}")
            for p in d["problems"]:
                note = f" (explained by signed gap record seq {p['explained_by']})" if p["explained_by"] else ""
                print(f"  {p['kind']}: {p['detail']}{note}{'' if p['fails'] else ' [tolerated]'}")
        for failure in result["failures"]:
            print(f"FAIL {failure}")
        print(f"verify: {'OK' if result['ok'] else 'FAILED'}: {result['rows']} row(s), "
              f"{len(result['failures'])} failure(s)")
    return 0 if result["ok"] else 1


def _verify_bundle(args: argparse.Namespace) -> int:
    report = verify_bundle_file(args.file, parse_lender_key(args.lender_key), allow_gaps=args.allow_gaps)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for finding in report.findings:
            print(f"{'ok  ' if finding.ok else 'FAIL'} {finding.check}: {finding.detail}")
        seqs = f", seqs {report.first_seq}..{report.last_seq}" if report.first_seq is not None else ""
        print(f"verify: {'OK' if report.ok else 'FAILED'}: bundle of {report.device}, {report.entries} log entries, "
              f"{report.envelopes} envelope(s){seqs}; {len(report.failures)} problem(s)")
    return 0 if report.ok else 1


# --- the lender's log: key, checkpoints, consistency --------------------------------------------------

def checkpoint_json(signed: SignedCheckpoint, lender_key: bytes) -> dict:
    """A signed checkpoint as `lender checkpoint --json` prints it (and `prove-consistency` reads it back)."""
    checkpoint = signed.checkpoint
    return {"tree_size": checkpoint.tree_size, "root_hex": checkpoint.root.hex(),
            "time": iso_time(checkpoint.time_ms / 1000), "time_ms": checkpoint.time_ms,
            "devices": checkpoint.heads_size, "heads_root_hex": checkpoint.heads_root.hex(),
            "lender_key_hex": lender_key.hex(), "cose_b64": base64.b64encode(signed.encode()).decode("ascii")}


def _key(args: argparse.Namespace) -> int:
    print(lender_identity(args.data).public_key.hex())
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    with _open(args) as store:
        signed = store.checkpoint()
        key = store.log.identity.public_key
    shown = checkpoint_json(signed, key)
    if args.json:
        print(json.dumps(shown))
        return 0
    print(f"tree size   {shown['tree_size']} entries\nroot        {shown['root_hex']}\ntime        {shown['time']}\n"
          f"devices     {shown['devices']} (heads root {shown['heads_root_hex']})\nlender key  {shown['lender_key_hex']}\n"
          f"signed      {shown['cose_b64']}")
    return 0


def _receipt(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.checkpoint()  # the latest head, signed if need be
        receipt = store.delivery_receipt(args.device, args.seq)
        envelope = store.envelope(args.device, args.seq)
        key = store.log.identity.public_key
    if receipt is None or envelope is None:
        print(f"pledgewatch lender receipt: {args.device} seq {args.seq} is not in the lender's log", file=sys.stderr)
        return 1
    checkpoint, index = receipt.verify(args.device, envelope.raw, key)
    print(json.dumps({"device": args.device, "seq": args.seq, "index": index, "at_ms": receipt.at,
                      "tree_size": checkpoint.tree_size, "root_hex": checkpoint.root.hex(), "lender_key_hex": key.hex(),
                      "entry_b64": base64.b64encode(envelope_entry(args.device, receipt.at, envelope.raw)).decode(),
                      "receipt_b64": base64.b64encode(receipt.receipt).decode()}))
    return 0


def _read_checkpoint(path: Path, lender_key: bytes) -> SignedCheckpoint:
    """A checkpoint someone kept: `lender checkpoint --json` output, its COSE bytes, or their base64."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExportFormatError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if data.lstrip().startswith(b"{"):
            shown = json.loads(data)
            if "checkpoints" in shown:  # an evidence bundle: the checkpoint its entries are proven against
                shown = shown["checkpoints"][-1]
            data = base64.b64decode(shown["cose_b64"], validate=True)
        elif not data.startswith(b"\xd2"):
            data = base64.b64decode(data.strip(), validate=True)
        return SignedCheckpoint.decode(data, lender_key)
    except (ValueError, KeyError, TypeError, WireFormatError) as exc:
        raise ExportFormatError(f"{path} is not a checkpoint signed by this lender's key: {exc}") from exc


def _prove_consistency(args: argparse.Namespace) -> int:
    with _open(args) as store:
        key = store.log.identity.public_key
        old = _read_checkpoint(args.old, key)
        new = store.checkpoint()
        audit = store.log.audit()
        problems = list(audit.problems)
        a, b = old.checkpoint, new.checkpoint
        path: list[bytes] = []
        if a.tree_size > b.tree_size:
            problems.append(f"the old checkpoint signs {a.tree_size} entries, the log now holds {b.tree_size}: "
                            "entries were deleted")
        else:
            path = store.log.consistency_path(a.tree_size, b.tree_size)
            if not verify_consistency(a.tree_size, b.tree_size, a.root, b.root, path):
                problems.append(f"the log of {b.tree_size} entries does not extend the old checkpoint's "
                                f"{a.tree_size}: its first {a.tree_size} entries changed since")
        receipt = new.consistency_receipt(a.tree_size, path) if not problems and a.tree_size else None
    result = {"ok": not problems, "old": checkpoint_json(old, key), "new": checkpoint_json(new, key),
              "path_hex": [h.hex() for h in path], "entries_audited": audit.entries,
              "checkpoints_audited": audit.checkpoints, "problems": problems,
              "receipt_b64": None if receipt is None else base64.b64encode(receipt).decode("ascii")}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for problem in problems:
            print(f"FAIL {problem}")
        if not problems:
            print(f"the log grew from {a.tree_size} to {b.tree_size} entries without changing a single earlier "
                  f"entry; audited {audit.entries} entries and {audit.checkpoints} checkpoints against the evidence")
            print(f"consistency path: {len(path)} hash(es); receipt (RFC 9942, -2): {result['receipt_b64']}")
        print(f"prove-consistency: {'OK' if not problems else 'FAILED'}: {len(problems)} problem(s)")
    return 0 if not problems else 1


# --- alarms and status ------------------------------------------------------------------------------

def _alarm_arguments(alarms: argparse.ArgumentParser, status: argparse.ArgumentParser) -> None:
    alarms.add_argument("--device", help="only this device")
    alarms.add_argument("--asset", help="only this asset")
    alarms.add_argument("--open", action="store_true", help="only alarms still raised")
    alarms.add_argument("--json", action="store_true", help="one JSON object per line")
    status.add_argument("--device", help="only this device")
    status.add_argument("--json", action="store_true", help="a JSON array, one object per asset")
    for parser in (alarms, status):
        parser.add_argument("--missed-heartbeats", type=_positive_float, default=MISSED_HEARTBEATS, metavar="N",
                            help=f"call a device silent after N declared heartbeats without an envelope "
                                 f"(default {MISSED_HEARTBEATS})")


def _judge(args: argparse.Namespace) -> Judge:
    """The lender's own yardsticks for risks: now, its token key, its site records, its patience."""
    return Judge(now=time.time(), token_key=token_key(args.data, create=False),
                 sites_dir=Path(args.data) / "enroll" / "sites", missed_heartbeats=args.missed_heartbeats)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _when(event: AlarmRecord) -> str | None:
    if event.time is not None:
        return iso_time(event.time)
    uptime = f"uptime {event.uptime_s:.1f} s, " if event.uptime_s is not None else ""
    return f"unsynchronized clock ({uptime}received {iso_time(event.received_at)})"


def _alarm_json(event: AlarmRecord) -> dict:
    data = asdict(event)
    data["name"] = event.name
    data["sensors"] = list(event.sensors)
    return data


def _alarms(args: argparse.Namespace) -> int:
    judge = _judge(args)
    with _open(args) as store:
        events = alarm_events(store, args.device, args.asset)
        if args.open:
            events = sorted(open_alarms(events).values(), key=lambda e: (e.device, e.seq))
        devices = [args.device] if args.device else sorted({d.device for d in store.devices()}
                                                            | set(store.envelope_devices()))
        # the lender's own alarms: every risk it sees, raised by the lender, as long as it lasts
        still_open = open_alarms(alarm_events(store, args.device))
        raised = [(device, risk) for device in devices
                  for risk in device_risks(store, device, judge, {name for d, name in still_open if d == device})]
    for event in events:
        if args.json:
            print(json.dumps({**_alarm_json(event), "source": "device"}, sort_keys=True))
        else:
            what = f" {event.value:g} {event.unit or ''}".rstrip() if event.value is not None else ""
            print(f"{event.device} {event.asset}: {event.state.upper():7} {event.name} ({event.severity}) seq {event.seq}"
                  f" at {_when(event)}; sensors {','.join(event.sensors) or '-'};{what} {shown(event.detail)}".rstrip())
    for device, risk in raised if args.asset in (None, GATEWAY) else ():
        if args.json:
            print(json.dumps({"source": "lender", "device": device, "asset": GATEWAY, "kind": risk.kind,
                              "state": "raised", "name": f"risk.{risk.kind}.{device}", **risk.to_json()},
                             sort_keys=True))
        else:
            since = f" since {iso_time(risk.since)}" if risk.since is not None else ""
            print(f"{device} {GATEWAY}: RAISED  risk.{risk.kind} (lender){since}: {shown(risk.detail)}")
    events = events or raised
    if not events and not args.json:
        print("no alarms" + (" open" if args.open else ""), file=sys.stderr)
    return 0


def _reading_json(reading: Reading | None) -> dict | None:
    if reading is None:
        return None
    value = next((v for v in (reading.value, reading.string, reading.boolean, reading.sum) if v is not None), None)
    return {"seq": reading.seq, "name": reading.name, "value": value, "unit": reading.unit, "time": reading.time,
            "at": reading.at}


def status_json(status: AssetStatus) -> dict:
    return {
        "device": status.device, "asset": status.asset, "kind": status.kind, "sensors": list(status.sensors),
        "state": status.state, "last_seen": status.last_seen, "last_seq": status.last_seq,
        "last_reading": _reading_json(status.last_reading),
        "open_alarms": [_alarm_json(a) for a in status.open_alarms],
        "unexplained_gaps": [list(g) for g in status.unexplained_gaps], "explained_gaps": status.explained_gaps,
        "risks": [r.to_json() for r in status.risks], "freshness": status.freshness,
    }


def _status(args: argparse.Namespace) -> int:
    with _open(args) as store:
        statuses = asset_status(store, args.device, _judge(args))
        from lender.enrollment.desk import with_recorded_key_storage
        registered = {d.device: with_recorded_key_storage(args.data, d) for d in store.devices()}
    keys = {s.device: {"algorithm": d.algorithm, "key_storage": d.key_storage.value} if d else
            {"algorithm": None, "key_storage": None} for s in statuses for d in [registered.get(s.device)]}
    if args.json:
        print(json.dumps([{**status_json(s), **keys[s.device]} for s in statuses], sort_keys=True))
        return 0
    now = time.time()
    for s in statuses:
        print(f"{s.asset} ({s.kind}, {s.device}): {s.state}")
        print(f"  key           {keys[s.device]['algorithm'] or 'unregistered'}, {keys[s.device]['key_storage'] or '-'}")
        seen = f"{iso_time(s.last_seen)} ({now - s.last_seen:.0f} s ago), seq {s.last_seq}" if s.last_seen else "never"
        print(f"  last seen     {seen}; freshness: {s.freshness}")
        r = _reading_json(s.last_reading)
        if r is not None:
            when = iso_time(r["time"]) if r["time"] is not None else f"unsynchronized clock, received {iso_time(r['at'])}"
            print(f"  last reading  {r['name']} = {shown(r['value'], 200)}{' ' + r['unit'] if r['unit'] else ''} at {when}"
                  f" (seq {r['seq']}, verified)")
        elif s.sensors:
            print("  last reading  none yet")
        for alarm in s.open_alarms:
            print(f"  OPEN ALARM    {alarm.name} ({alarm.severity}) since {_when(alarm)}, seq {alarm.seq}: "
                  f"{shown(alarm.detail)}")
        if s.unexplained_gaps:
            ranges = ", ".join(f"{'start' if a is None else a}..{b}" for a, b in s.unexplained_gaps[:5])
            print(f"  gaps          {len(s.unexplained_gaps)} unexplained (seqs {ranges}), {s.explained_gaps} explained")
        else:
            print(f"  gaps          none unexplained, {s.explained_gaps} explained by signed gap records")
        for risk in s.risks:
            since = f" since {iso_time(risk.since)}" if risk.since is not None else ""
            print(f"  RISK {risk.kind:<10}{since}: {shown(risk.detail)}")
    return 0


def _review(args: argparse.Namespace) -> int:
    with _open(args) as store:
        if args.seq not in {g.seq for g in store.gap_records(args.device)}:
            print(f"pledgewatch lender review: {args.device} has no signed gap record at seq {args.seq} "
                  "(see `pledgewatch lender status`)", file=sys.stderr)
            return 1
        review = Review(args.device, args.seq, args.by, args.note, time.time())
        store.add_review(review)
    print(f"reviewed {args.device} seq {args.seq} by {args.by} at {iso_time(review.at)}: {args.note}")
    return 0


# --- signed commands to devices (lender.evidence.commands) ---------------------------------------

def _command_commands(command: Callable) -> None:
    """Add `lender inspect|permit|configure|rotate-key|commands`."""
    by = {"default": os.environ.get("USER") or "cli", "metavar": "NAME",
          "help": "the staff member issuing it, kept in the audit (default $USER)"}
    p = command("inspect", _inspect, "ask a device for a signed snapshot of its sensors now, and wait for it")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--asset", action="append", default=[], metavar="A", help="only this asset's sensors (repeatable)")
    p.add_argument("--wait", type=float, default=30.0, metavar="S", help="seconds to wait for the snapshot (default 30)")
    p.add_argument("--by", **by)
    p.add_argument("--json", action="store_true", help="the command, round trip and snapshot as one JSON object")

    p = command("permit", _permit, "let the borrower open an asset in a window (openings are events, not alarms)")
    p.add_argument("asset", metavar="ASSET")
    p.add_argument("--from", dest="start", required=True, type=_time_arg, metavar="ISO")
    p.add_argument("--until", required=True, type=_time_arg, metavar="ISO")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, e.g. 'release of goods, contract C-17'")
    p.add_argument("--input", action="append", default=[], dest="inputs", metavar="SENSOR",
                   help="only openings of this input (repeatable; default every input)")
    p.add_argument("--by", **by)

    p = command("configure", _configure, "send a device a new rules and sampling configuration (TOML)")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("file", type=Path, metavar="FILE", help="the [rules] / [sampling] document")
    p.add_argument("--by", **by)

    p = command("rotate-key", _rotate_key, "ask a device for a new signing key; the registry switches on its "
                                           "signed handover")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="seconds to wait for the handover (default 0: issue and return)")
    p.add_argument("--by", **by)
    p.add_argument("--json", action="store_true", help="the command and, once switched, the device as one JSON object")

    p = command("commands", _commands, "every command issued, and what each device signed about it")
    p.add_argument("--device", help="only this device")
    p.add_argument("--json", action="store_true", help="a JSON array")


def _desk(store: SQLiteStore, args: argparse.Namespace) -> CommandDesk:
    return CommandDesk(store, lender_identity(args.data))


def _inspect(args: argparse.Namespace) -> int:
    with _open(args) as store:
        desk = _desk(store, args)
        issued = desk.inspect(args.device, args.by, tuple(args.asset))
        if not args.json:
            print(f"inspect {args.device} seq {issued.seq} nonce {issued.nonce.hex()}: waiting up to {args.wait:g} s",
                  file=sys.stderr)
            if answers_at_next_wake(store, args.device):
                print(f"{args.device} is a node: it answers at its next wake (its next report's ack carries the "
                      "command; it applies it a second later and signs the snapshot the wake after), so --wait "
                      "should cover its reporting interval", file=sys.stderr)
        deadline = time.monotonic() + args.wait
        answer = desk.snapshot(issued)
        while answer is None and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = desk.snapshot(issued)
        if answer is None:
            print(f"pledgewatch lender inspect: no snapshot from {args.device} within {args.wait:g} s "
                  f"(seq {issued.seq} stays pending until {iso_time(issued.expires)})", file=sys.stderr)
            return 3
        envelope = store.envelope(args.device, answer.seq)
        readings = [r for r in store.readings(args.device) if r.seq == answer.seq]
    round_trip_ms = (envelope.received_at - issued.issued_at) * 1000
    snapshot = [_reading_json(r) for r in readings]
    if args.json:
        print(json.dumps({**issued.as_json(answer.outcome), "envelope_seq": answer.seq,
                          "round_trip_ms": round(round_trip_ms, 1), "detail": answer.detail, "snapshot": snapshot},
                         sort_keys=True, default=str))
    else:
        print(f"{args.device} {answer.outcome} inspection seq {issued.seq} in {round_trip_ms:.0f} ms "
              f"(signed envelope seq {answer.seq}){': ' + answer.detail if answer.detail else ''}")
        for r in snapshot:
            print(f"  {r['name']} = {r['value']}{' ' + r['unit'] if r['unit'] else ''}")
    return 0 if answer.outcome == "applied" else 1


def _permit(args: argparse.Namespace) -> int:
    permit = Permit(args.asset, int(args.start), int(args.until), args.reason, tuple(args.inputs))
    with _open(args) as store:
        devices = [d for d in store.devices() if d.asset == args.asset and d.status == "active"]
        if not devices:
            print(f"pledgewatch lender permit: no active device watches asset {args.asset!r}", file=sys.stderr)
            return 1
        desk = _desk(store, args)
        for device in devices:
            issued = desk.issue(device.device, permit, args.by)
            print(f"permit for {args.asset} on {device.device}: seq {issued.seq}, "
                  f"{iso_time(permit.start)} .. {iso_time(permit.until)} ({args.reason})")
    return 0


def _configure(args: argparse.Namespace) -> int:
    document = args.file.read_bytes()
    try:
        tomllib.loads(document.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{args.file} is not a TOML document: {exc}") from exc
    with _open(args) as store:
        desk = _desk(store, args)
        version = 1 + sum(c.kind == "configure" for c in store.issued_commands(args.device))
        body = Configure(version, document)
        issued = desk.issue(args.device, body, args.by)
    print(f"configure {args.device}: seq {issued.seq}, version {version}, digest {body.digest.hex()}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    with _open(args) as store:
        device = store.device(args.device)
        if device is None or not device.active:
            print(f"pledgewatch lender rotate-key: {args.device!r} is not an active registered device", file=sys.stderr)
            return 1
        desk = _desk(store, args)
        issued = desk.rotate_key(args.device, args.by)
        if not args.json:
            print(f"rotate-key {args.device}: seq {issued.seq}, key {device.kid.hex()} in force, valid until "
                  f"{iso_time(issued.expires)}", file=sys.stderr)
        deadline = time.monotonic() + args.wait
        answer = desk.answers(args.device).get(issued.digest)
        while answer is None and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = desk.answers(args.device).get(issued.digest)
        now = store.device(args.device)
    switched = answer is not None and answer.outcome == "applied" and now.kid != device.kid
    if args.json:
        print(json.dumps({**issued.as_json(answer.outcome if answer else "issued"), "switched": switched,
                          "handover_seq": now.key_since if switched else None, "device": now.to_json(),
                          "detail": answer.detail if answer else None}, sort_keys=True))
    elif switched:
        print(f"{args.device} handed over at seq {now.key_since}: key {now.kid.hex()} ({now.algorithm}) in force, "
              f"{device.kid.hex()} retired")
    elif answer is not None:
        print(f"{args.device} {answer.outcome} rotate-key seq {issued.seq}"
              f"{': ' + answer.detail if answer.detail else ''}")
    elif args.wait:
        print(f"pledgewatch lender rotate-key: no handover from {args.device} within {args.wait:g} s (seq "
              f"{issued.seq} stays pending until {iso_time(issued.expires)})", file=sys.stderr)
    if answer is None:
        return 3 if args.wait else 0
    return 0 if switched else 1


def _commands(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = _desk(store, args).audit(args.device)
    if args.json:
        print(json.dumps([{**c.as_json(state), "answer_seq": a.seq if a else None,
                           "detail": a.detail if a else None} for c, state, a in rows], sort_keys=True))
        return 0
    for c, state, answer in rows:
        said = f" (envelope seq {answer.seq}{': ' + answer.detail if answer and answer.detail else ''})" if answer else ""
        print(f"{c.device} #{c.seq} {c.kind:<10} {state:<9} by {c.issuer} at {iso_time(c.issued_at)}{said}")
    return 0


# --- `pledgewatch lender technicians` --------------------------------------------------------------

def _data_action(actions, guarded: Callable, default_data: str, name: str, run,
                 help_text: str) -> argparse.ArgumentParser:
    """One ACTION of a command group (`technicians`, `users`), with --data and --store (`store_options`)."""
    p = actions.add_parser(name, help=help_text, description=help_text)
    store_options(p, default_data)
    p.set_defaults(run=guarded(run))
    return p


def _technician_commands(sub, guarded: Callable, default_data: str) -> None:
    """Add `lender technicians add|list|revoke` to the lender's sub-command parser."""
    technicians = sub.add_parser("technicians", help="field technicians whose countersignature enrolls devices",
                                 description="field technicians whose countersignature enrolls devices")
    actions = technicians.add_subparsers(dest="technicians_command", required=True, metavar="ACTION")
    action = functools.partial(_data_action, actions, guarded, default_data)

    p = action("add", _technician_add, "register a technician's Ed25519 public key (prints the lender's enrollment key)")
    p.add_argument("--id", required=True, dest="technician", help="technician id (1..64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--public-key", required=True, metavar="HEX",
                   help="the technician's public key, as `pledgewatch provision technician init` printed it")
    p.add_argument("--name", default="", help="the person's name, for the record")
    p = action("list", _technician_list, "list the registered technicians")
    p.add_argument("--json", action="store_true")
    p = action("revoke", _technician_revoke, "refuse a technician's countersignature from now on")
    p.add_argument("--id", required=True, dest="technician")


def _technician_add(args: argparse.Namespace) -> int:
    try:
        key = bytes.fromhex(args.public_key.strip())
    except ValueError:
        raise InvalidTechnicianError(f"public key {args.public_key!r} is not hex") from None
    technician = TechnicianRegistry(args.data).add(args.technician, key, args.name)
    lender = lender_identity(args.data)
    print(f"registered technician {technician.technician} (kid {technician.kid.hex()})")
    print(f"lender enrollment key: {lender.public_key.hex()}")
    print("give the technician this key: pledgewatch provision technician init --lender-key "
          f"{lender.public_key.hex()}")
    return 0


def _technician_list(args: argparse.Namespace) -> int:
    rows = TechnicianRegistry(args.data).all()
    if args.json:
        print(json.dumps([t.to_json() for t in rows], indent=1))
        return 0
    for t in rows:
        print(f"{t.technician:<20} {t.kid.hex()}  {'active' if t.active else 'revoked':<8} {t.name}")
    return 0


def _technician_revoke(args: argparse.Namespace) -> int:
    technician = TechnicianRegistry(args.data).revoke(args.technician)
    print(f"revoked technician {technician.technician} at {iso_time(technician.revoked_at)}")
    return 0


# --- `pledgewatch lender web` and `lender users` (lender.console) -------------------------------------

def _console_commands(sub, guarded: Callable, default_data: str) -> None:
    """Add `lender web` and `lender users add|remove|list|login-link`."""
    from lender.console.server import DEFAULT_BIND

    p = sub.add_parser("web", help="run the web console for the lender's staff until SIGINT or SIGTERM",
                       description="run the web console (portfolio, assets, alarm review, webhooks, /metrics); "
                                   "prints `console: http://HOST:PORT/` when it listens")
    store_options(p, default_data)
    p.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT", help=f"where to listen (default {DEFAULT_BIND})")
    _console_options(p)
    p.set_defaults(run=guarded(_web))

    users = sub.add_parser("users", help="the console's staff accounts", description="the console's staff accounts")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    action = functools.partial(_data_action, actions, guarded, default_data)

    q = action("add", _user_add, "add a staff account; the password is read from standard input (one line)")
    q.add_argument("--name", required=True)
    q.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    q = action("remove", _user_remove, "remove a staff account (its sessions end at once)")
    q.add_argument("--name", required=True)
    q = action("list", _user_list, "list the staff accounts")
    q.add_argument("--json", action="store_true")
    q = action("login-link", _user_link, "print a path that logs a user in once, within 15 minutes")
    q.add_argument("--name", required=True)


def _console_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="POST events here, signed (repeatable; the key is DATA/webhook.key)")
    p.add_argument("--tiles", metavar="URL", help="map tiles, e.g. https://tiles.example/{z}/{x}/{y}.png (default: none)")
    p.add_argument("--public", action="store_true",
                   help="allow a non-loopback address (only behind TLS: --tls-cert/--tls-key or a TLS proxy)")
    p.add_argument("--tls-cert", type=Path, metavar="PEM")
    p.add_argument("--tls-key", type=Path, metavar="PEM")
    p.add_argument("--forwarded-allow-ips", metavar="IPS",
                   help="trust X-Forwarded-Proto/-For from these proxy addresses (for Secure cookies behind TLS)")


def _console_config(args: argparse.Namespace, bind: str):
    from lender.console.server import ConsoleConfig, parse_bind

    host, port = parse_bind(bind)
    return ConsoleConfig(data_dir=args.data, store_url=args.store, host=host, port=port,
                         webhooks=tuple(getattr(args, "webhook", [])),
                         tiles=getattr(args, "tiles", None), public=getattr(args, "public", False),
                         tls_cert=getattr(args, "tls_cert", None), tls_key=getattr(args, "tls_key", None),
                         forwarded_allow_ips=getattr(args, "forwarded_allow_ips", None))


async def _start_console(args: argparse.Namespace, bind: str):
    from lender.console.server import Console

    console = Console(_console_config(args, bind))
    await console.start()
    print(f"console: {console.url}", flush=True)
    return console


def _web(args: argparse.Namespace) -> int:
    config = _console_config(args, args.bind)  # refuse bad options before anything starts

    async def serve() -> None:
        from lender.console.server import Console

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        console = Console(config)
        await console.start()
        print(f"console: {console.url}", flush=True)
        _notify("READY=1")
        try:
            await stop.wait()
        finally:
            _notify("STOPPING=1")
            await console.stop()
        print("console: stopped", flush=True)

    asyncio.run(serve())
    return 0


def _accounts(args: argparse.Namespace):
    from lender.console.accounts import Accounts
    from lender.console.records import ConsoleRecords

    return Accounts(ConsoleRecords.open(args.data))


def _user_add(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    user = _accounts(args).add(args.name, args.role, password, now=time.time())
    print(f"added {user.role} {user.name}")
    return 0


def _user_remove(args: argparse.Namespace) -> int:
    _accounts(args).remove(args.name, now=time.time())
    print(f"removed {args.name}; their sessions have ended")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    users = _accounts(args).users()
    if args.json:
        print(json.dumps([{"name": u.name, "role": u.role, "created_at": iso_time(u.created_at)} for u in users]))
        return 0
    for u in users:
        print(f"{u.name:<24} {u.role:<9} since {iso_time(u.created_at)}")
    return 0


def _user_link(args: argparse.Namespace) -> int:
    token = _accounts(args).login_link(args.name, now=time.time())
    print(f"/login/once/{token}")
    return 0
