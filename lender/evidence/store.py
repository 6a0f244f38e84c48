"""The lender's evidence store: envelopes exactly as received, their readings, gap records, quarantine, registry.

`EvidenceStore` is the interface the ingest logic (lender.evidence.ingest) and the
staff tools use; `SQLiteStore` implements it in one SQLite file in WAL mode,
``DATA/lender.sqlite3`` (schema: docs/lender-storage.md). A PostgreSQL backend
for a large fleet implements the same protocol; ingest does not change.

Exactly-once storage rests on the database, not on the caller: an envelope's
(device, seq) is UNIQUE, and ingest runs each batch inside `transaction()`,
an exclusive write transaction (SQLite ``BEGIN IMMEDIATE``), so two processes
or threads retrying the same batch at once still store each envelope once,
and the second sees it as already present. Commits use ``synchronous=FULL``:
an ack is only sent after the commit, and an acked reading must survive a
power cut at the lender (the agent deletes what was acked).

A connection belongs to one thread at a time (the server hands the store to
its single ingest thread); open one store per thread otherwise.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from durable.exc import DurableError
from lender.evidence.commands import COMMAND_TABLES, IssuedCommand
from lender.evidence.log import LOG_TABLES, EvidenceLog, lender_identity
from lender.evidence.registry import Device, DeviceStatus, Registry, RetiredKey
from lender.exc import (
    DeviceExistsError,
    StoreError,
    StoreFormatError,
    StoreUnavailableError,
    UnknownDeviceError,
)
from telemetry.envelope import GENESIS, Envelope, GapReason, Reason, carries_alarm
from telemetry.logentry import EnrollmentEvidence
from telemetry.receipt import CheckpointReference, DeliveryReceipt, SignedCheckpoint

log = logging.getLogger(__name__)

STORE_FILE = "lender.sqlite3"
APPLICATION_ID = 0x504C4C44  # "PLLD": marks a file as a pledgewatch lender store
SCHEMA_VERSION = 6
DEFAULT_QUARANTINE_LIMIT = 256 * 1024 * 1024  # bytes of raw evidence kept before rejections are only counted
# Refusals no device's key vouches for (junk) are kept only while the quarantine is below this share of its
# limit: the rest stays free for refusals a key vouches for (forks, conflicts, chain violations, revoked keys).
JUNK_SHARE = 0.25
INT64_MAX = (1 << 63) - 1

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY NOT NULL) STRICT",
    "CREATE TABLE devices (device TEXT PRIMARY KEY, public_key BLOB NOT NULL, kid BLOB NOT NULL UNIQUE,"
    " asset TEXT, oscore_context TEXT, oscore_id BLOB,"
    " status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),"
    " registered_at REAL NOT NULL, revoked_at REAL, binding BLOB, key_since INTEGER, enrolled_key BLOB,"
    " key_race TEXT, key_storage TEXT, key_storage_note TEXT) STRICT",
    # One row per stored envelope; raw is the exact bytes received (the evidence).
    "CREATE TABLE envelopes (id INTEGER PRIMARY KEY, device TEXT NOT NULL, seq INTEGER NOT NULL,"
    " boot INTEGER NOT NULL, kid BLOB NOT NULL, digest BLOB NOT NULL, prev BLOB NOT NULL, raw BLOB NOT NULL,"
    " alarm INTEGER NOT NULL, gap_reason TEXT, received_at REAL NOT NULL, peer TEXT NOT NULL,"
    " version INTEGER NOT NULL DEFAULT 1, alarm_records INTEGER NOT NULL DEFAULT 0,"
    " alarm_count ANY, gap_count ANY, token BLOB, binding BLOB, log_index INTEGER,"
    " UNIQUE (device, seq)) STRICT",
    # The SenML records of stored envelopes, resolved, for queries. `at` = the
    # record's own time, else the envelope's receive time.
    "CREATE TABLE records (device TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " name TEXT NOT NULL, value ANY, string TEXT, boolean INTEGER, data BLOB, sum ANY, unit TEXT,"
    " time ANY, at REAL NOT NULL, PRIMARY KEY (device, seq, idx)) STRICT, WITHOUT ROWID",
    "CREATE INDEX records_by_time ON records (device, at)",
    "CREATE TABLE gap_records (device TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL,"
    " first_seq ANY, last_seq ANY, count ANY, PRIMARY KEY (device, seq)) STRICT, WITHOUT ROWID",
    # Everything refused: envelopes (kind 'envelope') and whole requests (kind 'request').
    # One row per distinct (bytes, reason, kind); repeats count up.
    "CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL"
    " CHECK (kind IN ('envelope', 'request')), reason INTEGER NOT NULL, detail TEXT NOT NULL,"
    " raw BLOB NOT NULL, fingerprint BLOB NOT NULL, size INTEGER NOT NULL,"
    " device TEXT, seq ANY, kid BLOB, batch_index INTEGER,"
    " first_peer TEXT NOT NULL, last_peer TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,"
    " count INTEGER NOT NULL, UNIQUE (fingerprint, reason, kind)) STRICT",
    # Rejections that found the quarantine full: counted, never silently lost.
    "CREATE TABLE quarantine_overflow (kind TEXT NOT NULL, reason INTEGER NOT NULL, count INTEGER NOT NULL,"
    " first_seen REAL NOT NULL, last_seen REAL NOT NULL, PRIMARY KEY (kind, reason)) STRICT, WITHOUT ROWID",
    "INSERT INTO meta (key, value) VALUES ('registry_generation', 0), ('quarantine_bytes', 0)",
)
# The keys rotations replaced (lender.evidence.registry.RetiredKey): each verifies its device's seqs up to its handover.
RETIRED_KEY_TABLES = (
    "CREATE TABLE retired_keys (kid BLOB PRIMARY KEY, device TEXT NOT NULL, public_key BLOB NOT NULL,"
    " through_seq INTEGER NOT NULL, retired_at REAL NOT NULL, command_digest BLOB NOT NULL) STRICT",
)
_RETIRED_COLUMNS = "device, public_key, through_seq, retired_at, command_digest"
# Numbered migrations: version N's statements take a store at version N-1 to N.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE devices ADD COLUMN binding BLOB",
        "ALTER TABLE envelopes ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE envelopes ADD COLUMN alarm_records INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE envelopes ADD COLUMN alarm_count ANY",
        "ALTER TABLE envelopes ADD COLUMN gap_count ANY",
        "ALTER TABLE envelopes ADD COLUMN token BLOB",
        "ALTER TABLE envelopes ADD COLUMN binding BLOB",
        "UPDATE envelopes SET alarm_records = EXISTS (SELECT 1 FROM records r WHERE r.device = envelopes.device"
        " AND r.seq = envelopes.seq AND r.name LIKE 'alarm.%')",
    ),
    # the transparency log (lender.evidence.log); `_backfill_log` then logs what the store already held
    3: ("ALTER TABLE envelopes ADD COLUMN log_index INTEGER",),
    4: (),  # the lender's commands (lender.evidence.commands): a new table only
    # key rotation (lender.evidence.registry): the key in force since a handover, the enrolled key, a race
    5: ("ALTER TABLE devices ADD COLUMN key_since INTEGER",
        "ALTER TABLE devices ADD COLUMN enrolled_key BLOB",
        "ALTER TABLE devices ADD COLUMN key_race TEXT"),
    # the rotated key's storage (lender.evidence.ingest: a TPM's certification of the new key keeps `tpm-attested`)
    6: ("ALTER TABLE devices ADD COLUMN key_storage TEXT",
        "ALTER TABLE devices ADD COLUMN key_storage_note TEXT"),
}
# Tables new in a version, created alike in a new store and by the migration.
_NEW_TABLES: dict[int, tuple[str, ...]] = {
    2: (
        # A staff member's review of a signed gap record: who, when, and what they found (an audit record).
        "CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, seq INTEGER NOT NULL,"
        " reviewer TEXT NOT NULL, note TEXT NOT NULL, at REAL NOT NULL) STRICT",
        "CREATE INDEX reviews_by_gap ON reviews (device, seq)",
    ),
    3: LOG_TABLES,
    4: COMMAND_TABLES,
    5: RETIRED_KEY_TABLES,
}


# --- what the store hands out ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """One stored envelope: the fields the chain check needs, and the exact bytes received."""

    device: str
    seq: int
    boot: int
    kid: bytes
    digest: bytes
    prev: bytes
    raw: bytes
    alarm: bool
    gap_reason: str | None
    received_at: float
    peer: str
    version: int = 1
    alarm_records: bool = False      # it holds alarm records (gap records are `alarm` too, but not these)
    alarm_count: int | None = None   # version 2: the signed counters
    gap_count: int | None = None
    token: bytes | None = None
    binding: bytes | None = None

    @property
    def restarts_chain(self) -> bool:
        """A spool-reset gap record links to genesis on purpose (telemetry.chain treats it alike)."""
        return self.gap_reason == GapReason.SPOOL_RESET.value and self.prev == GENESIS


@dataclass(frozen=True, slots=True)
class Refused:
    """Something refused, to be kept in quarantine: the bytes, why, and what could be read of them."""

    kind: str                 # 'envelope' (one item of a batch) or 'request' (a whole body)
    reason: Reason
    detail: str
    raw: bytes
    peer: str
    received_at: float
    size: int | None = None   # the full size when `raw` holds only a prefix (an oversize body)
    device: str | None = None
    seq: int | None = None
    kid: bytes | None = None
    batch_index: int | None = None
    # a registered device's key vouches for it (a valid signature, or the OSCORE context that protected the
    # request): evidence, kept up to the whole limit; anything else only up to JUNK_SHARE of it
    attributable: bool = False


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantine row: a distinct refused item and how often it came."""

    id: int
    kind: str
    reason: Reason
    detail: str
    raw: bytes
    size: int
    device: str | None
    seq: int | None
    kid: bytes | None
    batch_index: int | None
    first_peer: str
    last_peer: str
    first_seen: float
    last_seen: float
    count: int


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored SenML record with the envelope it came in."""

    device: str
    seq: int
    index: int
    name: str
    value: int | float | None
    string: str | None
    boolean: bool | None
    data: bytes | None
    sum: int | float | None
    unit: str | None
    time: int | float | None
    at: float


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A signed gap record as stored: which device said it lost what, and why."""

    device: str
    seq: int
    reason: str
    first: int | None
    last: int | None
    count: int | None


