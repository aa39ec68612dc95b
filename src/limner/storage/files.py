"""A directory of images with expiry, and HMAC-signed links to them.

A stored file's name carries its expiry (``<expires>_<random>.<ext>``), so the sweeper needs no index:
it deletes every file whose expiry has passed. A link is ``/files/<name>?expires=<ts>&sig=<hmac>``,
signed with a secret kept in the data dir (created on first use, mode 0600), so links survive restarts
and cannot be forged or extended.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from limner import imaging
from limner.errors import StorageUnavailable

log = logging.getLogger("limner.storage")

_NAME_RE = re.compile(r"^(\d{1,12})_([A-Za-z0-9_-]{16,64})\.(png|jpg|webp)$")
_FORMAT_OF_EXTENSION = {"png": "png", "jpg": "jpeg", "webp": "webp"}


class LinkError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


#: The shortest signing secret accepted: 256 bits, as the HMAC-SHA256 key it is.
MIN_SECRET_BYTES = 32


class SecretError(Exception):
    """The signing secret is unusable (too short, unreadable, unwritable): the server must not start."""


def load_secret(path: Path, *, given: str | None = None) -> bytes:
    """The secret that signs image links.

    `given` (from LIMNER_SECRET or the config) wins: servers that share links must share it. Otherwise
    the file under the data dir, created once with 32 random bytes, mode 0600, written atomically (a
    full disk leaves no empty file behind). A secret under 32 bytes is refused, never used.
    """
    if given is not None:
        secret = given.encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise SecretError(
                f"the link-signing secret (LIMNER_SECRET or `secret` in the config) is {len(secret)} bytes; "
                f"it must be at least {MIN_SECRET_BYTES} (try: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return secret
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        return _create_secret(path)
    except OSError as exc:
        raise SecretError(f"cannot read the link-signing secret {path}: {exc.strerror or exc}") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the link-signing secret {path} is {len(secret)} bytes, under {MIN_SECRET_BYTES}: it was "
            "truncated or replaced. Delete it to make a new one (links already given out stop working), "
            "or restore it."
        )
    return secret


def _create_secret(path: Path) -> bytes:
    secret = secrets.token_bytes(MIN_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        # link, not rename: if another process made the secret meanwhile, keep theirs.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_secret(path)
    except OSError as exc:
        raise SecretError(f"cannot write the link-signing secret {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return secret


@dataclass(frozen=True)
class StoredImage:
    """What a link resolves to: a file here, or the bytes read from a shared store."""

    media_type: str
    path: Path | None = None
    data: bytes | None = None


class SignedStore(abc.ABC):
    """The link scheme every image store shares: names that carry their expiry, HMAC-signed links."""

    kind: str

    @abc.abstractmethod
    def save(self, data: bytes, fmt: str, *, now: float | None = None) -> str:
        """Store an image; its link's path and query (or, presigned, a whole URL)."""

    @abc.abstractmethod
    def fetch(self, name: str, expires: str, sig: str, *, now: float | None = None) -> StoredImage:
        """The image a link points at, or LinkError (403 forged, 410 expired, 404 gone)."""

    @abc.abstractmethod
    def sweep(self, *, now: float | None = None) -> int:
        """Delete expired images; how many."""

    @abc.abstractmethod
    def check(self) -> str | None:
        """None when the store answers, else why not (for /health)."""

    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self.secret = secret
        self.ttl_seconds = ttl_seconds

    def _sign(self, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _new_name(self, fmt: str, now: float | None) -> tuple[str, int]:
        expires = int((now if now is not None else time.time()) + self.ttl_seconds)
        return f"{expires}_{secrets.token_urlsafe(18)}.{imaging.extension_for(fmt)}", expires

    def _link(self, name: str, expires: int) -> str:
        return f"/files/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def _verify(self, name: str, expires: str, sig: str, now: float | None) -> None:
        """LinkError unless the link is this store's, unexpired (403 forged, 410 expired)."""
        m = _NAME_RE.match(name)
        if not m or not expires.isdigit() or m.group(1) != expires or not sig.isascii():
            raise LinkError("This link is not valid.", 403)
        if not hmac.compare_digest(self._sign(name, int(expires)), sig):
            raise LinkError("This link's signature is not valid.", 403)
        if int(expires) < (now if now is not None else time.time()):
            raise LinkError("This link has expired.", 410)

    @staticmethod
    def media_type_of(name: str) -> str:
        return imaging.content_type_for(_FORMAT_OF_EXTENSION[name.rsplit(".", 1)[-1]])

    @staticmethod
    def expired(name: str, cutoff: float) -> bool:
        m = _NAME_RE.match(name)
        return bool(m and int(m.group(1)) < cutoff)

    @staticmethod
    def unavailable() -> StorageUnavailable:
        return StorageUnavailable(
            "Image storage is unavailable, so this server cannot answer with a url right now. "
            "Retry later, or ask for response_format 'b64_json'."
        )


class ImageStore(SignedStore):
    """Images in a directory under the data dir (the embedded default)."""

    kind = "files"

    def __init__(self, directory: Path, secret: bytes, ttl_seconds: int = 3600) -> None:
        super().__init__(secret, ttl_seconds)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, data: bytes, fmt: str, *, now: float | None = None) -> str:
        """Store the bytes of a `fmt` image (png, jpeg, webp); return the signed path-and-query of its
        link (to put after a base URL)."""
        name, expires = self._new_name(fmt, now)
        tmp = self.directory / f".{name}.tmp"
        try:
            tmp.write_bytes(data)
            tmp.replace(self.directory / name)  # atomic: a reader never sees half a file
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
            log.error("cannot store an image in %s: %s", self.directory, exc)
            raise self.unavailable() from None
        return self._link(name, expires)

    def fetch(self, name: str, expires: str, sig: str, *, now: float | None = None) -> StoredImage:
        """The image a link points at, or LinkError (403 forged, 410 expired, 404 gone)."""
        self._verify(name, expires, sig, now)
        path = self.directory / name
        if not path.is_file():
            raise LinkError("This image no longer exists.", 404)
        return StoredImage(self.media_type_of(name), path=path)

    def sweep(self, *, now: float | None = None) -> int:
        """Delete expired files (and stale temporaries); return how many were removed."""
        cutoff = now if now is not None else time.time()
        removed = 0
        for path in self.directory.iterdir():
            stale_tmp = path.name.startswith(".") and path.stat().st_mtime < cutoff - 3600
            if self.expired(path.name, cutoff) or stale_tmp:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def check(self) -> str | None:
        """None when the store can be written, else why not (for /health)."""
        return None if os.access(self.directory, os.W_OK | os.X_OK) else f"{self.directory} is not writable"
