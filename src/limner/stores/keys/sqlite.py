"""API keys in SQLite under the data dir (the embedded default); see base.py for the contract.

Failing closed: creating the first key also writes a marker file beside the database
(``auth-required``). From then on the data dir requires keys, whatever happens to the database: with
every key revoked the server answers 401, and a missing, emptied or corrupt database is an error
(503 while serving, a one-line message at start-up), never an open server. The database is opened
read-write without create, so a deleted file is never silently replaced by an empty one.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from limner.stores.keys.base import KeyDatabaseError, KeyRecord, KeyStore, new_key
from limner.stores.sqlite import private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hint TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
)
"""

#: The marker that records "this data dir requires keys" (written with the first key).
MARKER_NAME = "auth-required"


class SqliteKeyStore(KeyStore):
    """Keys in a SQLite file, with the `auth-required` marker beside it (see the module docstring)."""

    kind = "sqlite"
    marker_is_local = True

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout

    @property
    def marker(self) -> Path:
        return self.path.with_name(MARKER_NAME)

    def required(self) -> bool:
        """Whether keys have ever been created in this data dir (so the server must ask for one)."""
        return self.marker.exists()

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def create_command(self) -> str:
        return f"limner keys create --name NAME --data-dir {self.path.parent}"

    @contextmanager
    def _connect(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        mode = "rwc" if create else "rw"
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(f"file:{quote(str(self.path))}?mode={mode}", uri=True, timeout=self.timeout)
        except (sqlite3.Error, OSError) as exc:
            raise KeyDatabaseError(f"cannot open the key database {self.path}: {exc}") from exc
        try:
            with db:
                if create:
                    db.execute(_SCHEMA)
                    private(self.path)
                yield db
        except sqlite3.Error as exc:
            raise KeyDatabaseError(f"the key database {self.path} cannot be used: {exc}") from exc
        finally:
            db.close()

    def _mark_required(self) -> None:
        """Write the marker atomically (a full disk leaves no half-written file)."""
        if self.marker.exists():
            return
        tmp = self.marker.with_name(f".{MARKER_NAME}.{secrets.token_hex(4)}.tmp")
        try:
            self.marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text("keys\n")
            tmp.replace(self.marker)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyDatabaseError(f"cannot write {self.marker}: {exc}") from exc

    def create(self, name: str = "default") -> tuple[KeyRecord, str]:
        """A new key: its record and the secret itself (shown once, never stored)."""
        record, secret, digest = new_key(name)
        # The marker first: if the insert then fails, the server is closed, never open.
        self._mark_required()
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO keys (id, name, hint, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name, record.hint, digest, record.created_at),
            )
        return record, secret

    def list(self) -> list[KeyRecord]:
        if not self.path.exists() and not self.required():
            return []
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, hint, created_at, revoked_at FROM keys ORDER BY created_at, id"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        if not self.path.exists() and not self.required():
            return False
        with self._connect() as db:
            cur = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
        return cur.rowcount > 0

    def active_hashes(self) -> dict[str, str]:
        """The keys in force, hash -> key id. Raises KeyDatabaseError when the database is unusable."""
        with self._connect() as db:
            rows = db.execute("SELECT hash, id FROM keys WHERE revoked_at IS NULL").fetchall()
        return {digest: key_id for digest, key_id in rows}

    def snapshot(self) -> Mapping[str, str] | None:
        """What the server needs per request: None when this data dir requires no key, else the active
        hashes with their key ids (possibly none: then every call is refused). Databases from before the marker existed
        count as requiring keys as soon as they hold a key, revoked or not."""
        if not self.required():
            if not self.path.exists():
                return None
            with self._connect() as db:
                if not db.execute("SELECT 1 FROM keys LIMIT 1").fetchone():
                    return None
            self._mark_required()
        return self.active_hashes()
