"""The key store's protocol: API keys, stored hashed, compared in constant time, failing closed.

Keys are 256-bit random tokens, so a plain SHA-256 is the right hash (no password stretching needed):
the database alone never reveals a usable key. A store records "keys are required" with its first
key, so that revoking every key closes a server instead of opening it, and a store that cannot be
read is KeyDatabaseError (a 503 while serving, a one-line error at start-up), never an open server.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass


class KeyDatabaseError(Exception):
    """The key database cannot be used (missing, corrupt, locked, unreadable, full). The message names
    the database and says why, for the operator; clients only ever see a generic 503."""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    hint: str
    created_at: int
    revoked_at: int | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str) -> tuple[KeyRecord, str, str]:
    """A new key: its record, the secret itself (shown once, never stored) and the secret's hash."""
    secret = "lim-" + secrets.token_urlsafe(32)
    record = KeyRecord(
        "key_" + secrets.token_hex(8), name, secret[:8] + "..." + secret[-4:], int(time.time()), None
    )
    return record, secret, hash_key(secret)


class KeyStore(abc.ABC):
    """Where API keys live: SQLite in the data dir, or PostgreSQL shared by replicas."""

    kind: str
    #: Whether `required()` is a local file check, cheap enough for the event loop (SQLite's marker);
    #: a database's is read only in a worker thread.
    marker_is_local: bool = False

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The database, for messages to the operator (never with a password)."""

    @property
    @abc.abstractmethod
    def create_command(self) -> str:
        """The `limner keys create` command that makes a key in this store, for messages."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether there is a key database at all (`auth = "keys"` without one cannot serve anyone)."""

    @abc.abstractmethod
    def required(self) -> bool:
        """Whether keys were ever created here (so the server must ask for one)."""

    @abc.abstractmethod
    def create(self, name: str = "default") -> tuple[KeyRecord, str]:
        """A new key: its record and the secret itself (shown once, never stored)."""

    @abc.abstractmethod
    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when no active key has that id."""

    @abc.abstractmethod
    def active_hashes(self) -> dict[str, str]:
        """The keys in force, hash -> key id; KeyDatabaseError when the database is unusable."""

    @abc.abstractmethod
    def snapshot(self) -> Mapping[str, str] | None:
        """What the server needs per request: None when no key is required, else the active hashes
        with their key ids (possibly none: then every call is refused)."""

    def check(self) -> str | None:
        """None when the keys can be read (or none are needed), else why not (for /health)."""
        try:
            self.snapshot()
        except KeyDatabaseError as exc:
            return str(exc)
        return None

    @staticmethod
    def matches(key: str, hashes: Mapping[str, str]) -> str | None:
        """The id of the key, or None. Every active hash is compared, in constant time: no early exit
        that leaks which matched."""
        digest = hash_key(key)
        found: str | None = None
        for stored, key_id in hashes.items():
            if hmac.compare_digest(stored, digest):
                found = key_id
        return found
