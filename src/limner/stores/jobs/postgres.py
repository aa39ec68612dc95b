"""Jobs in PostgreSQL (`jobs_url`), shared by replicas: each thread keeps one connection, and each
call is one transaction. psycopg is imported only when this store is configured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    created_ns BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS limner_jobs_idempotency ON limner_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS limner_jobs_owner ON limner_jobs (owner, created_ns);
CREATE INDEX IF NOT EXISTS limner_jobs_status ON limner_jobs (status);
ALTER TABLE limner_jobs ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0;
"""


class PostgresJobStore(JobStore):
    kind = "postgresql"
    PLACEHOLDER = "%s"

    def __init__(self, url: str) -> None:
        self._psycopg = postgres.psycopg_for("jobs_url", url)
        self.url = url
        self._local = threading.local()
        with self._connect() as db:
            postgres.create_schema(db, SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        db = getattr(self._local, "db", None)
        if db is None or db.closed:
            db = self._local.db = self._psycopg.connect(self.url, autocommit=True)
        with db.transaction():
            yield db