@dataclass(frozen=True, slots=True)
class MissingRange:
    """Seqs `first..last` of a device are not stored. `first` None: the chain's start never arrived."""

    device: str
    first: int | None
    last: int


@dataclass(frozen=True, slots=True)
class Review:
    """A lender staff member looked at a signed gap record (device, seq) and wrote what they found."""

    device: str
    seq: int
    reviewer: str
    note: str
    at: float


@dataclass(frozen=True, slots=True)
class Ack:
    """A lender staff member acknowledged an open alarm (device, alarm name, the seq that raised it), with a note."""

    device: str
    alarm: str
    seq: int
    by: str
    note: str
    at: float


@dataclass(frozen=True, slots=True)
class StoreCounts:
    devices: int
    envelopes: int
    records: int
    quarantined: int
    quarantine_overflow: int


# --- the interface ------------------------------------------------------------------

class EvidenceStore(Registry, Protocol):
    """What ingest and the lender's tools need from storage. Implementations: `SQLiteStore`."""

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """An exclusive write transaction: all or nothing, and no other writer in between."""

    def envelope(self, device: str, seq: int) -> StoredEnvelope | None:
        """The stored envelope (device, seq), or None."""

    def insert_envelope(self, envelope: Envelope, *, received_at: float, peer: str) -> bool:
        """Store a verified envelope with its records and gap record; False if (device, seq) is taken."""

    def quarantine(self, rejection: Refused) -> bool:
        """Keep a refused item; False if the quarantine is full (for junk: `JUNK_SHARE` of it) and it was only counted."""

    def count_refusals(self, counts: Mapping[tuple[str, int], tuple[int, float, float]]) -> None:
        """Count refusals that were not kept (junk sampled out), by (kind, reason): (how many, first, last seen)."""

    def envelopes(self, device: str) -> Iterator[StoredEnvelope]:
        """A device's stored envelopes by seq."""

    def readings(self, device: str, since: float | None = None, until: float | None = None) -> Iterator[Reading]:
        """A device's stored records with `since <= at < until`, by time."""

    def gap_records(self, device: str | None = None) -> list[GapRecord]:
        """Signed gap records, by device and seq."""

    def missing_ranges(self, device: str | None = None) -> list[MissingRange]:
        """The seqs missing between stored envelopes (and before the first, if it is not a chain start)."""

    def quarantined(self, limit: int = 100, device: str | None = None) -> list[QuarantineEntry]:
        """The most recently seen quarantine entries (of one device's envelopes, if given)."""

    def quarantine_overflow(self) -> dict[tuple[str, int], int]:
        """Rejections counted but not kept (the quarantine was full, or junk was sampled out), by (kind, reason)."""

    def quarantine_tally(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per (kind, reason): the distinct items kept, and how many refusals they stand for (their counts)."""

    def counts(self) -> StoreCounts:
        """How much is stored."""

    def add_review(self, review: Review) -> None:
        """Keep a staff member's review of a signed gap record (an audit record: never changed, never deleted)."""

    def reviews(self, device: str | None = None) -> list[Review]:
        """The reviews kept, oldest first."""

    def add_ack(self, ack: Ack) -> None:
        """Log a staff member's acknowledgement of an alarm (an alarm ack entry: the log keeps its bytes, no table)."""

    def delivery_receipt(self, device: str, seq: int) -> DeliveryReceipt | None:
        """A receipt that the stored envelope (device, seq) is in the lender's log (for a gateway's ack)."""

    def checkpoint_reference(self, device: str, seq: int) -> CheckpointReference | None:
        """Where the stored envelope (device, seq) is in the log, and the checkpoint that holds it (for a node's ack)."""

    def close(self) -> None:
        """Release the store."""


def log_alarm_ack(store, ack: Ack) -> None:
    """`add_ack` of every backend: the ack is an entry of the store's log (its bytes kept there, no other table),
    in a transaction of its own, which signs the checkpoint that holds it."""
    with store.transaction():
        if store.log is not None:
            store._in_log(lambda: store.log.alarm_ack(ack.device, ack.at, ack.seq, ack.by, ack.note, ack.alarm))


def quarantine_room(limit: int, rejection: Refused) -> int:
    """The bytes the quarantine may hold in all once `rejection` is kept: the limit for what a key vouches for,
    `JUNK_SHARE` of it for junk (so junk never takes the space evidence of an attack needs)."""
    return limit if rejection.attributable else int(limit * JUNK_SHARE)


# --- SQLite ---------------------------------------------------------------------------

def _sql_int(value: int | None) -> int | str | None:
    """SQLite integers are signed 64-bit; a larger unsigned CBOR integer is kept as its decimal text."""
    if value is None or -INT64_MAX - 1 <= value <= INT64_MAX:
        return value
    return str(value)


def _sql_number(value: int | float | None) -> int | float | str | None:
    return _sql_int(value) if type(value) is int else value


def _py_int(value: int | str | None) -> int | None:
    return int(value) if isinstance(value, str) else value


def _wrap(exc: sqlite3.Error, what: str) -> StoreError:
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError) and (
        "not a database" in str(exc) or "malformed" in str(exc)
    ):
        return StoreFormatError(f"{what}: the file is damaged or not a lender store ({exc})")
    return StoreUnavailableError(f"{what}: {exc}")


