"""API keys: SQLite in the data dir (the default) or PostgreSQL shared by replicas (`keys_url`)."""

from __future__ import annotations

from pathlib import Path

from limner.stores.keys.base import KeyDatabaseError, KeyRecord, KeyStore
from limner.stores.keys.sqlite import SqliteKeyStore


def open_key_store(data_dir: Path, url: str | None = None) -> KeyStore:
    """SQLite under the data dir (the default), or PostgreSQL when `url` (keys_url) names one."""
    if url:
        from limner.stores.keys.postgres import PostgresKeyStore

        return PostgresKeyStore(url)
    return SqliteKeyStore(data_dir / "keys.sqlite3")


__all__ = ["KeyDatabaseError", "KeyRecord", "KeyStore", "SqliteKeyStore", "open_key_store"]
