"""The lender's evidence store in PostgreSQL (psycopg 3): the same `EvidenceStore` as `SQLiteStore`, for fleets.

Selected by a URL (``--store postgresql://…``); SQLite in ``DATA`` stays the
default. Several lender processes (``lender serve --workers N``, and workers
on other hosts) write one database at once. What that takes
(docs/lender-storage.md, "PostgreSQL"; docs/deployment.md):

* **One order for the log.** Every write transaction first takes one
  transaction-scoped advisory lock (`WRITER_LOCK`), so writers follow one
  another exactly as SQLite's ``BEGIN IMMEDIATE`` makes them: the evidence
  log (lender.evidence.log) is appended by one writer at a time, its entries
  numbered in commit order, and each commit signs the checkpoint of its head.
  Signature checks run before the lock (ingest verifies outside the
  transaction), so workers overlap in what costs CPU and queue only for the
  writes.
* **Exactly once per (device, seq)**: ``envelope_keys`` has that primary
  key. ``envelopes`` is partitioned by arrival month (declarative range
  partitions on ``received_at``), and a primary key of a partitioned table
  must hold the partition key, so uniqueness lives in the small unpartitioned
  key table, written in the same transaction.
* **Few round trips** (each wakes another process, and its answer waits for
  the GIL): the writer lock and the log's size in one statement; the chain
  check's neighbours in one range read per device, kept between transactions
  while the log's size shows that no other writer came in; the writes in
  pipeline mode, a batch's rows as one multi-row insert per table; registry
  rows kept until a ``NOTIFY`` announces a change; the receipt for an
  envelope just stored needs no read.
* **Numbered migrations** (`MIGRATIONS`, ``pledgewatch_schema``), applied by
  ``pledgewatch lender migrate --store URL`` and checked at every open: an
  older schema is refused with that instruction, a newer one as from a newer
  program; an empty database is set up by the first open that may create.
* **Recovery.** A broken connection (PostgreSQL restarted, network cut) fails
  the request with `StoreUnavailableError` (the CoAP floor answers 5.03 with
  Max-Age, nothing stored); the next call connects again by itself.

The log's SQL is written for SQLite; `_LogSQL` runs it here (``?`` becomes
``%s``, ``INSERT OR IGNORE`` an ``ON CONFLICT DO NOTHING``). SQLite's ``ANY``
columns (CBOR integers beyond 64 bits) are ``numeric`` here; a SenML value,
sum or time is a ``double precision`` column when the device sent a float
and a ``numeric`` one (``*_int``) when it sent an integer, so both come back
as they were signed.

The per-device OSCORE state that every worker shares (the lender's sender
sequence numbers, each device's replay window) is `OscoreStateTable`, in
this database; the aiocoap side of it is lender.enrollment.shared.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import conninfo

from durable.exc import DurableError
from lender.evidence.commands import IssuedCommand
from lender.evidence.log import EvidenceLog, lender_identity
from lender.evidence.registry import Device, DeviceStatus, RetiredKey
from lender.evidence.store import (
    DEFAULT_QUARANTINE_LIMIT,
    INT64_MAX,
    Ack,
    GapRecord,
    MissingRange,
    QuarantineEntry,
    Reading,
    Refused,
    Review,
    StoreCounts,
    StoredEnvelope,
    log_alarm_ack,
    quarantine_room,
    switched_device,
)
from lender.exc import (
    DeviceExistsError,
    StoreError,
    StoreFormatError,
    StoreUnavailableError,
    UnknownDeviceError,
)
from telemetry.envelope import GENESIS, Envelope, Reason, carries_alarm
from telemetry.logentry import EnrollmentEvidence
from telemetry.receipt import CheckpointReference, DeliveryReceipt, SignedCheckpoint

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
WRITER_LOCK = 0x504C4C44_57524954   # "PLLD" "WRIT": one writing transaction at a time (the log's one order)
MIGRATION_LOCK = 0x504C4C44_4D494752  # "PLLD" "MIGR": one migrating process at a time
CONNECT_TIMEOUT = 5                 # seconds: a worker whose database is down answers 5.03 quickly
PREFETCH = 16                       # seqs read ahead of a batch's first envelope (its neighbours for the chain check)
PARTITIONS_AHEAD = 2                # months of partitions made ahead of the current one
DEVICE_CACHE = 100_000              # registry rows kept between registry changes
ENVELOPES_KEPT = 250_000            # stored envelopes (or their absence) kept known between transactions
STATEMENT_PARAMS = 32_767           # values in one statement (PostgreSQL takes at most 65,535)
REGISTRY_CHANNEL = "pledgewatch_registry"  # NOTIFY channel of registry changes (LISTENed by every connection)

# Version N's statements take a database at version N-1 to N; 1 is the whole schema of SQLite's version 3.
MIGRATIONS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("the evidence store, its transparency log and the shared OSCORE state", (
        "CREATE TABLE pledgewatch_meta (key text PRIMARY KEY, value bigint NOT NULL)",
        "INSERT INTO pledgewatch_meta (key, value) VALUES ('registry_generation', 0), ('quarantine_bytes', 0)",
        "CREATE TABLE devices (device text PRIMARY KEY, public_key bytea NOT NULL, kid bytea NOT NULL UNIQUE,"
        " asset text, oscore_context text, oscore_id bytea,"
        " status text NOT NULL CHECK (status IN ('active', 'revoked')),"
        " registered_at double precision NOT NULL, revoked_at double precision, binding bytea)",
        # exactly once per (device, seq), across partitions and writers; received_at finds the partition
        "CREATE TABLE envelope_keys (device text NOT NULL, seq bigint NOT NULL, received_at double precision NOT NULL,"
        " PRIMARY KEY (device, seq))",
        "CREATE SEQUENCE envelope_ids",
        "CREATE TABLE envelopes (id bigint NOT NULL DEFAULT nextval('envelope_ids'), device text NOT NULL,"
        " seq bigint NOT NULL, boot bigint NOT NULL, kid bytea NOT NULL, digest bytea NOT NULL, prev bytea NOT NULL,"
        " raw bytea NOT NULL, alarm boolean NOT NULL, gap_reason text, received_at double precision NOT NULL,"
        " peer text NOT NULL, version integer NOT NULL DEFAULT 1, alarm_records boolean NOT NULL DEFAULT false,"
        " alarm_count numeric, gap_count numeric, token bytea, binding bytea, log_index bigint)"
        " PARTITION BY RANGE (received_at)",
        "CREATE INDEX envelopes_by_device ON envelopes (device, seq)",
        "CREATE TABLE records (device text NOT NULL, seq bigint NOT NULL, idx integer NOT NULL, name text NOT NULL,"
        " value double precision, value_int numeric, string text, boolean boolean, data bytea,"
        " sum double precision, sum_int numeric, unit text, time double precision, time_int numeric,"
        " at double precision NOT NULL, received_at double precision NOT NULL) PARTITION BY RANGE (received_at)",
        "CREATE INDEX records_by_envelope ON records (device, seq, idx)",
        "CREATE INDEX records_by_time ON records (device, at)",
        "CREATE TABLE gap_records (device text NOT NULL, seq bigint NOT NULL, reason text NOT NULL,"
        " first_seq numeric, last_seq numeric, count numeric, PRIMARY KEY (device, seq))",
        "CREATE TABLE quarantine (id bigserial PRIMARY KEY, kind text NOT NULL CHECK (kind IN ('envelope', 'request')),"
        " reason integer NOT NULL, detail text NOT NULL, raw bytea NOT NULL, fingerprint bytea NOT NULL,"
        " size bigint NOT NULL, device text, seq numeric, kid bytea, batch_index integer,"
        " first_peer text NOT NULL, last_peer text NOT NULL, first_seen double precision NOT NULL,"
        " last_seen double precision NOT NULL, count bigint NOT NULL, UNIQUE (fingerprint, reason, kind))",
        "CREATE INDEX quarantine_by_device ON quarantine (device, last_seen)",
        "CREATE TABLE quarantine_overflow (kind text NOT NULL, reason integer NOT NULL, count bigint NOT NULL,"
        " first_seen double precision NOT NULL, last_seen double precision NOT NULL, PRIMARY KEY (kind, reason))",
        "CREATE TABLE reviews (id bigserial PRIMARY KEY, device text NOT NULL, seq bigint NOT NULL,"
        " reviewer text NOT NULL, note text NOT NULL, at double precision NOT NULL)",
        "CREATE INDEX reviews_by_gap ON reviews (device, seq)",
        # the transparency log: lender.evidence.log's tables (LOG_TABLES) in PostgreSQL's types
        "CREATE TABLE log_entries (idx bigint PRIMARY KEY, kind integer NOT NULL, device text NOT NULL, seq bigint,"
        " leaf bytea NOT NULL, entry bytea)",
        "CREATE INDEX log_events_by_device ON log_entries (device, idx) WHERE kind <> 1",
        "CREATE TABLE log_nodes (level integer NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL,"
        " PRIMARY KEY (level, idx))",
        "CREATE TABLE log_heads (device text PRIMARY KEY, slot bigint NOT NULL UNIQUE, count bigint NOT NULL,"
        " last_index bigint NOT NULL, max_seq bigint)",
        "CREATE TABLE log_checkpoints (tree_size bigint PRIMARY KEY, time_ms bigint NOT NULL, root bytea NOT NULL,"
        " signed bytea NOT NULL)",
        # the lender's side of each device's OSCORE context, shared by every worker (OscoreStateTable)
        "CREATE TABLE oscore_contexts (device text PRIMARY KEY, sender_id bytea NOT NULL,"
        " recipient_id bytea NOT NULL UNIQUE, master_secret bytea NOT NULL, master_salt bytea NOT NULL,"
        " algorithm text NOT NULL, kdf text NOT NULL, sender_next bigint NOT NULL,"
        " window_epoch text, window_index bigint, window_bits bigint, imported_at double precision NOT NULL)",
        # accept a request's sequence number once, across every worker (RFC 8613 §7.4, window of 32)
        """CREATE FUNCTION oscore_strike(p_device text, p_number bigint, p_epoch text) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
          w record;
          first bigint;
          bits bigint;
          overshoot bigint;
        BEGIN
          SELECT window_epoch, window_index, window_bits INTO w FROM oscore_contexts
            WHERE device = p_device FOR UPDATE;
          IF NOT FOUND THEN RETURN 'missing'; END IF;
          IF w.window_epoch IS DISTINCT FROM p_epoch THEN RETURN 'unknown'; END IF;
          first := w.window_index;
          bits := w.window_bits;
          IF p_number < first THEN RETURN 'replay'; END IF;
          IF p_number < first + 32 AND ((bits >> (p_number - first)::integer) & 1) = 1 THEN RETURN 'replay'; END IF;
          overshoot := p_number - (first + 31);
          IF overshoot > 0 THEN
            first := first + overshoot;
            bits := CASE WHEN overshoot >= 32 THEN 0 ELSE bits >> overshoot::integer END;
          END IF;
          bits := bits | (1::bigint << (p_number - first)::integer);
          UPDATE oscore_contexts SET window_index = first, window_bits = bits WHERE device = p_device;
          RETURN 'ok';
        END $$""",
        # a request whose freshness an Echo proved (RFC 8613 Appendix B.1.2): it starts the window of this epoch
        """CREATE FUNCTION oscore_restart_window(p_device text, p_number bigint, p_epoch text) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
          w record;
        BEGIN
          SELECT window_epoch INTO w FROM oscore_contexts WHERE device = p_device FOR UPDATE;
          IF NOT FOUND THEN RETURN 'missing'; END IF;
          IF w.window_epoch IS DISTINCT FROM p_epoch THEN
            UPDATE oscore_contexts SET window_epoch = p_epoch, window_index = p_number, window_bits = 1
              WHERE device = p_device;
            RETURN 'ok';
          END IF;
          RETURN oscore_strike(p_device, p_number, p_epoch);
        END $$""",
    )),
    2: ("the lender's commands (lender.evidence.commands)", (
        "CREATE TABLE commands (device text NOT NULL, seq bigint NOT NULL, kind text NOT NULL,"
        " issued_at double precision NOT NULL, expires bigint NOT NULL, issuer text NOT NULL, raw bytea NOT NULL,"
        " digest bytea NOT NULL, nonce bytea, delivered_at double precision, PRIMARY KEY (device, seq))",
    )),
    3: ("key rotation (lender.evidence.registry): the key in force since a handover, the retired keys", (
        "ALTER TABLE devices ADD COLUMN key_since bigint",
        "ALTER TABLE devices ADD COLUMN enrolled_key bytea",
        "ALTER TABLE devices ADD COLUMN key_race text",
        "CREATE TABLE retired_keys (kid bytea PRIMARY KEY, device text NOT NULL, public_key bytea NOT NULL,"
        " through_seq bigint NOT NULL, retired_at double precision NOT NULL, command_digest bytea NOT NULL)",
    )),
    4: ("the rotated key's storage (lender.evidence.ingest: a TPM's certification keeps tpm-attested)", (
        "ALTER TABLE devices ADD COLUMN key_storage text",
        "ALTER TABLE devices ADD COLUMN key_storage_note text",
    )),
}

# The tables a copy (lender migrate --from DIR) and its verification walk, in SQLite's names.
PARTITIONED = ("envelopes", "records")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unreadable URL)"
    host = parts.get("host", "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname', '')}"


def _wrap(exc: psycopg.Error, what: str) -> StoreError:
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
        return StoreFormatError(f"{what}: the database is not a lender store of this version ({exc})")
    return StoreUnavailableError(f"{what}: {str(exc).strip() or type(exc).__name__}")


def _int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


def _split(value: int | float | None) -> tuple[float | None, int | None]:
    """A SenML number as (float column, integer column): exactly one set, as the device signed it."""
    if value is None:
        return None, None
    if type(value) is int:
        return None, value
    return float(value), None


def _joined(number: float | None, integer: Decimal | None) -> int | float | None:
    return int(integer) if integer is not None else number


def month_bounds(at: float) -> tuple[datetime.datetime, datetime.datetime]:
    """The UTC month holding `at`: [first instant, first instant of the next month)."""
    moment = datetime.datetime.fromtimestamp(min(max(at, 0.0), 253402214400.0), datetime.timezone.utc)
    start = datetime.datetime(moment.year, moment.month, 1, tzinfo=datetime.timezone.utc)
    end = datetime.datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=datetime.timezone.utc)
    return start, end


_ENVELOPE_COLUMNS = ("device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version,"
                     " alarm_records, alarm_count, gap_count, token, binding")
_DEVICE_COLUMNS = ("device, public_key, registered_at, asset, oscore_context, oscore_id, status, revoked_at, binding,"
                   " key_since, enrolled_key, key_race, key_storage, key_storage_note")
_RETIRED_COLUMNS = "device, public_key, through_seq, retired_at, command_digest"
_QUARANTINE_COLUMNS = ("id, kind, reason, detail, raw, size, device, seq, kid, batch_index, first_peer, last_peer,"
                       " first_seen, last_seen, count")
_READING_COLUMNS = "device, seq, idx, name, value, value_int, string, boolean, data, sum, sum_int, unit, time, time_int, at"


def _again_if_reconnected(owner, work, *, retry: bool = True):
    """`work(connection)`, once more on a new connection if the old one turned out dead (a restarted server).

    A connection learns that its server went away only when it is next used;
    what failed on it did nothing, so a read or the start of a transaction is
    tried once more at once instead of failing the request that found out.
    """
    conn = owner.connection()
    try:
        return work(conn)
    except psycopg.OperationalError:
        if not retry or not conn.broken:
            raise
    return work(owner.connection())


def _locked(conn: psycopg.Connection) -> tuple[psycopg.Connection, int]:
    """Begin a transaction on `conn` holding the writer lock; return it and the log's size as the lock found it.

    One round trip (the connection is in autocommit mode: BEGIN by hand; the
    caller ends it, COMMIT or ROLLBACK on failure).
    """
    try:
        cursor = conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK:d});"
                              " SELECT coalesce(max(idx) + 1, 0) FROM log_entries")
        while cursor.nextset():
            pass
        (size,), = cursor.fetchall()
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
        raise
    return conn, size


def _insert_rows(conn: psycopg.Connection, table: str, columns: str, rows: list[tuple]) -> None:
    """`rows` as one multi-row insert (``VALUES ($1, …), (…), …``), up to `STATEMENT_PARAMS` values a statement.

    Written with PostgreSQL's own placeholders through a `psycopg.RawCursor`,
    which sends the text as it is: psycopg parses ``%s`` statements once and
    keeps them only up to 50 parameters, and parsing a batch's records again
    at every commit took a third of the ingest thread (py-spy on bench fleet).
    """
    if not rows:
        return
    width = len(rows[0])
    per = max(1, STATEMENT_PARAMS // width)
    cursor = psycopg.RawCursor(conn)
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        groups = ", ".join("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
                           for r in range(len(chunk)))
        cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {groups}", [value for row in chunk for value in row])


def _stored(row: tuple) -> StoredEnvelope:
    (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version, alarm_records,
     alarm_count, gap_count, token, binding) = row
    return StoredEnvelope(device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version,
                          alarm_records, _int(alarm_count), _int(gap_count), token, binding)


def _reading(row: tuple) -> Reading:
    device, seq, index, name, value, value_int, string, boolean, data, total, total_int, unit, at_time, at_int, at = row
    return Reading(device, seq, index, name, _joined(value, value_int), string, boolean, data,
                   _joined(total, total_int), unit, _joined(at_time, at_int), at)


def _device(row: tuple) -> Device:
    (device, public_key, registered_at, asset, oscore_context, oscore_id, status, revoked_at, binding, key_since,
     enrolled_key, key_race, key_storage, key_storage_note) = row
    return Device(device=device, public_key=public_key, registered_at=registered_at, asset=asset,
                  oscore_context=oscore_context, oscore_id=oscore_id, status=DeviceStatus(status),
                  revoked_at=revoked_at, binding=binding, key_since=_int(key_since), enrolled_key=enrolled_key,
                  key_race=key_race, rotated_key_storage=key_storage, key_storage_note=key_storage_note)


class _LogSQL:
    """The evidence log's SQL (written for SQLite) on the store's current PostgreSQL connection."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._translated: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        translated = self._translated.get(sql)
        if translated is None:
            translated = sql
            if translated.startswith("INSERT OR IGNORE INTO "):
                translated = "INSERT INTO " + translated[len("INSERT OR IGNORE INTO "):] + " ON CONFLICT DO NOTHING"
            translated = self._translated[sql] = translated.replace("?", "%s")
        return translated

    def execute(self, sql: str, params: tuple | list = ()) -> psycopg.Cursor:
        return self._store.connection().execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: list) -> None:
        """Multi-row inserts (the log's appends of a commit) in as few statements as psycopg keeps prepared."""
        head, _, values = self._sql(sql).partition(" VALUES ")
        table, _, columns = head.removeprefix("INSERT INTO ").partition(" (")
        if not head.startswith("INSERT INTO ") or values.count(")") != 1 or not values.endswith(")"):
            with self._store.connection().cursor() as cursor:  # not a plain insert: as the log wrote it
                cursor.executemany(self._sql(sql), rows)
            return
        _insert_rows(self._store.connection(), table, columns.removesuffix(")"), rows)


