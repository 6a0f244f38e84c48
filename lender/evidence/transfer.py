"""Moving a SQLite lender into PostgreSQL: copy everything (`copy_store`), then prove the copy (`verify_copy`).

`pledgewatch lender migrate --from DIR --to postgresql://…` runs both. The
copy reads ``DIR/lender.sqlite3`` read-only (after `SQLiteStore.open` brought
it to the current SQLite schema) and writes the PostgreSQL store in one
transaction under the writer lock: the registry, every envelope with its
records and gap record, the quarantine and its overflow counts, reviews,
commands, and the transparency log as it is — entries, kept nodes, device
heads and the signed checkpoints byte for byte, so receipts and bundles
handed out before the move still verify against the same lender key. Every
row is inserted only if its key is not there yet (quarantine and registry
rows take the source's values), so running it again copies nothing twice and
a run cut short leaves nothing half-written.

The verification compares, table by table, what the source holds with what
the target holds; checks every source envelope's digest and arrival time in
the target; recomputes the target's tree head at the source's latest
checkpoint and compares it with the signed root; and audits the target's log
against its evidence (lender.evidence.log). The OSCORE contexts (files in
``DIR/oscore``) move to the database separately (lender.enrollment.shared,
called by the CLI), as the evidence floor knows nothing of OSCORE.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from lender.evidence.postgres import REGISTRY_CHANNEL, PostgresStore, month_bounds
from lender.evidence.store import STORE_FILE, SQLiteStore

CHUNK = 2000

# table -> its key in both stores, for the counts a verification compares
COUNTED = {
    "devices": "devices", "envelopes": "envelope_keys", "records": "records", "gap_records": "gap_records",
    "quarantine": "quarantine", "reviews": "reviews", "commands": "commands", "log_entries": "log_entries",
    "log_nodes": "log_nodes", "log_heads": "log_heads", "log_checkpoints": "log_checkpoints",
    "retired_keys": "retired_keys",
}


@dataclass(slots=True)
class CopyReport:
    """What one run of `copy_store` added (zeros on a re-run over a complete copy)."""

    added: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class VerifyReport:
    """What `verify_copy` compared: counts per table (source, target) and the problems found (none: a true copy)."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    tree_size: int = 0
    root: bytes = b""
    entries_audited: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _source(data_dir: Path) -> sqlite3.Connection:
    SQLiteStore.open(data_dir, create=False).close()  # refuses what is not a lender store; migrates an older one
    return sqlite3.connect(f"{(Path(data_dir) / STORE_FILE).resolve().as_uri()}?mode=ro", uri=True)


def _int(value):
    return int(value) if isinstance(value, str) else value


def _split(value) -> tuple[float | None, int | None]:
    """A SenML number as SQLite kept it (int, float, or a big int as text) -> (float column, integer column)."""
    if value is None:
        return None, None
    if isinstance(value, float):
        return value, None
    return None, int(value)


