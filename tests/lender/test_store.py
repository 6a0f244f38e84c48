"""The lender's SQLite evidence store: what it refuses to open, how it protects its file, what it keeps."""
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
    store._conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreFormatError, match="schema version 99"):
        SQLiteStore.open(data_dir)


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
    # a real SQLite failure in the middle of the batch's transaction, after two envelopes went in
    store._conn.execute("CREATE TEMP TRIGGER fail_at_three BEFORE INSERT ON records WHEN NEW.seq = 3"
                        " BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END")
    ingest = Ingest(store)
    with pytest.raises(StoreUnavailableError, match="simulated write failure"):
        ingest.batch(batch(envelopes), peer="t")
    assert store.counts().envelopes == 0 and store.counts().records == 0
    store._conn.execute("DROP TRIGGER fail_at_three")
    assert ingest.batch(batch(envelopes), peer="t").stored == (1, 2, 3, 4, 5)