@dataclass(slots=True)
class _Pending:
    """A write transaction's envelope rows, sent as one executemany each at the commit."""

    keys: list = None
    envelopes: list = None
    records: list = None
    gaps: list = None

    def __post_init__(self) -> None:
        self.keys, self.envelopes, self.records, self.gaps = [], [], [], []

    def __bool__(self) -> bool:
        return bool(self.keys)


class PostgresStore:
    """The evidence store and device registry in one PostgreSQL database. Implements `EvidenceStore`.

    One connection, used by one thread at a time (like `SQLiteStore`); open one
    store per thread or process. `data_dir` holds the lender's keys (the log's
    signing key, ``DATA/enroll/lender.key``): every worker that writes signs
    checkpoints with the same key, so each host has a copy of it.
    """

    def __init__(self, url: str, data_dir: Path, *, quarantine_limit: int, log: bool = True) -> None:
        self.url = url
        self.data_dir = data_dir
        self.quarantine_limit = quarantine_limit
        self._conn: psycopg.Connection | None = None
        self._depth = 0
        self._tx_envelopes: dict[tuple[str, int], StoredEnvelope | None] = {}  # read or written by our transactions
        self._known_size = -1   # the log's size at our last commit: the same at our next lock, nobody else wrote
        self._generation: int | None = None   # the registry generation last read (None: never; no rows kept)
        self._registry_dirty = True
        self._devices: dict[str, Device | None] = {}
        self._pending = _Pending()
        self._logged: dict[tuple[str, int], tuple[int, float]] = {}  # the last commit's (device, seq) -> (index, at)
        self._partitions: set[float] | None = None   # lower bounds (Unix seconds) of the month partitions; None: read
        self.log: EvidenceLog | None = EvidenceLog(_LogSQL(self), lambda: lender_identity(data_dir)) if log else None
        self._log_ready = False

    @property
    def path(self) -> str:
        """Where the store is, for messages (the URL without its password)."""
        return redacted(self.url)

    # --- opening, migrations -----------------------------------------------------------------

    @classmethod
    def open(cls, url: str, data_dir: str | os.PathLike, *, create: bool = True,
             quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT, log: bool = True) -> PostgresStore:
        """Connect to the store at `url`; the lender's keys are in `data_dir` (made 0700 if `create`).

        An empty database is given the schema when `create` is set; one at an
        older schema version is refused until ``lender migrate`` upgrades it.
        """
        data_dir = Path(data_dir)
        if create:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = cls(url, data_dir, quarantine_limit=quarantine_limit, log=log)
        try:
            version = store.schema_version()
            if version is None:
                if not create:
                    raise StoreUnavailableError(f"no lender store in {store.path}: run `pledgewatch lender migrate "
                                                "--store URL` (or start with `register` or `serve`)")
                store.migrate()
            elif version > SCHEMA_VERSION:
                raise StoreFormatError(f"{store.path} has schema version {version}; this program knows up to "
                                       f"{SCHEMA_VERSION}: upgrade it")
            elif version < SCHEMA_VERSION:
                raise StoreFormatError(f"{store.path} has schema version {version}, this program needs "
                                       f"{SCHEMA_VERSION}: run `pledgewatch lender migrate --store URL` first")
            store._load_partitions()
            store._log_ready = store.log is not None
        except BaseException:
            store.close()
            raise
        return store

    def schema_version(self) -> int | None:
        """The applied schema version; None for an empty database. A database of something else is refused."""
        (marked,), = self._query("SELECT to_regclass('pledgewatch_schema') IS NOT NULL")
        if not marked:
            (tables,), = self._query("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            if tables:
                raise StoreFormatError(f"{self.path} is a database of something else ({tables} tables), "
                                       "not a lender store: give the lender a database of its own")
            return None
        (version,), = self._query("SELECT coalesce(max(version), 0) FROM pledgewatch_schema")
        return version

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks, each in its own transaction; return the versions applied."""
        applied = []
        conn = self.connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS pledgewatch_schema (version integer PRIMARY KEY,"
                             " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            for number in sorted(MIGRATIONS):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    if conn.execute("SELECT 1 FROM pledgewatch_schema WHERE version = %s", (number,)).fetchone():
                        continue
                    (newest,), = conn.execute("SELECT coalesce(max(version), 0) FROM pledgewatch_schema").fetchall()
                    if newest > SCHEMA_VERSION:
                        raise StoreFormatError(f"{self.path} has schema version {newest}; this program knows up to "
                                               f"{SCHEMA_VERSION}: upgrade it")
                    description, statements = MIGRATIONS[number]
                    log.info("lender store %s: migrating to schema version %d (%s)", self.path, number, description)
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO pledgewatch_schema (version, description) VALUES (%s, %s)",
                                 (number, description))
                    applied.append(number)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                self._load_partitions()
                now = time.time()
                for months in range(PARTITIONS_AHEAD + 1):
                    self.ensure_partition(month_bounds(now)[0].timestamp() + months * 31 * 86400)
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot migrate the lender store {self.path}") from exc
        return applied

    # --- connection ---------------------------------------------------------------------------

    def connection(self) -> psycopg.Connection:
        """The open connection, connecting again first if the last one broke (a restarted server)."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            if self.log is not None:
                self.log.abandon()  # read afresh: the server may have lost nothing, but we cannot know
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="pledgewatch-lender")
            conn.add_notify_handler(self._registry_changed)
            conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot connect to the lender store {self.path}: "
                                        f"{str(exc).strip() or type(exc).__name__}") from exc
        self._conn = conn
        self._registry_changed()  # what changed while this store had no connection is unknown
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.path!r})"

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        try:
            if self._pending:
                self._flush_pending()
            return _again_if_reconnected(self, lambda conn: conn.execute(sql, params).fetchall(), retry=not self._depth)
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot read {self.path}") from exc

    def _execute(self, sql: str, params: tuple | list = ()) -> psycopg.Cursor:
        return self.connection().execute(sql, params)

    # --- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, pipelined: bool = True) -> Iterator[None]:
        """An exclusive write transaction: all or nothing, and no other writer (any process, any host) in between.

        Pipelined (psycopg's pipeline mode), a statement whose result nobody
        reads does not wait for the server: only reads and the commit do.
        `pipelined=False` for callers that read row counts (lender.evidence.transfer).
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self._logged = {}
        self._pending = _Pending()
        committed = False
        try:
            conn, size = _again_if_reconnected(self, _locked)
            if size != self._known_size or len(self._tx_envelopes) > ENVELOPES_KEPT:
                self._tx_envelopes.clear()  # another writer came in between: what we read before may have changed
            try:
                with conn.pipeline() if pipelined else contextlib.nullcontext():
                    if self._log_ready:
                        self._in_log(lambda: self.log.begin(size))
                    yield
                    self._flush_pending()
                    if self._log_ready:
                        self._in_log(self.log.seal)  # the new head's checkpoint commits with the entries, or neither
                    conn.execute("COMMIT")
                # leaving the pipeline waited for every result, the commit's last: an ack is sent only after this
                committed = True
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
        except BaseException as exc:
            self._partitions = None  # a partition made in this transaction is gone with it
            self._logged = {}
            self._devices.clear()
            if self.log is not None:
                self.log.abandon()  # read again at the next transaction (another writer may have appended)
            if isinstance(exc, psycopg.Error):
                raise _wrap(exc, f"cannot write to {self.path}") from exc
            raise
        finally:
            self._depth = 0
            # the envelopes read and written stay known while no other writer appends to the log (its size tells)
            self._known_size = self.log.size if committed and self._log_ready else -1
            if not committed:
                self._tx_envelopes.clear()
            self._pending = _Pending()

    def _in_log(self, step) -> None:
        try:
            step()
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot write the evidence log in {self.path}") from exc
        except DurableError as exc:  # the signing key: nothing is stored unless its checkpoint can be signed
            raise StoreUnavailableError(f"cannot sign the evidence log's checkpoint: {exc}") from exc

    # --- partitions ---------------------------------------------------------------------------

    def _load_partitions(self) -> None:
        rows = self._query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                           " WHERE i.inhparent = 'envelopes'::regclass")
        self._partitions = set()
        for (name,) in rows:
            with contextlib.suppress(ValueError):
                year, month = name.removeprefix("envelopes_").split("_")
                self._partitions.add(datetime.datetime(int(year), int(month), 1,
                                                       tzinfo=datetime.timezone.utc).timestamp())

    def ensure_partition(self, at: float) -> None:
        """Make the month partitions of `envelopes` and `records` that hold `at` (under the writer lock)."""
        start, end = month_bounds(at)
        if self._partitions is None:
            self._load_partitions()
        if start.timestamp() in self._partitions:
            return
        suffix = f"{start.year:04d}_{start.month:02d}"
        for table in PARTITIONED:
            self._execute(f"CREATE TABLE IF NOT EXISTS {table}_{suffix} PARTITION OF {table}"
                          f" FOR VALUES FROM ({start.timestamp()!r}) TO ({end.timestamp()!r})")
        self._partitions.add(start.timestamp())

    def partitions(self) -> list[str]:
        """The month partitions of `envelopes`, oldest first (what an operator may detach and archive)."""
        return [name for (name,) in self._query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'envelopes'::regclass ORDER BY c.relname")]

    # --- registry -----------------------------------------------------------------------------

    def registry_generation(self) -> int:
        """The registry's generation; read from the database only when a change was announced since the last read.

        Every registry change notifies ``REGISTRY_CHANNEL`` at its commit, and
        every connection listens: a check for a notification already received
        is a local read, so ingest (which asks once per batch) and the server
        (once per request) cost the database nothing while the registry stands.
        """
        conn = self.connection()
        if self._generation is not None and not self._registry_dirty and not self._depth:
            try:
                conn.pgconn.consume_input()
                while conn.pgconn.notifies() is not None:
                    self._registry_dirty = True
            except psycopg.Error:
                self._registry_dirty = True
            if not self._registry_dirty:
                return self._generation
        self._registry_dirty = False
        generation = self._query("SELECT value FROM pledgewatch_meta WHERE key = 'registry_generation'")[0][0]
        if generation != self._generation:  # registry rows read before are valid while this number stands
            self._devices.clear()
            self._generation = generation
        return generation

    def _registry_changed(self, notify: object = None) -> None:
        self._registry_dirty = True

    def _bump_generation(self) -> None:
        self._execute("UPDATE pledgewatch_meta SET value = value + 1 WHERE key = 'registry_generation'")
        self._execute(f"NOTIFY {REGISTRY_CHANNEL}")  # sent to every listening connection when this commits
        self._devices.clear()

    def device(self, device_id: str) -> Device | None:
        """The device's row; kept while the registry generation last read stands (ingest reads it every batch)."""
        if device_id in self._devices:
            return self._devices[device_id]
        rows = self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device = %s", (device_id,))
        found = _device(rows[0]) if rows else None
        if self._generation is not None:
            if len(self._devices) >= DEVICE_CACHE:
                self._devices.clear()
            self._devices[device_id] = found
        return found

    def device_by_kid(self, kid: bytes) -> Device | None:
        rows = self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE kid = %s", (kid,))
        return _device(rows[0]) if rows else None

    def devices(self) -> list[Device]:
        return [_device(row) for row in self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device")]

    def add_device(self, device: Device, enrollment: EnrollmentEvidence | None = None) -> None:
        try:
            with self.transaction():
                added = self._execute(
                    "INSERT INTO devices (device, public_key, kid, asset, oscore_context, oscore_id, status,"
                    " registered_at, revoked_at, binding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING device",
                    (device.device, device.public_key, device.kid, device.asset, device.oscore_context,
                     device.oscore_id, device.status.value, device.registered_at, device.revoked_at, device.binding),
                ).fetchone()
                if added is None:
                    raise DeviceExistsError(
                        f"device {device.device} or its key (kid {device.kid.hex()}) is registered already")
                self._bump_generation()
                if self.log is not None:
                    self.log.registration(device.device, device.registered_at, device.public_key, device.asset,
                                          device.binding, enrollment)
                    if not device.active:
                        self.log.revocation(device.device, device.revoked_at or device.registered_at)
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot register {device.device} in {self.path}") from exc

    def set_revoked(self, device_id: str, at: float) -> Device:
        try:
            with self.transaction():
                revoked = self._execute(
                    "UPDATE devices SET status = 'revoked', revoked_at = %s WHERE device = %s AND status = 'active'"
                    " RETURNING device", (at, device_id)).fetchone()
                if revoked and self.log is not None:
                    self.log.revocation(device_id, at)
                self._bump_generation()
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot revoke {device_id} in {self.path}") from exc
        return self._registered(device_id)

    def bind(self, device_id: str, binding: bytes, enrollment: EnrollmentEvidence | None = None,
             *, at: float | None = None) -> Device:
        try:
            with self.transaction():
                bound = self._execute("UPDATE devices SET binding = %s WHERE device = %s AND binding IS NULL"
                                      " RETURNING device", (binding, device_id)).fetchone()
                if bound and enrollment is not None and self.log is not None:
                    self.log.enrollment(device_id, time.time() if at is None else at, binding, enrollment)
                self._bump_generation()
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot bind {device_id} in {self.path}") from exc
        return self._registered(device_id)

    def retired_keys(self, device_id: str | None = None) -> list[RetiredKey]:
        where, params = (" WHERE device = %s", (device_id,)) if device_id is not None else ("", ())
        return [RetiredKey(device, bytes(key), int(seq), at, bytes(digest)) for device, key, seq, at, digest in
                self._query(f"SELECT {_RETIRED_COLUMNS} FROM retired_keys{where} ORDER BY device, through_seq",
                            params)]

    def switch_key(self, device_id: str, public_key: bytes, handover_seq: int, command_digest: bytes,
                   at: float, *, key_storage: str = "software", note: str | None = None) -> Device:
        device = self._registered(device_id)
        switched = switched_device(device, public_key, handover_seq, key_storage, note)
        try:
            with self.transaction():
                taken = self._execute("SELECT device FROM devices WHERE kid = %s UNION SELECT device FROM"
                                      " retired_keys WHERE kid = %s", (switched.kid, switched.kid)).fetchone()
                if taken is not None:
                    raise DeviceExistsError(f"the key {switched.kid.hex()} {device_id} hands over to is registered "
                                            "already")
                self._execute(f"INSERT INTO retired_keys (kid, {_RETIRED_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                              (device.kid, device_id, device.public_key, handover_seq, at, command_digest))
                self._execute("UPDATE devices SET public_key = %s, kid = %s, key_since = %s, enrolled_key = %s,"
                              " key_storage = %s, key_storage_note = %s WHERE device = %s",
                              (switched.public_key, switched.kid, handover_seq, switched.enrolled_key,
                               switched.rotated_key_storage, switched.key_storage_note, device_id))
                self._bump_generation()
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot switch {device_id}'s key in {self.path}") from exc
        return switched

    def flag_key_race(self, device_id: str, detail: str) -> None:
        try:
            with self.transaction():
                self._execute("UPDATE devices SET key_race = %s WHERE device = %s AND key_race IS NULL",
                              (detail, device_id))
                self._bump_generation()
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot flag {device_id} in {self.path}") from exc

    def _registered(self, device_id: str) -> Device:
        device = self.device(device_id)
        if device is None:
            raise UnknownDeviceError(f"no device {device_id!r} is registered")
        return device

    # --- envelopes ----------------------------------------------------------------------------

    def envelope(self, device: str, seq: int) -> StoredEnvelope | None:
        if self._depth:
            key = (device, seq)
            if key not in self._tx_envelopes:
                self._prefetch(device, seq - 1, min(seq + PREFETCH, INT64_MAX))
            return self._tx_envelopes.get(key)
        rows = self._query(f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE device = %s AND seq = %s"
                           " AND received_at = (SELECT received_at FROM envelope_keys WHERE device = %s AND seq = %s)",
                           (device, seq, device, seq))
        return _stored(rows[0]) if rows else None

    def _prefetch(self, device: str, low: int, high: int) -> None:
        """Inside a write transaction: read a device's stored envelopes low..high at once (none can appear meanwhile)."""
        found = {row[1]: _stored(row) for row in self._query(
            f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE device = %s AND seq BETWEEN %s AND %s",
            (device, low, high))}
        for seq in range(low, high + 1):
            self._tx_envelopes.setdefault((device, seq), found.get(seq))

    def insert_envelope(self, envelope: Envelope, *, received_at: float, peer: str) -> bool:
        if envelope.seq > INT64_MAX or envelope.boot > INT64_MAX:
            raise ValueError("seq and boot above 2**63-1 cannot be stored (ingest refuses them first)")
        with self.transaction():
            key = (envelope.device, envelope.seq)
            if self.envelope(*key) is not None:
                return False
            gap, counters = envelope.gap, envelope.counters
            index = None if self.log is None else self.log.size
            stored = StoredEnvelope(
                envelope.device, envelope.seq, envelope.boot, envelope.kid, envelope.digest, envelope.prev,
                envelope.raw, envelope.alarm, None if gap is None else gap.reason, received_at, peer, envelope.version,
                carries_alarm(envelope.records), None if counters is None else counters.alarms,
                None if counters is None else counters.gaps, envelope.token, envelope.binding)
            self.ensure_partition(received_at)
            pending = self._pending
            pending.keys.append((envelope.device, envelope.seq, received_at))
            pending.envelopes.append((
                envelope.device, envelope.seq, envelope.boot, envelope.kid, envelope.digest, envelope.prev,
                envelope.raw, stored.alarm, stored.gap_reason, received_at, peer, envelope.version,
                stored.alarm_records, stored.alarm_count, stored.gap_count, envelope.token, envelope.binding, index))
            for position, r in enumerate(envelope.records):
                value, value_int = _split(r.value)
                total, total_int = _split(r.sum)
                at_time, at_int = _split(r.time)
                pending.records.append((
                    envelope.device, envelope.seq, position, r.name, value, value_int, r.string, r.boolean, r.data,
                    total, total_int, r.unit, at_time, at_int, float(r.time) if r.time is not None else received_at,
                    received_at))
            if gap is not None:
                pending.gaps.append((envelope.device, envelope.seq, gap.reason, gap.first, gap.last, gap.count))
            if self.log is not None:
                self.log.append_envelope(envelope.device, envelope.seq, received_at, envelope.raw)
                self._logged[key] = (index, received_at)
            self._tx_envelopes[key] = stored
        return True

    def _flush_pending(self) -> None:
        """Send the transaction's envelope rows (inside it): exactly-once is `envelope_keys`' primary key."""
        pending, self._pending = self._pending, _Pending()
        if not pending:
            return
        conn = self.connection()
        _insert_rows(conn, "envelope_keys", "device, seq, received_at", pending.keys)
        _insert_rows(conn, "envelopes", f"{_ENVELOPE_COLUMNS}, log_index", pending.envelopes)
        _insert_rows(conn, "records", "device, seq, idx, name, value, value_int, string, boolean, data, sum, sum_int,"
                                      " unit, time, time_int, at, received_at", pending.records)
        _insert_rows(conn, "gap_records", "device, seq, reason, first_seq, last_seq, count", pending.gaps)

    def envelopes(self, device: str) -> Iterator[StoredEnvelope]:
        for row in self._query(f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE device = %s ORDER BY seq", (device,)):
            yield _stored(row)

    def envelope_devices(self) -> list[str]:
        """Every device with at least one stored envelope (registered or not any more)."""
        return [row[0] for row in self._query("SELECT DISTINCT device FROM envelope_keys ORDER BY device")]

    def readings(self, device: str, since: float | None = None, until: float | None = None) -> Iterator[Reading]:
        params = (device, float("-inf") if since is None else since, float("inf") if until is None else until)
        for row in self._query(f"SELECT {_READING_COLUMNS} FROM records WHERE device = %s AND at >= %s AND at < %s"
                               " ORDER BY at, seq, idx", params):
            yield _reading(row)

    def records_named(self, device: str | None, *, names: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
                      newest_first: bool = False, limit: int | None = None) -> list[Reading]:
        """Stored records called one of `names` or starting with one of `prefixes`, by device and seq."""
        if not names and not prefixes:
            return []
        match = " OR ".join((["name = ANY(%s)"] if names else []) + ["starts_with(name, %s)"] * len(prefixes))
        params: list = ([list(names)] if names else []) + list(prefixes)
        where = f"({match})" + (" AND device = %s" if device is not None else "")
        params += [device] if device is not None else []
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT {_READING_COLUMNS} FROM records WHERE {where} ORDER BY device {order}, seq {order}, idx"
               + (" LIMIT %s" if limit is not None else ""))
        return [_reading(row) for row in self._query(sql, params + ([limit] if limit is not None else []))]

    def record_times(self, device: str) -> dict[int, tuple[float, float]]:
        """seq -> (earliest, latest) time the device put on the records of that envelope (those with a time)."""
        rows = self._query("SELECT seq, min(coalesce(time_int::double precision, time)),"
                           " max(coalesce(time_int::double precision, time)) FROM records"
                           " WHERE device = %s AND (time IS NOT NULL OR time_int IS NOT NULL) GROUP BY seq", (device,))
        return {seq: (float(low), float(high)) for seq, low, high in rows}

    def last_received(self, device: str) -> tuple[int, float] | None:
        """The highest stored seq of `device` and when the newest envelope arrived, or None."""
        (seq, received), = self._query("SELECT max(seq), max(received_at) FROM envelope_keys WHERE device = %s",
                                       (device,))
        return None if seq is None else (seq, received)

    def gap_records(self, device: str | None = None) -> list[GapRecord]:
        sql = "SELECT device, seq, reason, first_seq, last_seq, count FROM gap_records"
        rows = self._query(sql + (" WHERE device = %s" if device else "") + " ORDER BY device, seq",
                           (device,) if device else ())
        return [GapRecord(d, s, r, _int(f), _int(l), _int(c)) for d, s, r, f, l, c in rows]

    def missing_ranges(self, device: str | None = None) -> list[MissingRange]:
        where, params = (" WHERE device = %s", (device,)) if device else ("", ())
        ranges = []
        for dev, seq, prev in self._query(
            "SELECT e.device, e.seq, e.prev FROM envelopes e JOIN"
            f" (SELECT device, min(seq) AS seq FROM envelope_keys{where} GROUP BY device) AS lowest"
            " ON e.device = lowest.device AND e.seq = lowest.seq", params,
        ):
            if prev != GENESIS:
                ranges.append(MissingRange(dev, None, seq - 1))
        for dev, seq, following in self._query(
            "SELECT device, seq, following FROM (SELECT device, seq,"
            f" lead(seq) OVER (PARTITION BY device ORDER BY seq) AS following FROM envelope_keys{where}) AS t"
            " WHERE following > seq + 1", params,
        ):
            ranges.append(MissingRange(dev, seq + 1, following - 1))
        ranges.sort(key=lambda r: (r.device, -1 if r.first is None else r.first))
        return ranges

    # --- quarantine ---------------------------------------------------------------------------

    def quarantine(self, rejection: Refused) -> bool:
        raw = bytes(rejection.raw)
        fingerprint = hashlib.sha256(raw).digest()
        now, kind, reason = rejection.received_at, rejection.kind, int(rejection.reason)
        try:
            with self.transaction():
                repeated = self._execute(
                    "UPDATE quarantine SET count = count + 1, last_seen = greatest(last_seen, %s), last_peer = %s"
                    " WHERE fingerprint = %s AND reason = %s AND kind = %s RETURNING id",
                    (now, rejection.peer, fingerprint, reason, kind)).fetchone()
                if repeated:
                    return True
                (used,), = self._execute(
                    "SELECT value FROM pledgewatch_meta WHERE key = 'quarantine_bytes'").fetchall()
                if used + len(raw) > quarantine_room(self.quarantine_limit, rejection):
                    self._count_overflow(kind, reason, 1, now, now)
                    return False
                self._execute(
                    "INSERT INTO quarantine (kind, reason, detail, raw, fingerprint, size, device, seq, kid,"
                    " batch_index, first_peer, last_peer, first_seen, last_seen, count)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1)",
                    (kind, reason, rejection.detail, raw, fingerprint,
                     len(raw) if rejection.size is None else rejection.size, rejection.device, rejection.seq,
                     rejection.kid, rejection.batch_index, rejection.peer, rejection.peer, now, now))
                self._execute("UPDATE pledgewatch_meta SET value = value + %s WHERE key = 'quarantine_bytes'",
                              (len(raw),))
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot write the quarantine in {self.path}") from exc
        return True

    def _count_overflow(self, kind: str, reason: int, count: int, first: float, last: float) -> None:
        self._execute(
            "INSERT INTO quarantine_overflow (kind, reason, count, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, reason) DO UPDATE SET"
            " count = quarantine_overflow.count + excluded.count,"
            " first_seen = least(quarantine_overflow.first_seen, excluded.first_seen),"
            " last_seen = greatest(quarantine_overflow.last_seen, excluded.last_seen)",
            (kind, reason, count, first, last))

    def count_refusals(self, counts: Mapping[tuple[str, int], tuple[int, float, float]]) -> None:
        try:
            with self.transaction():
                for (kind, reason), (count, first, last) in counts.items():
                    self._count_overflow(kind, int(reason), count, first, last)
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot count refusals in {self.path}") from exc

    def quarantine_tally(self) -> dict[tuple[str, int], tuple[int, int]]:
        return {(kind, reason): (int(items), int(count)) for kind, reason, items, count in self._query(
            "SELECT kind, reason, count(*), sum(count) FROM quarantine GROUP BY kind, reason ORDER BY kind, reason")}

    def quarantined(self, limit: int = 100, device: str | None = None) -> list[QuarantineEntry]:
        where, params = ("WHERE device = %s", (device,)) if device is not None else ("", ())
        rows = self._query(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine {where}"
                           " ORDER BY last_seen DESC, id DESC LIMIT %s", (*params, limit))
        return [
            QuarantineEntry(i, kind, Reason(reason), detail, raw, size, device, _int(seq), kid, index,
                            first_peer, last_peer, first_seen, last_seen, count)
            for (i, kind, reason, detail, raw, size, device, seq, kid, index, first_peer, last_peer,
                 first_seen, last_seen, count) in rows
        ]

    def quarantine_overflow(self) -> dict[tuple[str, int], int]:
        return {(kind, reason): count for kind, reason, count in
                self._query("SELECT kind, reason, count FROM quarantine_overflow ORDER BY kind, reason")}

    # --- reviews ------------------------------------------------------------------------------

    def add_review(self, review: Review) -> None:
        try:
            with self.transaction():
                self._execute("INSERT INTO reviews (device, seq, reviewer, note, at) VALUES (%s, %s, %s, %s, %s)",
                              (review.device, review.seq, review.reviewer, review.note, review.at))
                if self.log is not None:
                    self.log.review(review.device, review.at, review.seq, review.reviewer, review.note)
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot keep the review in {self.path}") from exc

    def reviews(self, device: str | None = None) -> list[Review]:
        where, params = ("WHERE device = %s", (device,)) if device is not None else ("", ())
        return [Review(*row) for row in self._query(
            f"SELECT device, seq, reviewer, note, at FROM reviews {where} ORDER BY id", params)]

    def add_ack(self, ack: Ack) -> None:
        log_alarm_ack(self, ack)

    # --- the lender's commands (lender.evidence.commands) --------------------------------------

    def add_command(self, device: str, make: Callable[[int], IssuedCommand]) -> IssuedCommand:
        """Keep the command `make(seq)` builds for the device's next command seq, in one transaction."""
        try:
            with self.transaction():
                (last,), = self._execute("SELECT coalesce(max(seq), 0) FROM commands WHERE device = %s",
                                         (device,)).fetchall()
                command = make(last + 1)
                self._execute(
                    "INSERT INTO commands (device, seq, kind, issued_at, expires, issuer, raw, digest, nonce)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (command.device, command.seq, command.kind, command.issued_at, command.expires, command.issuer,
                     command.raw, command.digest, command.nonce))
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot keep the command in {self.path}") from exc
        return command

    def issued_commands(self, device: str | None = None) -> list[IssuedCommand]:
        """The commands kept, by device and seq."""
        where, params = ("WHERE device = %s", (device,)) if device is not None else ("", ())
        return [IssuedCommand(*row) for row in self._query(
            "SELECT device, seq, kind, issued_at, expires, issuer, raw, digest, nonce, delivered_at FROM commands"
            f" {where} ORDER BY device, seq", params)]

    def mark_delivered(self, device: str, seq: int, at: float) -> None:
        """Note when a command was first handed to its device."""
        try:
            with self.transaction():
                self._execute("UPDATE commands SET delivered_at = %s WHERE device = %s AND seq = %s"
                              " AND delivered_at IS NULL", (at, device, seq))
        except psycopg.Error as exc:
            raise _wrap(exc, f"cannot write to {self.path}") from exc

    # --- the transparency log -----------------------------------------------------------------

    def delivery_receipt(self, device: str, seq: int) -> DeliveryReceipt | None:
        row = self._logged_envelope(device, seq)
        return None if row is None else self.log.delivery_receipt(row[0], seq, row[1])

    def checkpoint_reference(self, device: str, seq: int) -> CheckpointReference | None:
        row = self._logged_envelope(device, seq)
        return None if row is None else self.log.checkpoint_reference(row[0])

    def _logged_envelope(self, device: str, seq: int) -> tuple[int, float] | None:
        if self.log is None or self.log.latest is None:
            return None
        if (device, seq) in self._logged:  # stored by the last commit: no read
            return self._logged[(device, seq)]
        rows = self._query("SELECT log_index, received_at FROM envelopes WHERE device = %s AND seq = %s"
                           " AND received_at = (SELECT received_at FROM envelope_keys WHERE device = %s AND seq = %s)",
                           (device, seq, device, seq))
        return rows[0] if rows and rows[0][0] is not None else None

    def checkpoint(self) -> SignedCheckpoint:
        """The latest signed checkpoint, signing one if the log has none for its current head yet."""
        if self.log is None:
            raise StoreUnavailableError(f"{self.path} was opened without its evidence log")
        with self.transaction():
            return self.log.checkpoint_now()

    def counts(self) -> StoreCounts:
        (devices, envelopes, records, quarantined, overflow), = self._query(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM envelope_keys),"
            " (SELECT count(*) FROM records), (SELECT count(*) FROM quarantine),"
            " (SELECT coalesce(sum(count), 0) FROM quarantine_overflow)")
        return StoreCounts(devices, envelopes, records, quarantined, int(overflow))


