"""A directory of images with expiry, and HMAC-signed links to them.

A stored file's name carries its expiry (``<expires>_<random>.<ext>``), so the sweeper needs no index:
it deletes every file whose expiry has passed. A link is ``/files/<name>?expires=<ts>&sig=<hmac>``,
signed with a secret kept in the data dir (created on first use, mode 0600), so links survive restarts
and cannot be forged or extended.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from limner import imaging

_NAME_RE = re.compile(r"^(\d{1,12})_([A-Za-z0-9_-]{16,64})\.(png|jpg|webp)$")
_FORMAT_OF_EXTENSION = {"png": "png", "jpg": "jpeg", "webp": "webp"}


class LinkError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def load_secret(path: Path) -> bytes:
    """The server's signing secret, created once with 32 random bytes and kept private."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        return secret


class ImageStore:
    def __init__(self, directory: Path, secret: bytes, ttl_seconds: int = 3600) -> None:
        self.directory = directory
        self.secret = secret
        self.ttl_seconds = ttl_seconds
        directory.mkdir(parents=True, exist_ok=True)

    def _sign(self, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def save(self, data: bytes, fmt: str, *, now: float | None = None) -> str:
        """Store the bytes of a `fmt` image (png, jpeg, webp); return the signed path-and-query of its
        link (to put after a base URL)."""
        expires = int((now if now is not None else time.time()) + self.ttl_seconds)
        name = f"{expires}_{secrets.token_urlsafe(18)}.{imaging.extension_for(fmt)}"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.directory / name)  # atomic: a reader never sees half a file
        return f"/files/{name}?expires={expires}&sig={self._sign(name, expires)}"

    def resolve(self, name: str, expires: str, sig: str, *, now: float | None = None) -> Path:
        """The file a link points at, or LinkError (403 forged, 410 expired, 404 gone)."""
        m = _NAME_RE.match(name)
        if not m or not expires.isdigit() or m.group(1) != expires:
            raise LinkError("This link is not valid.", 403)
        if not hmac.compare_digest(self._sign(name, int(expires)), sig):
            raise LinkError("This link's signature is not valid.", 403)
        if int(expires) < (now if now is not None else time.time()):
            raise LinkError("This link has expired.", 410)
        path = self.directory / name
        if not path.is_file():
            raise LinkError("This image no longer exists.", 404)
        return path

    @staticmethod
    def media_type(path: Path) -> str:
        return imaging.content_type_for(_FORMAT_OF_EXTENSION[path.suffix.lstrip(".")])

    def sweep(self, *, now: float | None = None) -> int:
        """Delete expired files (and stale temporaries); return how many were removed."""
        cutoff = now if now is not None else time.time()
        removed = 0
        for path in self.directory.iterdir():
            m = _NAME_RE.match(path.name)
            stale_tmp = path.name.startswith(".") and path.stat().st_mtime < cutoff - 3600
            if (m and int(m.group(1)) < cutoff) or stale_tmp:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