_ENVELOPE_COLUMNS = ("e.device, e.seq, e.boot, e.kid, e.digest, e.prev, e.raw, e.alarm, e.gap_reason, e.received_at,"
                     " e.peer, e.version, e.alarm_records, e.alarm_count, e.gap_count, e.token, e.binding")
_DEVICE_COLUMNS = ("device, public_key, registered_at, asset, oscore_context, oscore_id, status, revoked_at, binding,"
                   " key_since, enrolled_key, key_race, key_storage, key_storage_note")
_QUARANTINE_COLUMNS = (
    "id, kind, reason, detail, raw, size, device, seq, kid, batch_index, first_peer, last_peer,"
    " first_seen, last_seen, count"
)


def _stored(row: tuple) -> StoredEnvelope:
    (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason, received_at, peer, version, alarm_records,
     alarm_count, gap_count, token, binding) = row
    return StoredEnvelope(device, seq, boot, kid, digest, prev, raw, bool(alarm), gap_reason, received_at, peer,
                          version, bool(alarm_records), _py_int(alarm_count), _py_int(gap_count), token, binding)


def _device(row: tuple) -> Device:
    (device, public_key, registered_at, asset, oscore_context, oscore_id, status, revoked_at, binding, key_since,
     enrolled_key, key_race, key_storage, key_storage_note) = row
    return Device(
        device=device, public_key=public_key, registered_at=registered_at, asset=asset,
        oscore_context=oscore_context, oscore_id=oscore_id, status=DeviceStatus(status), revoked_at=revoked_at,
        binding=binding, key_since=key_since, enrolled_key=enrolled_key, key_race=key_race,
        rotated_key_storage=key_storage, key_storage_note=key_storage_note,
    )




