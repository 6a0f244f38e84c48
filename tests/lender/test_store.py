"""The lender's evidence store, SQLite and PostgreSQL alike: what it refuses to open, how it protects its file, what it keeps."""
from __future__ import annotations

import sqlite3
import stat

import pytest
from tests.kit.lender import Device, batch, enroll

from lender.exc import DeviceExistsError, StoreError, StoreFormatError, StoreUnavailableError
from lender.evidence.ingest import Ingest
from lender.evidence.registry import Device as RegisteredDevice
from lender.evidence.store import STORE_FILE, SQLiteStore
from telemetry.envelope import Gap
from tests.kit.stores import another, failing_record_insert, set_schema_version

pytestmark = pytest.mark.backends


@pytest.mark.backends("sqlite")
def test_the_store_file_and_directory_are_private(data_dir, store):
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / STORE_FILE).stat().st_mode) == 0o600
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_sqlite_file_of_something_else_is_not_touched(tmp_path):
    path = tmp_path / STORE_FILE
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(StoreFormatError, match="something else"):
        SQLiteStore.open(tmp_path)
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT name FROM sqlite_schema").fetchall() == [("accounts",)]


def test_a_file_that_is_not_sqlite_is_refused_as_damaged(tmp_path):
    (tmp_path / STORE_FILE).write_bytes(b"this is not a database, just text" * 100)
    with pytest.raises(StoreFormatError, match="damaged or not a lender store"):
        SQLiteStore.open(tmp_path)


def test_a_store_from_a_newer_version_is_refused(data_dir, store):
    set_schema_version(store, 99)
    with pytest.raises(StoreFormatError, match="schema version 99"):
        another(store, data_dir)


def test_opening_a_missing_store_for_reading_says_where_it_looked(tmp_path):
    with pytest.raises(StoreUnavailableError, match="no lender store at") as caught:
        SQLiteStore.open(tmp_path / "nowhere", create=False)
    assert isinstance(caught.value, (StoreError, OSError))
    assert not (tmp_path / "nowhere").exists()


def test_a_key_belongs_to_one_device(store):
    key = bytes(range(32))
    store.add_device(RegisteredDevice("gw-a", key, registered_at=1.0))
    with pytest.raises(DeviceExistsError):
        store.add_device(RegisteredDevice("gw-b", key, registered_at=2.0))


def test_every_registry_change_moves_the_generation(data_dir, store):
    before = store.registry_generation()
    enroll(store, data_dir, Device("gw-a"))
    store.set_revoked("gw-a", 5.0)
    assert store.registry_generation() == before + 2


def test_gap_record_fields_beyond_sqlite_integers_are_kept_exactly(data_dir, store):
    device = Device("gw-a")
    enroll(store, data_dir, device)
    huge = (1 << 64) - 1
    Ingest(store).batch(batch([device.next(gap=Gap("overflow", first=2, last=huge, count=huge - 1))]), peer="t")
    (record,) = store.gap_records("gw-a")
    assert (record.first, record.last, record.count) == (2, huge, huge - 1)


def test_a_batch_that_fails_half_way_leaves_nothing_half_written(data_dir, store):
    device = Device("gw-a")
    enroll(store, data_dir, device)
    envelopes = device.chain(5)
    ingest = Ingest(store)
    # a real database failure in the middle of the batch's transaction, after two envelopes went in
    with failing_record_insert(store, seq=3) as message:
        with pytest.raises(StoreUnavailableError, match=message):
            ingest.batch(batch(envelopes), peer="t")
        assert store.counts().envelopes == 0 and store.counts().records == 0
        assert store.checkpoint().checkpoint.tree_size == 1  # the registration alone: no entry of the batch
    assert ingest.batch(batch(envelopes), peer="t").stored == (1, 2, 3, 4, 5)
    assert store.log.audit().ok


# --- PostgreSQL only: what a shared database adds ----------------------------------------------

def test_a_postgresql_database_of_something_else_is_refused_untouched(postgres, tmp_path):
    import psycopg

    from lender.evidence.postgres import PostgresStore

    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("CREATE TABLE accounts (id integer)")
    with pytest.raises(StoreFormatError, match="something else"):
        PostgresStore.open(url, tmp_path)
    with psycopg.connect(url) as other:
        assert other.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall() == [
            ("accounts",)]


def test_postgresql_migrations_are_numbered_and_applied_only_by_migrate(postgres, tmp_path, monkeypatch):
    from lender.evidence import postgres as backend

    url = postgres.database()
    backend.PostgresStore.open(url, tmp_path).close()  # an empty database gets the whole schema at once
    later = backend.SCHEMA_VERSION + 1
    monkeypatch.setitem(backend.MIGRATIONS, later, ("a later version", ("ALTER TABLE devices ADD COLUMN note text",)))
    monkeypatch.setattr(backend, "SCHEMA_VERSION", later)
    with pytest.raises(StoreFormatError, match="lender migrate"):
        backend.PostgresStore.open(url, tmp_path)
    with backend.PostgresStore(url, tmp_path, quarantine_limit=1) as store:
        assert store.migrate() == [later]
        assert store.migrate() == []  # re-run: nothing left to do
    with backend.PostgresStore.open(url, tmp_path) as store:
        assert store.schema_version() == later


def test_envelopes_go_to_the_partition_of_their_arrival_month_made_when_first_needed(postgres, tmp_path):
    from lender.evidence.postgres import PostgresStore

    with PostgresStore.open(postgres.database(), tmp_path) as store:
        device = Device("gw-a")
        enroll(store, tmp_path, device)
        later = 4102444800.0 + 86400 * 40  # February 2100: no partition is made that far ahead
        Ingest(store, clock=lambda: later).batch(batch(device.chain(3)), peer="t")
        assert "envelopes_2100_02" in store.partitions()
        rows = store.connection().execute(
            "SELECT tableoid::regclass::text, count(*) FROM envelopes GROUP BY 1").fetchall()
        assert rows == [("envelopes_2100_02", 3)]
        assert [e.seq for e in store.envelopes("gw-a")] == [1, 2, 3] and store.log.audit().ok


def test_writers_taking_turns_keep_one_log_each_catching_up_with_what_the_other_appended(data_dir, store):
    gateways = [Device("gw-a"), Device("gw-b"), Device("gw-c")]
    for gateway in gateways:
        enroll(store, data_dir, gateway)
    with another(store, data_dir) as other:
        ingests = [Ingest(store), Ingest(other)]
        for turn in range(7):  # every turn finds the log grown by the other writer (a new device on turn 6)
            gateway = gateways[2] if turn == 6 else gateways[turn % 2]
            assert ingests[turn % 2].batch(batch(gateway.chain(3)), peer="t").stored
        heads = [s.checkpoint().checkpoint for s in (store, other)]
        with another(store, data_dir) as fresh:  # reads the whole log from the database
            truth = fresh.checkpoint().checkpoint
            assert fresh.log.audit().ok
        for head in heads:
            assert (head.tree_size, head.root, head.heads_root, head.heads_size) == (
                truth.tree_size, truth.root, truth.heads_root, truth.heads_size)