# --- the OSCORE state every worker shares ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class OscoreRow:
    """The lender's side of one device's OSCORE context as the database keeps it (static part)."""

    device: str
    sender_id: bytes
    recipient_id: bytes
    master_secret: bytes
    master_salt: bytes
    algorithm: str
    kdf: str


class OscoreStateTable:
    """Each device's OSCORE context in the store's database: any worker, on any host, can serve any device.

    What must never be lost or duplicated lives in the row of the device
    (``oscore_contexts``) and changes only by one atomic statement:

    * the lender's **sender sequence numbers**: `reserve` hands a worker a
      block of numbers no other worker ever gets (committed synchronously
      before the first is used), so two workers can never protect with the
      same nonce; a killed worker's unused numbers are skipped, never reused;
    * the device's **replay window** (RFC 8613 §7.4, 32 wide): `strike`
      accepts a request's number once across every worker, under the row's
      lock. Window updates commit without waiting for the disk: any ack the
      lender sends follows a synchronous commit that carries them to disk too,
      and a server crash that lost some changes the window's *epoch* — the
      server's start time, stamped on every window — so the first request
      after a restart finds its window unknown and is asked for an Echo
      (Appendix B.1.2) instead of risking a replay.

    One connection (autocommit), used by one thread: the worker's event loop,
    where aiocoap unprotects requests.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self.epoch = ""

    def connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.close()
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   application_name="pledgewatch-oscore")
            conn.execute("SET synchronous_commit = off")  # window updates: see the class docstring
            (self.epoch,), = conn.execute("SELECT pg_postmaster_start_time()::text").fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot reach the OSCORE state in {redacted(self.url)}: "
                                        f"{str(exc).strip() or type(exc).__name__}") from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return _again_if_reconnected(self, lambda conn: conn.execute(sql, params).fetchall())
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"OSCORE state in {redacted(self.url)}: "
                                        f"{str(exc).strip() or type(exc).__name__}") from exc

    def row(self, device: str) -> OscoreRow | None:
        rows = self._run("SELECT device, sender_id, recipient_id, master_secret, master_salt, algorithm, kdf"
                         " FROM oscore_contexts WHERE device = %s", (device,))
        return OscoreRow(*rows[0]) if rows else None

    def row_by_kid(self, recipient_id: bytes) -> OscoreRow | None:
        """The context a request with this kid (the device's sender id) belongs to, if any."""
        rows = self._run("SELECT device, sender_id, recipient_id, master_secret, master_salt, algorithm, kdf"
                         " FROM oscore_contexts WHERE recipient_id = %s", (recipient_id,))
        return OscoreRow(*rows[0]) if rows else None

    def device_with_oscore_id(self, recipient_id: bytes) -> str | None:
        """The registered device whose OSCORE sender id this is (its context may not be in the table yet)."""
        rows = self._run("SELECT device FROM devices WHERE oscore_id = %s", (recipient_id,))
        return rows[0][0] if rows else None

    def rows(self) -> list[OscoreRow]:
        return [OscoreRow(*row) for row in self._run(
            "SELECT device, sender_id, recipient_id, master_secret, master_salt, algorithm, kdf FROM oscore_contexts"
            " ORDER BY device")]

    def add(self, row: OscoreRow, sender_next: int) -> bool:
        """Keep a context the lender made on disk; False if the device has one here already (never replaced)."""
        added = self._run(
            "INSERT INTO oscore_contexts (device, sender_id, recipient_id, master_secret, master_salt, algorithm, kdf,"
            " sender_next, imported_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device) DO NOTHING"
            " RETURNING device",
            (row.device, row.sender_id, row.recipient_id, row.master_secret, row.master_salt, row.algorithm, row.kdf,
             sender_next, time.time()))
        return bool(added)

    def reserve(self, device: str, count: int) -> int:
        """The first of `count` sender sequence numbers that are this caller's alone (durable before use)."""
        try:
            conn = self.connection()
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                rows = conn.execute("UPDATE oscore_contexts SET sender_next = sender_next + %s WHERE device = %s"
                                    " RETURNING sender_next - %s", (count, device, count)).fetchall()
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot reserve OSCORE sequence numbers for {device}: {exc}") from exc
        if not rows:
            raise StoreUnavailableError(f"no OSCORE context of {device} in {redacted(self.url)}")
        return rows[0][0]

    def strike(self, device: str, number: int) -> str:
        """Accept a request's sequence number once: 'ok', 'replay', 'unknown' (no window this epoch) or 'missing'."""
        self.connection()  # the epoch is the one of the server this connection reaches
        return self._run("SELECT oscore_strike(%s, %s, %s)", (device, number, self.epoch))[0][0]

    def restart_window(self, device: str, number: int) -> str:
        """A request an Echo proved fresh starts the window of this epoch (or, if another worker did, is struck)."""
        self.connection()
        return self._run("SELECT oscore_restart_window(%s, %s, %s)", (device, number, self.epoch))[0][0]

    def window_known(self, device: str) -> bool:
        """Whether the device's window belongs to this epoch (another worker may have restarted it meanwhile)."""
        self.connection()
        rows = self._run("SELECT window_epoch = %s FROM oscore_contexts WHERE device = %s", (self.epoch, device))
        return bool(rows and rows[0][0])
