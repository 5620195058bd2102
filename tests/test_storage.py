"""The SQLite storage: accounts, stores, transactions and the file itself."""

import os
import sqlite3

import pytest

from chatnet.durable.storage import MEMORY, AccountExists, NoSuchAccount, Storage, StorageError


@pytest.fixture
def storage(tmp_path):
    store = Storage(str(tmp_path / "s.db"))
    store.add_accounts([("alice", "rec-a"), ("bob", "rec-b")])
    yield store
    store.close()


def test_accounts_are_added_together_or_not_at_all(storage):
    with pytest.raises(AccountExists):
        storage.add_accounts([("carol", "x"), ("alice", "y")])
    assert [row[0] for row in storage.accounts()] == ["alice", "bob"]
    assert storage.existing_ids(["alice", "carol", "zed"]) == {"alice"}


def test_password_records_and_lookups(storage):
    assert storage.password_record("alice") == "rec-a"
    assert storage.password_record("nobody") is None
    storage.set_password("alice", "new")
    assert storage.password_record("alice") == "new"
    with pytest.raises(NoSuchAccount):
        storage.set_password("nobody", "x")
    assert storage.look_up("bob")[:2] == (True, 0)
    assert storage.look_up("nobody")[:2] == (False, 0)


def test_stores_keep_order_and_exact_text(storage):
    texts = ["first".encode(), "한국어 🙂".encode(), b"nul\0inside", b""]
    for text in texts:
        storage.store_message("bob", "alice", text)
    storage.commit()
    stored = storage.stored_messages("bob")
    assert [text for _, _, text in stored] == texts
    assert {sender for _, sender, _ in stored} == {"alice"}
    assert storage.look_up("bob")[:2] == (True, 4)
    storage.delete_stored([row_id for row_id, _, _ in stored[:2]])
    storage.commit()
    assert [text for _, _, text in storage.stored_messages("bob")] == texts[2:]


def test_writes_are_grouped_until_commit_and_a_rollback_undoes_them(tmp_path, storage):
    storage.store_message("bob", "alice", b"pending")
    assert storage.in_transaction
    other = sqlite3.connect(storage.path)
    assert other.execute("SELECT count(*) FROM stored_messages").fetchone() == (0,)
    storage.rollback()
    assert not storage.in_transaction and storage.stored_messages("bob") == []
    storage.store_message("bob", "alice", b"kept")
    storage.commit()
    assert other.execute("SELECT count(*) FROM stored_messages").fetchone() == (1,)
    other.close()


def test_removing_an_account_removes_its_store(storage):
    storage.store_message("bob", "alice", b"for bob")
    storage.commit()
    storage.remove_account("bob")
    assert storage.look_up("bob")[:2] == (False, 0)
    with pytest.raises(NoSuchAccount):
        storage.remove_account("bob")


def test_a_message_for_an_unknown_account_is_refused(storage):
    with pytest.raises(sqlite3.IntegrityError):
        storage.store_message("nobody", "alice", b"x")
    storage.rollback()


def test_the_file_is_private_and_in_wal_mode(storage):
    assert os.stat(storage.path).st_mode & 0o077 == 0
    with sqlite3.connect(storage.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_close_checkpoints_the_wal(tmp_path):
    path = str(tmp_path / "c.db")
    store = Storage(path)
    store.add_accounts([("alice", "r")])
    store.close()
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0


def test_one_server_per_file(storage):
    storage.lock_for_server()
    second = Storage(storage.path)
    try:
        with pytest.raises(StorageError, match="in use"):
            second.lock_for_server()
    finally:
        second.close()


def test_a_database_from_a_newer_chatnet_is_refused(tmp_path):
    path = str(tmp_path / "new.db")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="newer chatnet"):
        Storage(path)


def test_memory_databases_work_for_the_demo():
    store = Storage(MEMORY)
    store.add_accounts([("alice", "r")])
    store.lock_for_server()                    # nothing to lock
    assert store.account_count() == 1
    store.close()


class _CheckpointFails(object):
    """Wraps a sqlite3 connection; the WAL checkpoint fails as on a full or read-only disk."""

    def __init__(self, real):
        self._real = real

    def execute(self, sql, *parameters):
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("disk I/O error")
        return self._real.execute(sql, *parameters)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_failed_checkpoint_at_close_is_a_warning_not_an_error(tmp_path, caplog):
    store = Storage(str(tmp_path / "full.db"))
    store._db = _CheckpointFails(store._db)
    store.close()                                  # must not raise
    assert "checkpoint" in caplog.text and "WARNING" in caplog.text
