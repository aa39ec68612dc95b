"""Where url-mode images live, behind signed, expiring links: files under the data dir (the default),
or an S3-compatible object store shared by replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from limner.stores.images.base import ImageStore, LinkError, StoredImage
from limner.stores.images.directory import DirectoryImageStore


def open_image_store(config: Any, data_dir: Path, secret: bytes, ttl_seconds: int) -> ImageStore:
    """The store the `[storage]` table asks for (limner.server.settings.StorageConfig)."""
    if config.kind == "s3":
        from limner.stores.images.s3 import S3ImageStore

        return S3ImageStore(
            bucket=config.bucket,
            prefix=config.prefix,
            endpoint_url=config.endpoint_url,
            region=config.region,
            presign=config.presign,
            addressing_style=config.addressing_style,
            secret=secret,
            ttl_seconds=ttl_seconds,
        )
    return DirectoryImageStore(data_dir / "images", secret, ttl_seconds)


__all__ = ["DirectoryImageStore", "ImageStore", "LinkError", "StoredImage", "open_image_store"]
