"""API keys in PostgreSQL, for servers and replicas that share one set of keys (`keys_url`).

The key store's contract (base.py): SHA-256 hashes, constant-time checks, and failing closed. "Keys are
required" is a row in `limner_meta`, written with the first key, so revoking every key leaves the
servers closed; a database that cannot be reached is KeyDatabaseError (a 503
while serving, a one-line error at start-up). psycopg is imported only when this store is configured.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from limner.stores import postgres
from limner.stores.keys.base import KeyDatabaseError, KeyRecord, KeyStore, new_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS limner_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hint TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE IF NOT EXISTS limner_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class PostgresKeyStore(KeyStore):
    kind = "postgresql"

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._psycopg = postgres.psycopg_for("keys_url", url)
        self.url = url
        self.timeout = timeout
        self._ready = False

    def exists(self) -> bool:
        return True  # the table is made on first use; an unreachable server raises KeyDatabaseError

    @property
    def where(self) -> str:
        return postgres.where(self._psycopg, self.url)

    @property
    def create_command(self) -> str:
        return "limner keys create --name NAME --keys-url $LIMNER_KEYS_URL"

    @contextmanager
    def _db(self) -> Iterator[Any]:
        try:
            with self._psycopg.connect(
                self.url, connect_timeout=max(1, int(self.timeout)), autocommit=False
            ) as db:
                if not self._ready:
                    postgres.create_schema(db, _SCHEMA)
                    self._ready = True
                yield db
        except self._psycopg.Error as exc:
            raise KeyDatabaseError(f"the key database {self.where} cannot be used: {exc}".strip()) from exc

    def required(self) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM limner_meta WHERE name = 'auth_required'").fetchone() is not None

    def create(self, name: str = "default") -> tuple[KeyRecord, str]:
        record, secret, digest = new_key(name)
        with self._db() as db:  # one transaction: the marker and the key together
            db.execute(
                "INSERT INTO limner_meta (name, value) VALUES ('auth_required', 'keys') ON CONFLICT DO NOTHING"
            )
            db.execute(
                "INSERT INTO limner_keys (id, name, hint, hash, created_at) VALUES (%s, %s, %s, %s, %s)",
                (record.id, record.name, record.hint, digest, record.created_at),
            )
        return record, secret

    def list(self) -> list[KeyRecord]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, name, hint, created_at, revoked_at FROM limner_keys ORDER BY created_at, id"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self._db() as db:
            cur = db.execute(
                "UPDATE limner_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
            return bool(cur.rowcount)

    def active_hashes(self) -> dict[str, str]:
        with self._db() as db:
            rows = db.execute("SELECT hash, id FROM limner_keys WHERE revoked_at IS NULL").fetchall()
        return {digest: key_id for digest, key_id in rows}

    def snapshot(self) -> Mapping[str, str] | None:
        with self._db() as db:
            required = db.execute("SELECT 1 FROM limner_meta WHERE name = 'auth_required'").fetchone()
            if required is None:
                return None
            rows = db.execute("SELECT hash, id FROM limner_keys WHERE revoked_at IS NULL").fetchall()
        return {digest: key_id for digest, key_id in rows}

    def check(self) -> str | None:
        try:
            with self._db() as db:
                db.execute("SELECT 1")
        except KeyDatabaseError as exc:
            return str(exc)
        return None
