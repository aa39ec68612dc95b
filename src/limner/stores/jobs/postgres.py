"""Jobs in PostgreSQL (`jobs_url`), shared by replicas: each thread keeps one connection, and each
call is one transaction. psycopg is imported only when this store is configured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from limner.errors import LimnerError
from limner.stores import postgres
from limner.stores.jobs.base import JobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS limner_jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    mode TEXT NOT NULL,
    operation TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    content_type TEXT NOT NULL,
    body BYTEA,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    status_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    lease_until BIGINT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_images BYTEA,
    created_ns BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS limner_jobs_idempotency ON limner_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS limner_jobs_owner ON limner_jobs (owner, created_ns);
CREATE INDEX IF NOT EXISTS limner_jobs_status ON limner_jobs (status);
-- One row that /health rewrites: the store is healthy only if it can be written.
CREATE TABLE IF NOT EXISTS limner_probe (id INTEGER PRIMARY KEY, at BIGINT NOT NULL, room BYTEA);
INSERT INTO limner_probe (id, at) VALUES (1, 0) ON CONFLICT DO NOTHING;
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS runner TEXT;
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS lease_until BIGINT;
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS result_images BYTEA;
"""


class PostgresJobStore(JobStore):
    kind = "postgresql"
    PLACEHOLDER = "%s"

    def __init__(self, url: str) -> None:
        self._psycopg = postgres.psycopg_for("jobs_url", url)
        self.url = url
        self._local = threading.local()
        try:
            with self._connect() as db:
                postgres.create_schema(db, SCHEMA)
        except self._psycopg.Error as exc:  # one line at start-up, not a traceback
            raise ValueError(
                f"jobs_url: the job database {postgres.where(self._psycopg, url)} cannot be used: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from None

    def _reclaim(self) -> None:
        """Nothing: PostgreSQL's autovacuum reuses the space of deleted rows."""

    def _is_key_taken(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def _failure(self, exc: Exception) -> LimnerError | None:
        errors = self._psycopg.errors
        if isinstance(exc, self._psycopg.IntegrityError) or not isinstance(exc, self._psycopg.Error):
            return None
        return self._full() if isinstance(exc, errors.DiskFull) else self._unavailable()

    @contextmanager
    def _connect(self, durable: bool = False) -> Iterator[Any]:
        db = getattr(self._local, "db", None)
        if db is None or db.closed or db.broken:  # a server restart breaks it
            db = self._local.db = self._psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        with db.transaction():
            if not durable:  # the commit returns before the WAL reaches the disk (still crash-safe)
                db.execute("SET LOCAL synchronous_commit = off")
            yield db
