"""The image stores: the data dir and an S3-compatible object store pass the same tests (store, serve,
expire, sweep, refuse forged links), and a presigned S3 URL expires with the link.

S3 is moto's standalone server (from PyPI), started on 127.0.0.1 by the test: it speaks the S3
protocol over HTTP, and boto3 talks to it as to any S3-compatible store.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
import pytest
from PIL import Image

from limner.server.settings import Settings, StorageConfig
from limner.stores.images import DirectoryImageStore, ImageStore, LinkError
from tests.support.images import gradient, png_bytes
from tests.support.inprocess import app_client

SECRET = b"s" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(name, value)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@pytest.fixture(params=["files", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "files":
        return DirectoryImageStore(tmp_path / "images", SECRET, ttl_seconds=60)
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"limner-{time.time_ns()}"
    _bucket(endpoint, bucket)
    from limner.stores.images.s3 import S3ImageStore

    return S3ImageStore(bucket=bucket, prefix="images/", endpoint_url=endpoint, secret=SECRET, ttl_seconds=60)


def _parts(link: str) -> tuple[str, str, str]:
    url = urlparse(link)
    query = parse_qs(url.query)
    return url.path.rsplit("/", 1)[-1], query["expires"][0], query["sig"][0]


def test_store_and_serve(store: ImageStore) -> None:
    data = png_bytes(gradient(32, 32))
    name, expires, sig = _parts(store.save(data, "png"))
    image = store.fetch(name, expires, sig)
    assert image.media_type == "image/png"
    assert (image.data if image.data is not None else image.path.read_bytes()) == data  # type: ignore[union-attr]
    assert store.check() is None


def test_forged_and_expired_links_are_refused(store: ImageStore) -> None:
    name, expires, sig = _parts(store.save(b"jpeg bytes", "jpeg"))
    for bad in (
        (name, expires, "0" * 64),
        (name, str(int(expires) + 1), sig),
        ("../etc/passwd", expires, sig),
    ):
        with pytest.raises(LinkError) as info:
            store.fetch(*bad)
        assert info.value.status_code == 403
    with pytest.raises(LinkError) as info:
        store.fetch(name, expires, sig, now=int(expires) + 1)
    assert info.value.status_code == 410


def test_a_link_lives_at_least_the_ttl(store: ImageStore) -> None:
    signed_at = 1_000_000.999  # truncating would expire this link 0.999 s early
    name, expires, sig = _parts(store.save(b"png bytes", "png", now=signed_at))
    assert int(expires) >= signed_at + 60
    assert store.fetch(name, expires, sig, now=signed_at + 60) is not None


def test_sweep_removes_only_expired_images(store: ImageStore) -> None:
    old = _parts(store.save(b"old", "webp", now=time.time() - 3600))
    new = _parts(store.save(b"new", "webp"))
    assert store.sweep() == 1
    with pytest.raises(LinkError) as info:
        store.fetch(*old, now=0)  # its signature is fine, the image is gone
    assert info.value.status_code == 404
    assert store.fetch(*new) is not None


def test_presigned_urls_expire_with_the_link(s3_endpoint: str) -> None:
    from limner.stores.images.s3 import S3ImageStore

    _bucket(s3_endpoint, "presigned")
    store = S3ImageStore(
        bucket="presigned", endpoint_url=s3_endpoint, secret=SECRET, ttl_seconds=60, presign=True
    )
    data = png_bytes(gradient(16, 16))
    url = store.save(data, "png")
    assert url.startswith(s3_endpoint)
    query = parse_qs(urlparse(url).query)
    name_expires = int(urlparse(url).path.rsplit("/", 1)[-1].split("_")[0])
    if "X-Amz-Expires" in query:  # SigV4: seconds from now
        assert int(query["X-Amz-Expires"][0]) == 60
    else:  # SigV2: the moment itself
        assert int(query["Expires"][0]) == name_expires
    assert httpx2.get(url).content == data


async def test_the_server_on_s3_serves_links_from_the_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    _bucket(s3_endpoint, "served")
    storage = StorageConfig(kind="s3", bucket="served", prefix="limner/", endpoint_url=s3_endpoint)
    body = {"model": "dall-e-2", "prompt": "a sun", "size": "256x256"}
    async with app_client(Settings(data_dir=tmp_path / "one", storage=storage, secret="x" * 40)) as one:
        link = (await one.post("/v1/images/generations", json=body)).json()["data"][0]["url"]
        health = (await one.get("/health")).json()
    assert health["services"]["images"] == {"kind": "s3", "ok": True}
    assert not (tmp_path / "one" / "images").exists() or not any((tmp_path / "one" / "images").iterdir())
    # Another server (a replica: another data dir, the same secret and bucket) serves the link.
    async with app_client(Settings(data_dir=tmp_path / "two", storage=storage, secret="x" * 40)) as two:
        served = await two.get(link.removeprefix("http://testserver"))
    assert served.status_code == 200
    assert Image.open(io.BytesIO(served.content)).size == (256, 256)


@pytest.mark.parametrize(("style", "host"), [("path", "localhost"), ("virtual", "styled.localhost")])
def test_the_addressing_style_is_honoured(style: str, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MinIO behind a host name (compose's http://minio:9000) has no per-bucket subdomains: "path"."""
    pytest.importorskip("boto3", reason="pip install -e '.[s3]'")
    from limner.server.settings import StorageConfig
    from limner.stores.images import open_image_store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = StorageConfig(
        kind="s3", bucket="styled", endpoint_url="http://localhost:9", addressing_style=style
    )
    store: Any = open_image_store(config, Path("unused"), SECRET, 60)
    signed = store.client.generate_presigned_url("get_object", Params={"Bucket": "styled", "Key": "k"})
    assert urlparse(signed).hostname == host