def copy_store(data_dir: str | Path, target: PostgresStore) -> CopyReport:
    """Copy the SQLite store in `data_dir` into `target`, adding only what it lacks (see the module docstring)."""
    source = _source(Path(data_dir))
    report = CopyReport()
    try:
        with target.transaction(pipelined=False):
            conn = target.connection()

            def copy(name: str, select: str, insert: str, convert=lambda row: row) -> int:
                added = 0
                cursor = source.execute(select)
                while rows := cursor.fetchmany(CHUNK):
                    for row in rows:
                        added += conn.execute(insert, convert(row)).rowcount
                report.added[name] = added
                return added

            copy("devices", "SELECT device, public_key, kid, asset, oscore_context, oscore_id, status, registered_at,"
                 " revoked_at, binding, key_since, enrolled_key, key_race, key_storage, key_storage_note"
                 " FROM devices ORDER BY device",
                 "INSERT INTO devices (device, public_key, kid, asset, oscore_context, oscore_id, status, registered_at,"
                 " revoked_at, binding, key_since, enrolled_key, key_race, key_storage, key_storage_note)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device) DO UPDATE"
                 " SET status = excluded.status, revoked_at = excluded.revoked_at, binding = excluded.binding,"
                 " public_key = excluded.public_key, kid = excluded.kid, key_since = excluded.key_since,"
                 " enrolled_key = excluded.enrolled_key, key_race = excluded.key_race,"
                 " key_storage = excluded.key_storage, key_storage_note = excluded.key_storage_note"
                 " WHERE (devices.status, devices.revoked_at, devices.binding, devices.kid, devices.key_race,"
                 " devices.key_storage, devices.key_storage_note)"
                 " IS DISTINCT FROM (excluded.status, excluded.revoked_at, excluded.binding, excluded.kid,"
                 " excluded.key_race, excluded.key_storage, excluded.key_storage_note)")
            copy("retired_keys", "SELECT kid, device, public_key, through_seq, retired_at, command_digest"
                 " FROM retired_keys ORDER BY device, through_seq",
                 "INSERT INTO retired_keys (kid, device, public_key, through_seq, retired_at, command_digest)"
                 " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
            for (low, high) in source.execute("SELECT min(received_at), max(received_at) FROM envelopes"):
                at = low
                while at is not None and at <= high:
                    target.ensure_partition(at)
                    at = month_bounds(at)[1].timestamp()
            new: set[tuple[str, int]] = set()
            cursor = source.execute(
                "SELECT device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version,"
                " alarm_records, alarm_count, gap_count, token, binding, log_index FROM envelopes ORDER BY id")
            while rows := cursor.fetchmany(CHUNK):
                for row in rows:
                    (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version,
                     alarm_records, alarm_count, gap_count, token, binding, log_index) = row
                    if not conn.execute("INSERT INTO envelope_keys (device, seq, received_at) VALUES (%s, %s, %s)"
                                        " ON CONFLICT DO NOTHING", (device, seq, received_at)).rowcount:
                        continue
                    conn.execute(
                        "INSERT INTO envelopes (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason,"
                        " received_at, peer, version, alarm_records, alarm_count, gap_count, token, binding, log_index)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (device, seq, boot, kid, digest, prev, raw, bool(alarm), gap_reason, received_at, peer,
                         version, bool(alarm_records), _int(alarm_count), _int(gap_count), token, binding, log_index))
                    new.add((device, seq))
            report.added["envelopes"] = len(new)
            records = 0
            cursor = source.execute(
                "SELECT r.device, r.seq, r.idx, r.name, r.value, r.string, r.boolean, r.data, r.sum, r.unit, r.time,"
                " r.at, e.received_at FROM records r JOIN envelopes e ON e.device = r.device AND e.seq = r.seq")
            while rows := cursor.fetchmany(CHUNK):
                for device, seq, index, name, value, string, boolean, data, total, unit, at_time, at, received in rows:
                    if (device, seq) not in new:
                        continue
                    conn.execute(
                        "INSERT INTO records (device, seq, idx, name, value, value_int, string, boolean, data, sum,"
                        " sum_int, unit, time, time_int, at, received_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (device, seq, index, name, *_split(value), string, None if boolean is None else bool(boolean),
                         data, *_split(total), unit, *_split(at_time), at, received))
                    records += 1
            report.added["records"] = records
            copy("gap_records", "SELECT device, seq, reason, first_seq, last_seq, count FROM gap_records",
                 "INSERT INTO gap_records (device, seq, reason, first_seq, last_seq, count)"
                 " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                 lambda row: (*row[:3], *map(_int, row[3:])))
            copy("quarantine", "SELECT kind, reason, detail, raw, fingerprint, size, device, seq, kid, batch_index,"
                 " first_peer, last_peer, first_seen, last_seen, count FROM quarantine ORDER BY id",
                 "INSERT INTO quarantine (kind, reason, detail, raw, fingerprint, size, device, seq, kid,"
                 " batch_index, first_peer, last_peer, first_seen, last_seen, count)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                 " ON CONFLICT (fingerprint, reason, kind) DO UPDATE SET count = excluded.count,"
                 " last_seen = excluded.last_seen, last_peer = excluded.last_peer"
                 " WHERE quarantine.count < excluded.count",
                 lambda row: (*row[:7], _int(row[7]), *row[8:]))
            copy("quarantine_overflow", "SELECT kind, reason, count, first_seen, last_seen FROM quarantine_overflow",
                 "INSERT INTO quarantine_overflow (kind, reason, count, first_seen, last_seen)"
                 " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, reason) DO UPDATE SET count = excluded.count,"
                 " last_seen = excluded.last_seen WHERE quarantine_overflow.count < excluded.count")
            copy("reviews", "SELECT id, device, seq, reviewer, note, at FROM reviews ORDER BY id",
                 "INSERT INTO reviews (id, device, seq, reviewer, note, at) VALUES (%s, %s, %s, %s, %s, %s)"
                 " ON CONFLICT (id) DO NOTHING")
            if source.execute("SELECT 1 FROM sqlite_schema WHERE name = 'commands'").fetchone():
                copy("commands", "SELECT device, seq, kind, issued_at, expires, issuer, raw, digest, nonce,"
                     " delivered_at FROM commands",
                     "INSERT INTO commands (device, seq, kind, issued_at, expires, issuer, raw, digest, nonce,"
                     " delivered_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
            copy("log_entries", "SELECT idx, kind, device, seq, leaf, entry FROM log_entries ORDER BY idx",
                 "INSERT INTO log_entries (idx, kind, device, seq, leaf, entry) VALUES (%s, %s, %s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING")
            copy("log_nodes", "SELECT level, idx, hash FROM log_nodes",
                 "INSERT INTO log_nodes (level, idx, hash) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING")
            copy("log_heads", "SELECT device, slot, count, last_index, max_seq FROM log_heads ORDER BY slot",
                 "INSERT INTO log_heads (device, slot, count, last_index, max_seq) VALUES (%s, %s, %s, %s, %s)"
                 " ON CONFLICT (device) DO UPDATE SET count = excluded.count, last_index = excluded.last_index,"
                 " max_seq = excluded.max_seq WHERE log_heads.last_index < excluded.last_index")
            copy("log_checkpoints", "SELECT tree_size, time_ms, root, signed FROM log_checkpoints ORDER BY tree_size",
                 "INSERT INTO log_checkpoints (tree_size, time_ms, root, signed) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING")
            conn.execute("SELECT setval(pg_get_serial_sequence('reviews', 'id'),"
                         " greatest((SELECT coalesce(max(id), 0) FROM reviews), 1))")
            conn.execute("SELECT setval('envelope_ids', greatest((SELECT count(*) FROM envelope_keys), 1))")
            (generation,), = source.execute("SELECT value FROM meta WHERE key = 'registry_generation'").fetchall()
            conn.execute("UPDATE pledgewatch_meta SET value = greatest(value, %s) + 1 WHERE key = 'registry_generation'",
                         (generation,))
            conn.execute(f"NOTIFY {REGISTRY_CHANNEL}")  # running workers read the registry afresh
            conn.execute("UPDATE pledgewatch_meta SET value = (SELECT coalesce(sum(length(raw)), 0) FROM quarantine)"
                         " WHERE key = 'quarantine_bytes'")
    finally:
        source.close()
    if target.log is not None:
        target.log.abandon()  # its tables were written under it: read them afresh
    return report


def verify_copy(data_dir: str | Path, target: PostgresStore) -> VerifyReport:
    """Prove that `target` holds everything the SQLite store in `data_dir` holds (see the module docstring)."""
    source = _source(Path(data_dir))
    report = VerifyReport()
    try:
        conn = target.connection()
        for name, table in COUNTED.items():
            if name == "commands" and not source.execute(
                    "SELECT 1 FROM sqlite_schema WHERE name = 'commands'").fetchone():
                continue
            (mine,), = source.execute(f"SELECT count(*) FROM {name}").fetchall()
            (theirs,), = conn.execute(f"SELECT count(*) FROM {table}").fetchall()
            report.counts[name] = (mine, theirs)
            if theirs < mine:
                report.problems.append(f"{name}: the source holds {mine} rows, the target {theirs}")
        cursor = source.execute("SELECT device, seq, digest, received_at FROM envelopes ORDER BY device, seq")
        while rows := cursor.fetchmany(CHUNK):
            found = {(d, s): (digest, at) for d, s, digest, at in conn.execute(
                "SELECT device, seq, digest, received_at FROM envelopes WHERE (device, seq) IN"
                " (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
                ([r[0] for r in rows], [r[1] for r in rows])).fetchall()}
            for device, seq, digest, at in rows:
                if found.get((device, seq)) != (digest, at):
                    report.problems.append(f"{device} seq {seq}: " + (
                        "missing in the target" if (device, seq) not in found else "other bytes or arrival time"))
        latest = source.execute("SELECT tree_size, root, signed FROM log_checkpoints ORDER BY tree_size DESC LIMIT 1"
                                ).fetchone()
        if latest is not None:
            size, root, signed = latest
            report.tree_size, report.root = size, root
            kept = conn.execute("SELECT signed FROM log_checkpoints WHERE tree_size = %s", (size,)).fetchone()
            if kept is None or kept[0] != signed:
                report.problems.append(f"the target lacks the source's latest signed checkpoint ({size} entries)")
            target.log.load()
            if target.log.size < size:
                report.problems.append(f"the target's log holds {target.log.size} entries, the source's {size}")
            elif target.log.tree_head(size) != root:
                report.problems.append(f"the target's log at {size} entries does not have the root the source signed")
        audit = target.log.audit()
        report.entries_audited = audit.entries
        report.problems.extend(f"audit: {problem}" for problem in audit.problems)
    finally:
        source.close()
    return report
