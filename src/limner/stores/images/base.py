"""The image store's protocol: images kept behind signed, expiring links.

A stored image's name carries its expiry (``<expires>_<random>.<ext>``), so a sweeper needs no index:
it deletes every image whose expiry has passed. A link is ``/files/<name>?expires=<ts>&sig=<hmac>``,
signed with the server's secret (limner.stores.secret), so links survive restarts, work on every
replica that shares the secret, and cannot be forged or extended.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from limner import imaging
from limner.errors import StorageUnavailable

_NAME_RE = re.compile(r"^(\d{1,12})_([A-Za-z0-9_-]{16,64})\.(png|jpg|webp)$")
_FORMAT_OF_EXTENSION = {"png": "png", "jpg": "jpeg", "webp": "webp"}


class LinkError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class StoredImage:
    """What a link resolves to: a file here, or the bytes read from a shared store."""

    media_type: str
    path: Path | None = None
    data: bytes | None = None


class ImageStore(abc.ABC):
    """Where url-mode images live until their links expire: the protocol every image store implements,
    with the link scheme they share (names that carry their expiry, HMAC-signed links)."""

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
        # Rounded up: a link lives at least the TTL (truncating cut up to a second off it).
        expires = math.ceil((now if now is not None else time.time()) + self.ttl_seconds)
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
