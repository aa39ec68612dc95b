"""Images in a directory under the data dir (the embedded default)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from limner.stores.images.base import ImageStore, LinkError, StoredImage

log = logging.getLogger("limner.storage")


class DirectoryImageStore(ImageStore):
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
