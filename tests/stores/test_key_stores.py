"""One contract for every key store, run on SQLite and on PostgreSQL: hashed keys, constant-time
matching, revocation, and failing closed (required once a key was made, even with every key revoked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from limner.stores.keys import KeyStore, SqliteKeyStore, open_key_store
from limner.stores.keys.base import KeyDatabaseError
from tests.support.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    if request.param == "sqlite":
        return open_key_store(tmp_path)
    return open_key_store(tmp_path, fresh_database(request.getfixturevalue("postgres")))


def test_a_fresh_store_requires_no_key(store: KeyStore) -> None:
    assert store.snapshot() is None and not store.required() and store.list() == []
    assert store.check() is None


def test_create_match_and_revoke(store: KeyStore) -> None:
    record, secret = store.create("ci")
    assert secret.startswith("lim-") and record.name == "ci" and store.required()
    hashes = store.snapshot()
    assert hashes is not None and secret not in hashes  # only the hash is kept
    assert KeyStore.matches(secret, hashes) == record.id and KeyStore.matches(secret + "x", hashes) is None
    assert [k.id for k in store.list()] == [record.id]
    assert store.revoke(record.id) and not store.revoke(record.id)
    assert store.snapshot() == {} and store.required()  # every key revoked: closed, never open
    assert store.list()[0].revoked_at is not None


def test_it_names_itself_and_the_command_that_makes_a_key(store: KeyStore) -> None:
    assert "limner keys create --name NAME" in store.create_command
    store.create()
    assert "password" not in store.where and store.exists()


def test_stores_are_separate_implementations_of_one_protocol() -> None:
    from limner.stores.keys.postgres import PostgresKeyStore

    for implementation in (SqliteKeyStore, PostgresKeyStore):
        assert implementation.__mro__[1] is KeyStore  # neither backend subclasses the other


def test_an_unreachable_database_fails_closed(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    store = open_key_store(tmp_path, "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(KeyDatabaseError):
        store.snapshot()
    assert store.check() is not None
