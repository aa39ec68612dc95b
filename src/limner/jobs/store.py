"""The job store: every accepted asynchronous job (and every request with an Idempotency-Key) is
written here, with the request as it arrived, before the client gets an answer. SQLite in the data
dir (WAL, so readers never wait for the writer), one row per job.

What a row holds is enough to run the job again after a crash: the request's method-independent
parts (route, content type, body, the host it was addressed to, the key that owns it). Results and
inputs are deleted when the job expires (the url TTL after it ended).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limner.extras import install_hint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS limner_jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT NOT NULL,
    mode TEXT NOT NULL,                -- async | sync
    operation TEXT NOT NULL,           -- generate | edit | vary
    route TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,              -- queued | in_progress | completed | failed | cancelled
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    content_type TEXT NOT NULL,
    body BYTEA,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    result TEXT,                       -- the ImagesResponse (JSON), or the stream's final events
    error TEXT,                        -- the error envelope (JSON)
    status_code INTEGER,
    created_ns BIGINT NOT NULL         -- orders jobs made within one second
);
CREATE UNIQUE INDEX IF NOT EXISTS limner_jobs_idempotency ON limner_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS limner_jobs_owner ON limner_jobs (owner, created_ns);
CREATE INDEX IF NOT EXISTS limner_jobs_status ON limner_jobs (status);
"""

ENDED = ("completed", "failed", "cancelled")


@dataclass
class JobRecord:
    id: str
    owner: str
    idempotency_key: str | None
    fingerprint: str
    mode: str
    operation: str
    route: str
    model: str | None
    status: str
    created_at: int
    updated_at: int
    expires_at: int | None
    content_type: str
    body: bytes | None
    base_url: str
    callback_url: str | None = None
    stream: bool = False
    result: Any = None
    error: Any = None
    status_code: int | None = None


_COLUMNS = (
    "id, owner, idempotency_key, fingerprint, mode, operation, route, model, status, created_at, "
    "updated_at, expires_at, content_type, body, base_url, callback_url, stream, result, error, status_code"
)


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    if isinstance(values[13], memoryview):  # PostgreSQL's bytea
        values[13] = bytes(values[13])
    values[16] = bool(values[16])
    values[17] = json.loads(values[17]) if values[17] is not None else None
    values[18] = json.loads(values[18]) if values[18] is not None else None
    return JobRecord(*values)


class JobStore:
    """SQLite under the data dir (a path), or PostgreSQL (a postgresql:// URL, `jobs_url`), shared by
    replicas. The SQL is the same for both; only the placeholders and the connection differ."""

    def __init__(self, location: Path | str) -> None:
        self.kind = "sqlite"
        self.location = location
        self._local = threading.local()
        if isinstance(location, str):
            if not location.startswith(("postgresql://", "postgres://")):
                raise ValueError(f"jobs_url must be a postgresql:// URL, not {location.split(':')[0]}:...")
            try:
                import psycopg
            except ImportError as exc:
                raise ValueError(f"jobs_url needs psycopg: {install_hint('postgres')}") from exc
            self.kind = "postgresql"
            self._psycopg: Any = psycopg
        else:
            location.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            if self.kind == "postgresql":
                from limner.server.keys_postgres import SCHEMA_LOCK

                # Replicas start together: one creates the schema while the others wait.
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.kind == "postgresql" else text

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        """This thread's connection, in a transaction."""
        db = getattr(self._local, "db", None)
        if self.kind == "postgresql":
            if db is None or db.closed:
                db = self._local.db = self._psycopg.connect(str(self.location), autocommit=True)
            with db.transaction():
                yield db
            return
        if db is None:
            db = sqlite3.connect(self.location, timeout=30, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an accepted job survives a power cut, not just kill -9
            self._local.db = db
        with db:
            yield db

    def _run(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> Any:
        with self._connect() as db:
            return db.execute(self._sql(sql), args)

    def _rows(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as db:
            rows: list[tuple[Any, ...]] = db.execute(self._sql(sql), args).fetchall()
        return rows

    def check(self) -> str | None:
        try:
            self._rows("SELECT 1")
        except Exception as exc:  # sqlite3 or psycopg: whatever the database says, for /health
            return f"the job store does not answer: {type(exc).__name__}"
        return None

    def insert(self, job: JobRecord) -> None:
        """Write a new job (raises the database's integrity error when its idempotency key is taken)."""
        self._run(
            f"INSERT INTO limner_jobs ({_COLUMNS}, created_ns) VALUES ({', '.join('?' * 21)})",
            (
                job.id,
                job.owner,
                job.idempotency_key,
                job.fingerprint,
                job.mode,
                job.operation,
                job.route,
                job.model,
                job.status,
                job.created_at,
                job.updated_at,
                job.expires_at,
                job.content_type,
                job.body,
                job.base_url,
                job.callback_url,
                int(job.stream),
                None,
                None,
                None,
                time.time_ns(),
            ),
        )

    def get(self, job_id: str) -> JobRecord | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM limner_jobs WHERE id = ?", (job_id,))
        return _record(rows[0]) if rows else None

    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM limner_jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        )
        return _record(rows[0]) if rows else None

    def of_owner(
        self, owner: str, *, limit: int = 20, before: int | None = None, mode: str | None = None
    ) -> list[JobRecord]:
        """The owner's jobs, newest first; `mode` "async" or "sync" keeps only those."""
        query = f"SELECT {_COLUMNS} FROM limner_jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if mode is not None:
            query += " AND mode = ?"
            args.append(mode)
        if before is not None:
            query += " AND created_at < ?"
            args.append(before)
        query += " ORDER BY created_ns DESC LIMIT ?"
        args.append(limit)
        return [_record(row) for row in self._rows(query, args)]

    def active(self) -> list[JobRecord]:
        """Jobs that were queued or running: what a restart must run again, oldest first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM limner_jobs WHERE status IN ('queued', 'in_progress') ORDER BY created_ns"
        )
        return [_record(row) for row in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = int(time.time())
        for name in ("result", "error"):
            if name in fields and fields[name] is not None:
                fields[name] = json.dumps(fields[name])
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._run(f"UPDATE limner_jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    def end(
        self,
        job_id: str,
        status: str,
        *,
        ttl: int,
        result: Any = None,
        error: Any = None,
        status_code: int | None = None,
    ) -> None:
        """The job ended: keep its answer for `ttl` seconds; its inputs are no longer needed."""
        self.update(
            job_id,
            status=status,
            result=result,
            error=error,
            status_code=status_code,
            expires_at=int(time.time()) + ttl,
            body=None,
        )

    def delete(self, job_id: str) -> None:
        self._run("DELETE FROM limner_jobs WHERE id = ?", (job_id,))

    def sweep(self, now: float | None = None) -> int:
        """Delete jobs whose answer has expired; return how many."""
        cutoff = int(now if now is not None else time.time())
        cur = self._run("DELETE FROM limner_jobs WHERE expires_at IS NOT NULL AND expires_at < ?", (cutoff,))
        return int(cur.rowcount)
