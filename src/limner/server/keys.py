"""API keys in SQLite under the data dir (the embedded default). Stored hashed, compared in constant time.

Keys are 256-bit random tokens, so a plain SHA-256 is the right hash (no password stretching needed):
the database alone never reveals a usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    hint: str
    created_at: int
    revoked_at: int | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:
                yield db
        finally:
            db.close()

    def create(self, name: str = "default") -> tuple[KeyRecord, str]:
        """A new key: its record and the secret itself (shown once, never stored)."""
        secret = "lim-" + secrets.token_urlsafe(32)
        record = KeyRecord(
            "key_" + secrets.token_hex(8), name, secret[:8] + "..." + secret[-4:], int(time.time()), None
        )
        with self._connect() as db:
            db.execute(
                "INSERT INTO keys (id, name, hint, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.name, record.hint, _hash(secret), record.created_at),
            )
        return record, secret

    def list(self) -> list[KeyRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, hint, created_at, revoked_at FROM keys ORDER BY created_at, id"
            ).fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), key_id),
            )
        return cur.rowcount > 0

    def active_hashes(self) -> Sequence[str]:
        """The hashes of the keys in force: one query serves both "is the server open?" and the check."""
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT hash FROM keys WHERE revoked_at IS NULL")]

    def has_active_keys(self) -> bool:
        return bool(self.active_hashes())

    @staticmethod
    def matches(key: str, hashes: Sequence[str]) -> bool:
        """Compare against every active hash in constant time: no early exit that leaks which matched."""
        digest = _hash(key)
        found = False
        for stored in hashes:
            found |= hmac.compare_digest(stored, digest)
        return found
