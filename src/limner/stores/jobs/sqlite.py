"""Jobs in SQLite under the data dir (the embedded default): WAL, so readers never wait for the
writer; a full sync for the commit that accepts an asynchronous job, so it survives a power cut, not
just kill -9; the other writes sync at checkpoints (a crash of the server loses none of them)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from limner.errors import LimnerError
from limner.stores.jobs.base import JobStore
from limner.stores.jobs.sole import SoleUse
from limner.stores.sqlite import private

SCHEMA = """
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
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    content_type TEXT NOT NULL,
    body BLOB,
    base_url TEXT NOT NULL,
    callback_url TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    result TEXT,                       -- the ImagesResponse (JSON), or the stream's final events
    error TEXT,                        -- the error envelope (JSON)
    status_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    runner TEXT,                       -- the replica that runs it, while its lease holds
    lease_until INTEGER,               -- epoch ms
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_images BLOB,                -- the result's images, raw (the JSON holds where each lies)
    created_ns INTEGER NOT NULL        -- orders jobs made within one second
);
CREATE UNIQUE INDEX IF NOT EXISTS limner_jobs_idempotency ON limner_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS limner_jobs_owner ON limner_jobs (owner, created_ns);
CREATE INDEX IF NOT EXISTS limner_jobs_status ON limner_jobs (status);
-- One row that /health rewrites: the store is healthy only if it can be written.
CREATE TABLE IF NOT EXISTS limner_probe (id INTEGER PRIMARY KEY, at BIGINT NOT NULL, room BLOB);
INSERT OR IGNORE INTO limner_probe (id, at) VALUES (1, 0);
"""

#: Columns added since the first release, for databases made before them.
ADDED_COLUMNS = (
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("runner", "TEXT"),
    ("lease_until", "INTEGER"),
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
    ("result_images", "BLOB"),
)


class SqliteJobStore(JobStore):
    kind = "sqlite"
    PLACEHOLDER = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        # SQLite has one writer at a time. Left to its busy handler, a writer that finds the lock taken
        # sleeps 1, 2, 5, 10... ms before it tries again: at concurrency 8 the server idled in those
        # sleeps (a key cost 18 % of its throughput). Writers of this process queue here instead and
        # are woken the moment the lock is free; other processes still meet the busy handler.
        self._write_lock = threading.Lock()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._vacuum_incrementally()
        with self._connect() as db:
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(limner_jobs)")}
            for column, kind in ADDED_COLUMNS:  # a database made by an older limner
                if column not in columns:
                    db.execute(f"ALTER TABLE limner_jobs ADD COLUMN {column} {kind}")
        private(path)

    def _vacuum_incrementally(self) -> None:
        """Deleted jobs give their pages back to the disk (`_reclaim`) only in incremental auto-vacuum
        mode, which a new file takes before its first table, and an older one with one VACUUM."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    db.execute("VACUUM")  # once, for a file made before: rewrites it in the new mode
        finally:
            db.close()

    def _reclaim(self) -> None:
        with self._connect() as db:
            # executescript steps the pragma to its end (execute frees one page per step), then the
            # checkpoint, outside any transaction, moves the freed file's end back and empties the WAL.
            db.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")

    def _begin(self, db: sqlite3.Connection) -> None:
        # The connection autocommits (`_connect`): statements that must be one transaction begin it
        # here, and `with db` commits it (a SAVEPOINT outside one would commit at its RELEASE).
        db.execute("BEGIN")

    def _writing(self) -> AbstractContextManager[Any]:
        # A write made now (`write_now`) already holds the lock.
        return nullcontext() if getattr(self._local, "now", False) else self._write_lock

    def write_now(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Make the write on this thread, now, unless it would wait: for this process's writer (a group
        being committed) or for another process's (SQLite's lock: the write fails at once, untouched,
        instead of sleeping in the busy handler). Its connection never checkpoints (a checkpoint copies
        and syncs the WAL: the caller, the event loop, asks for one elsewhere: `checkpoint`)."""
        if not self._write_lock.acquire(blocking=False):
            return False, None
        self._local.now = True
        try:
            return True, call(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False, None
            raise
        finally:
            self._local.now = False
            self._write_lock.release()

    def sole_use(self) -> SoleUse:
        return SoleUse(self.path)

    def checkpoint(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _is_key_taken(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _failure(self, exc: Exception) -> LimnerError | None:
        if isinstance(exc, sqlite3.IntegrityError) or not isinstance(exc, sqlite3.Error):
            return None
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
        if code == sqlite3.SQLITE_BUSY and getattr(self._local, "now", False):
            return None  # a write made now found the lock taken: `write_now` makes it later instead
        return self._full() if code == sqlite3.SQLITE_FULL else self._unavailable()

    @contextmanager
    def _connect(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        if getattr(self._local, "now", False):
            if durable:
                raise RuntimeError("a durable write is never made now: its sync is the slow part")
            with self._now_connection() as now_db:
                yield now_db
            return
        db = getattr(self._local, "db", None)
        if db is None:
            # Autocommit: one statement is its own transaction, and several are in one only where a
            # caller begins it (`_begin`: a batch, the health probe). sqlite3's implicit transactions
            # cost a write a BEGIN and a COMMIT of their own, and each statement lets go of the GIL:
            # under load, where engine threads hold it, each time it is taken back is a wait (a key's
            # two writes took 6 to 10 ms at concurrency 8, for 0.8 ms of work).
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db, self._local.synchronous = db, None
        # WAL with NORMAL syncs at checkpoints, not per commit: a crash of the server loses nothing.
        # FULL, for the commits that must survive a power cut too, syncs the WAL at each commit. Set
        # only when it changes (one statement less per write, for the reason above).
        synchronous = "FULL" if durable else "NORMAL"
        if self._local.synchronous != synchronous:
            db.execute(f"PRAGMA synchronous={synchronous}")
            self._local.synchronous = synchronous
        with db:
            yield db

    @contextmanager
    def _now_connection(self) -> Iterator[sqlite3.Connection]:
        """The connection of writes made now (`write_now`): no busy wait, no checkpoint, NORMAL sync (a
        durable write is never made now)."""
        db = getattr(self._local, "now_db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=0, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.now_db = db
        with db:
            yield db
