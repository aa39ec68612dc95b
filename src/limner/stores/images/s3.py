"""Images in any S3-compatible object store, for replicas that must serve each other's links.

Links stay limner's own signed, expiring links (`/files/<name>?expires=&sig=`): any replica that gets
the request reads the object from the bucket and answers it. With `presign = true`, responses carry
presigned S3 URLs instead, expiring with the link, so image bytes never pass through limner again.
Expired objects are removed by the sweeper (or a bucket lifecycle rule: see the README).
boto3 is imported only when this store is configured.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from limner.extras import install_hint
from limner.stores.images.base import ImageStore, LinkError, StoredImage

log = logging.getLogger("limner.storage")


class S3ImageStore(ImageStore):
    kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        secret: bytes,
        ttl_seconds: int = 3600,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        presign: bool = False,
        addressing_style: str = "auto",
        client: Any = None,
    ) -> None:
        super().__init__(secret, ttl_seconds)
        self.bucket = bucket
        self.prefix = prefix
        self.presign = presign
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise ValueError(f'[storage] kind = "s3" needs boto3: {install_hint("s3")}') from exc
            # Credentials come from the usual AWS environment (variables, profile, instance role).
            # Short timeouts and few retries: a frozen store fails a request in seconds, not minutes.
            config = Config(
                connect_timeout=3,
                read_timeout=15,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": addressing_style},
            )
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client = client

    def _errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    def save(self, data: bytes, fmt: str, *, now: float | None = None) -> str:
        name, expires = self._new_name(fmt, now)
        key = self.prefix + name
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=self.media_type_of(name),
                Expires=datetime.datetime.fromtimestamp(expires, datetime.UTC),
            )
            if self.presign:
                seconds = max(1, expires - int(now if now is not None else time.time()))
                url: str = self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
                )
                return url
        except self._errors() as exc:
            log.error("cannot store an image in s3://%s/%s: %s", self.bucket, self.prefix, exc)
            raise self.unavailable() from None
        return self._link(name, expires)

    def fetch(self, name: str, expires: str, sig: str, *, now: float | None = None) -> StoredImage:
        self._verify(name, expires, sig, now)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            return StoredImage(self.media_type_of(name), data=obj["Body"].read())
        except self._errors() as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise LinkError("This image no longer exists.", 404) from None
            log.error("cannot read s3://%s/%s%s: %s", self.bucket, self.prefix, name, exc)
            raise self.unavailable() from None

    def sweep(self, *, now: float | None = None) -> int:
        cutoff = now if now is not None else time.time()
        removed = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            expired = [
                {"Key": item["Key"]}
                for item in page.get("Contents", [])
                if self.expired(item["Key"][len(self.prefix) :], cutoff)
            ]
            if expired:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": expired, "Quiet": True})
                removed += len(expired)
        return removed

    def check(self) -> str | None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self._errors() as exc:
            return f"s3://{self.bucket} does not answer: {exc}"
        return None
