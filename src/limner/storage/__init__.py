"""Where url-mode images live: files under the data dir, behind signed, expiring links."""

from limner.storage.files import ImageStore, LinkError

__all__ = ["ImageStore", "LinkError"]