def switched_device(device: Device, public_key: bytes, handover_seq: int, key_storage: str = "software",
                    note: str | None = None) -> Device:
    """`device` once a handover at `handover_seq` put `public_key` in force (checked as any registered key), the
    new key's storage `key_storage` (a note, when given, replaces the device's)."""
    import dataclasses
    return dataclasses.replace(device, public_key=public_key, algorithm=None, key_since=handover_seq,
                               enrolled_key=device.enrolled_key or device.public_key,
                               rotated_key_storage=str(getattr(key_storage, "value", key_storage)),
                               key_storage_note=note or device.key_storage_note)


class SQLiteStore:
    """The evidence store and device registry in one SQLite file (WAL). Implements `EvidenceStore`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, quarantine_limit: int, log: bool = True) -> None:
        self.path = path
        self._conn = conn
        self._depth = 0
        self.quarantine_limit = quarantine_limit
        # the transparency log, in this file and these transactions (None: off, for benchmarks that measure it)
        self.log: EvidenceLog | None = EvidenceLog(conn, lambda: lender_identity(path.parent)) if log else None
        self._log_ready = False  # the hooks run once `_prepare` made or migrated the log's tables

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike,
        *,
        create: bool = True,
        quarantine_limit: int = DEFAULT_QUARANTINE_LIMIT,
        synchronous: str = "FULL",
        log: bool = True,
    ) -> SQLiteStore:
        """Open (or, with `create`, create) the store in `data_dir`; the directory is made mode 0700.

        `log=False` keeps no transparency log: only `python -m bench evidence` does that, to measure what it costs.
        """
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        data_dir = Path(data_dir)
        path = data_dir / STORE_FILE
        if not create and not path.exists():
            raise StoreUnavailableError(
                f"no lender store at {path}: check --data, or start with `pledgewatch lender register` or `serve`"
            )
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():  # SQLite gives the -wal and -shm files the database file's mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open the lender store {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            store = cls(path, conn, quarantine_limit=quarantine_limit, log=log)
            store._prepare()
            store._log_ready = store.log is not None
        except sqlite3.Error as exc:
            conn.close()
            raise _wrap(exc, f"cannot open the lender store {path}") from exc
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        with self.transaction():
            application_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if application_id == 0 and version == 0:
                tables = self._conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
                if tables:
                    raise StoreFormatError(f"{self.path} is an SQLite file of something else, not a lender store")
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                for number in sorted(_NEW_TABLES):
                    for statement in _NEW_TABLES[number]:
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif application_id != APPLICATION_ID:
                raise StoreFormatError(f"{self.path} is not a pledgewatch lender store (application id {application_id:#x})")
            elif version > SCHEMA_VERSION:
                raise StoreFormatError(
                    f"{self.path} has schema version {version}; this program knows up to {SCHEMA_VERSION}: upgrade it"
                )
            else:
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    log.info("lender store %s: migrating to schema version %d", self.path, number)
                    for statement in _MIGRATIONS[number] + _NEW_TABLES.get(number, ()):
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version={number}")
                if version < 3 <= SCHEMA_VERSION:   # once the registry has every column it reads (same transaction)
                    self._backfill_log()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot write to {self.path}") from exc
        self._depth = 1
        try:
            if self._log_ready:
                self._in_log(self.log.begin)
            yield
            if self._log_ready:
                self._in_log(self.log.seal)  # the new head's checkpoint commits with the entries, or neither does
        except BaseException:
            self._depth = 0
            if self.log is not None:
                self.log.abandon()
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back by itself (disk full)
                self._conn.execute("ROLLBACK")
            if self._log_ready:
                with contextlib.suppress(sqlite3.Error, StoreError):  # else it is read at the next transaction
                    self.log.load()
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.log is not None:
                self.log.abandon()
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise _wrap(exc, f"cannot commit to {self.path}") from exc

    def _in_log(self, step) -> None:
        try:
            step()
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot write the evidence log in {self.path}") from exc
        except DurableError as exc:  # the signing key: nothing is stored unless its checkpoint can be signed
            raise StoreUnavailableError(f"cannot sign the evidence log's checkpoint: {exc}") from exc

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot read {self.path}") from exc

    @property
    def data_dir(self) -> Path:
        """The lender's data directory (the store's file is in it), as PostgresStore names its own."""
        return self.path.parent

    # --- registry ---

    def registry_generation(self) -> int:
        return self._query("SELECT value FROM meta WHERE key = 'registry_generation'")[0][0]

    def _bump_generation(self) -> None:
        self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'registry_generation'")

    def device(self, device_id: str) -> Device | None:
        rows = self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device = ?", (device_id,))
        return _device(rows[0]) if rows else None

    def device_by_kid(self, kid: bytes) -> Device | None:
        rows = self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE kid = ?", (kid,))
        return _device(rows[0]) if rows else None

    def devices(self) -> list[Device]:
        return [_device(row) for row in self._query(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device")]

    def add_device(self, device: Device, enrollment: EnrollmentEvidence | None = None) -> None:
        try:
            with self.transaction():
                self._conn.execute(
                    "INSERT INTO devices (device, public_key, kid, asset, oscore_context, oscore_id, status,"
                    " registered_at, revoked_at, binding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device.device, device.public_key, device.kid, device.asset, device.oscore_context,
                     device.oscore_id, device.status.value, device.registered_at, device.revoked_at, device.binding),
                )
                self._bump_generation()
                if self.log is not None:
                    self.log.registration(device.device, device.registered_at, device.public_key, device.asset,
                                          device.binding, enrollment)
                    if not device.active:
                        self.log.revocation(device.device, device.revoked_at or device.registered_at)
        except sqlite3.IntegrityError as exc:
            raise DeviceExistsError(
                f"device {device.device} or its key (kid {device.kid.hex()}) is registered already"
            ) from exc
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot register {device.device} in {self.path}") from exc

    def set_revoked(self, device_id: str, at: float) -> Device:
        try:
            with self.transaction():
                revoked = self._conn.execute(
                    "UPDATE devices SET status = 'revoked', revoked_at = ? WHERE device = ? AND status = 'active'",
                    (at, device_id),
                ).rowcount
                if revoked and self.log is not None:
                    self.log.revocation(device_id, at)
                self._bump_generation()
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot revoke {device_id} in {self.path}") from exc
        device = self.device(device_id)
        if device is None:
            raise UnknownDeviceError(f"no device {device_id!r} is registered")
        return device

    def bind(self, device_id: str, binding: bytes, enrollment: EnrollmentEvidence | None = None,
             *, at: float | None = None) -> Device:
        try:
            with self.transaction():
                bound = self._conn.execute("UPDATE devices SET binding = ? WHERE device = ? AND binding IS NULL",
                                           (binding, device_id)).rowcount
                if bound and enrollment is not None and self.log is not None:
                    self.log.enrollment(device_id, time.time() if at is None else at, binding, enrollment)
                self._bump_generation()
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot bind {device_id} in {self.path}") from exc
        device = self.device(device_id)
        if device is None:
            raise UnknownDeviceError(f"no device {device_id!r} is registered")
        return device

    def retired_keys(self, device_id: str | None = None) -> list[RetiredKey]:
        where, params = (" WHERE device = ?", (device_id,)) if device_id is not None else ("", ())
        return [RetiredKey(*row) for row in self._query(
            f"SELECT {_RETIRED_COLUMNS} FROM retired_keys{where} ORDER BY device, through_seq", params)]

    def switch_key(self, device_id: str, public_key: bytes, handover_seq: int, command_digest: bytes,
                   at: float, *, key_storage: str = "software", note: str | None = None) -> Device:
        device = self.device(device_id)
        if device is None:
            raise UnknownDeviceError(f"no device {device_id!r} is registered")
        switched = switched_device(device, public_key, handover_seq, key_storage, note)
        try:
            with self.transaction():
                if self._conn.execute("SELECT 1 FROM retired_keys WHERE kid = ?", (switched.kid,)).fetchone():
                    raise sqlite3.IntegrityError("a retired key")
                self._conn.execute(f"INSERT INTO retired_keys (kid, {_RETIRED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                                   (device.kid, device_id, device.public_key, handover_seq, at, command_digest))
                self._conn.execute("UPDATE devices SET public_key = ?, kid = ?, key_since = ?, enrolled_key = ?,"
                                   " key_storage = ?, key_storage_note = ? WHERE device = ?",
                                   (switched.public_key, switched.kid, handover_seq, switched.enrolled_key,
                                    switched.rotated_key_storage, switched.key_storage_note, device_id))
                self._bump_generation()
        except sqlite3.IntegrityError as exc:
            raise DeviceExistsError(f"the key {switched.kid.hex()} {device_id} hands over to is registered "
                                    "already") from exc
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot switch {device_id}'s key in {self.path}") from exc
        return switched

    def flag_key_race(self, device_id: str, detail: str) -> None:
        try:
            with self.transaction():
                self._conn.execute("UPDATE devices SET key_race = ? WHERE device = ? AND key_race IS NULL",
                                   (detail, device_id))
                self._bump_generation()
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot flag {device_id} in {self.path}") from exc

    # --- envelopes ---

    def envelope(self, device: str, seq: int) -> StoredEnvelope | None:
        rows = self._query(f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes e WHERE device = ? AND seq = ?", (device, seq))
        return _stored(rows[0]) if rows else None

    def insert_envelope(self, envelope: Envelope, *, received_at: float, peer: str) -> bool:
        if envelope.seq > INT64_MAX or envelope.boot > INT64_MAX:
            raise ValueError("seq and boot above 2**63-1 cannot be stored (ingest refuses them first)")
        try:
            if self._depth:  # inside the caller's transaction (ingest's batch): no nested context to enter
                return self._insert_envelope(envelope, received_at, peer)
            with self.transaction():
                return self._insert_envelope(envelope, received_at, peer)
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot store {envelope.device} seq {envelope.seq} in {self.path}") from exc

    def _insert_envelope(self, envelope: Envelope, received_at: float, peer: str) -> bool:
        gap, counters = envelope.gap, envelope.counters
        index = None if self.log is None else self.log.size
        inserted = self._conn.execute(
            "INSERT INTO envelopes (device, seq, boot, kid, digest, prev, raw, alarm, gap_reason,"
            " received_at, peer, version, alarm_records, alarm_count, gap_count, token, binding, log_index)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (device, seq) DO NOTHING",
            (envelope.device, envelope.seq, envelope.boot, envelope.kid, envelope.digest, envelope.prev,
             envelope.raw, int(envelope.alarm), None if gap is None else gap.reason, received_at,
             peer, envelope.version, int(carries_alarm(envelope.records)),
             None if counters is None else _sql_int(counters.alarms),
             None if counters is None else _sql_int(counters.gaps), envelope.token, envelope.binding, index),
        ).rowcount
        if not inserted:
            return False
        if self.log is not None:
            self.log.append_envelope(envelope.device, envelope.seq, received_at, envelope.raw)
        self._conn.executemany(
            "INSERT INTO records (device, seq, idx, name, value, string, boolean, data, sum, unit, time, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (envelope.device, envelope.seq, index, r.name, _sql_number(r.value), r.string,
                 None if r.boolean is None else int(r.boolean), r.data, _sql_number(r.sum), r.unit,
                 _sql_number(r.time), float(r.time) if r.time is not None else received_at)
                for index, r in enumerate(envelope.records)
            ],
        )
        if gap is not None:
            self._conn.execute(
                "INSERT INTO gap_records (device, seq, reason, first_seq, last_seq, count)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (envelope.device, envelope.seq, gap.reason, _sql_int(gap.first), _sql_int(gap.last),
                 _sql_int(gap.count)),
            )
        return True

    def envelopes(self, device: str) -> Iterator[StoredEnvelope]:
        try:
            cursor = self._conn.execute(
                f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes e WHERE device = ? ORDER BY seq", (device,))
            for row in cursor:
                yield _stored(row)
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot read {self.path}") from exc

    def envelope_devices(self) -> list[str]:
        """Every device with at least one stored envelope (registered or not any more)."""
        return [row[0] for row in self._query("SELECT DISTINCT device FROM envelopes ORDER BY device")]

    def readings(self, device: str, since: float | None = None, until: float | None = None) -> Iterator[Reading]:
        sql = ("SELECT device, seq, idx, name, value, string, boolean, data, sum, unit, time, at FROM records"
               " WHERE device = ? AND at >= ? AND at < ? ORDER BY at, seq, idx")
        params = (device, float("-inf") if since is None else since, float("inf") if until is None else until)
        try:
            for row in self._conn.execute(sql, params):
                device_id, seq, index, name, value, string, boolean, data, total, unit, at_time, at = row
                yield Reading(
                    device_id, seq, index, name, _py_int(value), string, None if boolean is None else bool(boolean),
                    data, _py_int(total), unit, _py_int(at_time), at,
                )
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot read {self.path}") from exc

    def records_named(self, device: str | None, *, names: tuple[str, ...] = (), prefixes: tuple[str, ...] = (),
                      newest_first: bool = False, limit: int | None = None) -> list[Reading]:
        """Stored records called one of `names` or starting with one of `prefixes`, by device and seq (lender.evidence.alarms)."""
        if not names and not prefixes:
            return []
        # GLOB, not LIKE: "_" is a LIKE wildcard and legal in SenML names; GLOB's * ? [ are not legal there
        match = " OR ".join(["name = ?"] * len(names) + ["name GLOB ?"] * len(prefixes))
        params: list = [*names, *(prefix.replace("[", "[[]") + "*" for prefix in prefixes)]
        where = f"({match})" + (" AND device = ?" if device is not None else "")
        params += [device] if device is not None else []
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT device, seq, idx, name, value, string, boolean, data, sum, unit, time, at FROM records"
               f" WHERE {where} ORDER BY device {order}, seq {order}, idx" + (" LIMIT ?" if limit is not None else ""))
        rows = self._query(sql, params + ([limit] if limit is not None else []))
        return [Reading(d, seq, index, name, _py_int(value), string, None if boolean is None else bool(boolean), data,
                        _py_int(total), unit, _py_int(at_time), at)
                for d, seq, index, name, value, string, boolean, data, total, unit, at_time, at in rows]

    def record_times(self, device: str) -> dict[int, tuple[float, float]]:
        """seq -> (earliest, latest) time the device put on the records of that envelope (those with a time)."""
        rows = self._query("SELECT seq, min(time), max(time) FROM records WHERE device = ? AND time IS NOT NULL"
                           " GROUP BY seq", (device,))
        return {seq: (float(low), float(high)) for seq, low, high in rows
                if isinstance(low, (int, float)) and isinstance(high, (int, float))}

    def last_received(self, device: str) -> tuple[int, float] | None:
        """The highest stored seq of `device` and when the newest envelope arrived, or None."""
        (seq, received), = self._query("SELECT max(seq), max(received_at) FROM envelopes WHERE device = ?", (device,))
        return None if seq is None else (seq, received)

    def gap_records(self, device: str | None = None) -> list[GapRecord]:
        sql = "SELECT device, seq, reason, first_seq, last_seq, count FROM gap_records"
        rows = self._query(sql + (" WHERE device = ?" if device else "") + " ORDER BY device, seq",
                           (device,) if device else ())
        return [GapRecord(d, s, r, _py_int(f), _py_int(l), _py_int(c)) for d, s, r, f, l, c in rows]

    def missing_ranges(self, device: str | None = None) -> list[MissingRange]:
        where = " WHERE device = ?" if device else ""
        params = (device,) if device else ()
        ranges = []
        # Before the lowest stored seq: missing unless that envelope starts the chain (links to genesis).
        for dev, seq, prev, gap_reason in self._query(
            "SELECT e.device, e.seq, e.prev, e.gap_reason FROM envelopes e JOIN"
            f" (SELECT device, min(seq) AS seq FROM envelopes{where} GROUP BY device) AS lowest"
            " ON e.device = lowest.device AND e.seq = lowest.seq", params,
        ):
            if prev != GENESIS:
                ranges.append(MissingRange(dev, None, seq - 1))
        for dev, seq, following in self._query(
            "SELECT device, seq, following FROM (SELECT device, seq,"
            f" lead(seq) OVER (PARTITION BY device ORDER BY seq) AS following FROM envelopes{where})"
            " WHERE following > seq + 1", params,
        ):
            ranges.append(MissingRange(dev, seq + 1, following - 1))
        ranges.sort(key=lambda r: (r.device, -1 if r.first is None else r.first))
        return ranges

    # --- quarantine ---

    def quarantine(self, rejection: Refused) -> bool:
        raw = bytes(rejection.raw)
        fingerprint = hashlib.sha256(raw).digest()
        now, kind, reason = rejection.received_at, rejection.kind, int(rejection.reason)
        try:
            with self.transaction():
                repeated = self._conn.execute(
                    "UPDATE quarantine SET count = count + 1, last_seen = max(last_seen, ?), last_peer = ?"
                    " WHERE fingerprint = ? AND reason = ? AND kind = ?",
                    (now, rejection.peer, fingerprint, reason, kind),
                ).rowcount
                if repeated:
                    return True
                used = self._conn.execute("SELECT value FROM meta WHERE key = 'quarantine_bytes'").fetchone()[0]
                if used + len(raw) > quarantine_room(self.quarantine_limit, rejection):
                    self._count_overflow(kind, reason, 1, now, now)
                    return False
                self._conn.execute(
                    "INSERT INTO quarantine (kind, reason, detail, raw, fingerprint, size, device, seq, kid,"
                    " batch_index, first_peer, last_peer, first_seen, last_seen, count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (kind, reason, rejection.detail, raw, fingerprint,
                     len(raw) if rejection.size is None else rejection.size, rejection.device,
                     _sql_int(rejection.seq), rejection.kid, rejection.batch_index, rejection.peer, rejection.peer,
                     now, now),
                )
                self._conn.execute("UPDATE meta SET value = value + ? WHERE key = 'quarantine_bytes'", (len(raw),))
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot write the quarantine in {self.path}") from exc
        return True

    def _count_overflow(self, kind: str, reason: int, count: int, first: float, last: float) -> None:
        self._conn.execute(
            "INSERT INTO quarantine_overflow (kind, reason, count, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, reason) DO UPDATE SET count = count + excluded.count,"
            " first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)",
            (kind, reason, count, first, last),
        )

    def count_refusals(self, counts: Mapping[tuple[str, int], tuple[int, float, float]]) -> None:
        try:
            with self.transaction():
                for (kind, reason), (count, first, last) in counts.items():
                    self._count_overflow(kind, int(reason), count, first, last)
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot count refusals in {self.path}") from exc

    def quarantine_tally(self) -> dict[tuple[str, int], tuple[int, int]]:
        return {(kind, reason): (items, count) for kind, reason, items, count in self._query(
            "SELECT kind, reason, count(*), sum(count) FROM quarantine GROUP BY kind, reason ORDER BY kind, reason")}

    def quarantined(self, limit: int = 100, device: str | None = None) -> list[QuarantineEntry]:
        where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
        rows = self._query(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine {where} ORDER BY last_seen DESC, id DESC"
                           " LIMIT ?", (*params, limit))
        return [
            QuarantineEntry(i, kind, Reason(reason), detail, raw, size, device, _py_int(seq), kid, index,
                            first_peer, last_peer, first_seen, last_seen, count)
            for (i, kind, reason, detail, raw, size, device, seq, kid, index, first_peer, last_peer,
                 first_seen, last_seen, count) in rows
        ]

    def quarantine_overflow(self) -> dict[tuple[str, int], int]:
        return {(kind, reason): count for kind, reason, count in
                self._query("SELECT kind, reason, count FROM quarantine_overflow ORDER BY kind, reason")}

    def add_review(self, review: Review) -> None:
        try:
            with self.transaction():
                self._conn.execute("INSERT INTO reviews (device, seq, reviewer, note, at) VALUES (?, ?, ?, ?, ?)",
                                   (review.device, review.seq, review.reviewer, review.note, review.at))
                if self.log is not None:
                    self.log.review(review.device, review.at, review.seq, review.reviewer, review.note)
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot keep the review in {self.path}") from exc

    def reviews(self, device: str | None = None) -> list[Review]:
        where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
        return [Review(*row) for row in self._query(
            f"SELECT device, seq, reviewer, note, at FROM reviews {where} ORDER BY id", params)]

    def add_ack(self, ack: Ack) -> None:
        log_alarm_ack(self, ack)

    # --- the lender's commands (lender.evidence.commands) ---

    def add_command(self, device: str, make: Callable[[int], IssuedCommand]) -> IssuedCommand:
        """Keep the command `make(seq)` builds for the device's next command seq, in one transaction."""
        try:
            with self.transaction():
                (last,), = self._conn.execute("SELECT coalesce(max(seq), 0) FROM commands WHERE device = ?",
                                              (device,)).fetchall()
                command = make(last + 1)
                self._conn.execute(
                    "INSERT INTO commands (device, seq, kind, issued_at, expires, issuer, raw, digest, nonce)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (command.device, command.seq, command.kind, command.issued_at, command.expires, command.issuer,
                     command.raw, command.digest, command.nonce))
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot keep the command in {self.path}") from exc
        return command

    def issued_commands(self, device: str | None = None) -> list[IssuedCommand]:
        """The commands kept, by device and seq."""
        where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
        return [IssuedCommand(*row) for row in self._query(
            "SELECT device, seq, kind, issued_at, expires, issuer, raw, digest, nonce, delivered_at FROM commands"
            f" {where} ORDER BY device, seq", params)]

    def mark_delivered(self, device: str, seq: int, at: float) -> None:
        """Note when a command was first handed to its device."""
        try:
            with self.transaction():
                self._conn.execute("UPDATE commands SET delivered_at = ? WHERE device = ? AND seq = ?"
                                   " AND delivered_at IS NULL", (at, device, seq))
        except sqlite3.Error as exc:
            raise _wrap(exc, f"cannot write to {self.path}") from exc

    # --- the transparency log (lender.evidence.log) ---

    def delivery_receipt(self, device: str, seq: int) -> DeliveryReceipt | None:
        row = self._logged_envelope(device, seq)
        return None if row is None else self.log.delivery_receipt(row[0], seq, row[1])

    def checkpoint_reference(self, device: str, seq: int) -> CheckpointReference | None:
        row = self._logged_envelope(device, seq)
        return None if row is None else self.log.checkpoint_reference(row[0])

    def _logged_envelope(self, device: str, seq: int) -> tuple[int, float] | None:
        if self.log is None or self.log.latest is None:
            return None
        rows = self._query("SELECT log_index, received_at FROM envelopes WHERE device = ? AND seq = ?", (device, seq))
        return rows[0] if rows and rows[0][0] is not None else None

    def checkpoint(self) -> SignedCheckpoint:
        """The latest signed checkpoint, signing one if the log has none for its current head yet (another
        process's appends count: the log is read afresh)."""
        if self.log is None:
            raise StoreUnavailableError(f"{self.path} was opened without its evidence log")
        with self.transaction():
            return self.log.checkpoint_now()

    def _backfill_log(self) -> None:
        """Migration to schema 3: log what the store held before it kept a log, in the order it happened."""
        if self.log is None:
            return
        events = []  # (lender time, order among simultaneous events, append)
        for device in self.devices():
            events.append((device.registered_at, 0, lambda d=device: self.log.registration(
                d.device, d.registered_at, d.public_key, d.asset, d.binding, None)))
            if device.revoked_at is not None:
                events.append((device.revoked_at, 2, lambda d=device: self.log.revocation(d.device, d.revoked_at)))
        for rowid, device, seq, raw, received_at in self._conn.execute(
                "SELECT id, device, seq, raw, received_at FROM envelopes ORDER BY id").fetchall():
            def append(rowid=rowid, device=device, seq=seq, raw=raw, received_at=received_at) -> None:
                index = self.log.append_envelope(device, seq, received_at, raw)
                self._conn.execute("UPDATE envelopes SET log_index = ? WHERE id = ?", (index, rowid))
            events.append((received_at, 1, append))
        for review in self.reviews():
            events.append((review.at, 1, lambda r=review: self.log.review(r.device, r.at, r.seq, r.reviewer, r.note)))
        self.log.load()
        for _, _, append in sorted(events, key=lambda event: event[:2]):
            append()
        self.log.seal()
        log.info("lender store %s: logged %d earlier envelopes and registry events", self.path, len(events))

    def counts(self) -> StoreCounts:
        (devices, envelopes, records, quarantined, overflow), = self._query(
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM envelopes),"
            " (SELECT count(*) FROM records), (SELECT count(*) FROM quarantine),"
            " (SELECT coalesce(sum(count), 0) FROM quarantine_overflow)")
        return StoreCounts(devices, envelopes, records, quarantined, overflow)


@dataclass(frozen=True, slots=True)
class GapFinding:
    """A missing range and what the device's signed gap records say about it."""

    missing: MissingRange
    explained_by: GapRecord | None          # a gap record that covers the whole range
    partly_explained_by: tuple[GapRecord, ...] = ()  # gap records that cover part of it

    @property
    def explained(self) -> bool:
        return self.explained_by is not None


def explain_gaps(missing: list[MissingRange], records: list[GapRecord]) -> list[GapFinding]:
    """Match each missing range with the signed gap records of its device (pure)."""
    by_device: dict[str, list[GapRecord]] = {}
    for record in records:
        by_device.setdefault(record.device, []).append(record)
    findings = []
    for gap in missing:
        whole, part = None, []
        for record in by_device.get(gap.device, ()):
            if record.first is None or record.last is None:
                continue
            low = gap.first if gap.first is not None else -1
            if gap.first is not None and record.first <= gap.first and gap.last <= record.last:
                whole = whole or record
            elif record.first <= gap.last and low <= record.last:
                part.append(record)
        findings.append(GapFinding(gap, whole, tuple(part)))
    return findings
