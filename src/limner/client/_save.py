"""Save result images to files: decode ``b64_json``, or download ``url`` (a data: URL is decoded).

The file extension is taken from the image bytes, so ``save_images(response, "out")`` writes
``out/image-0.png`` or ``.jpg``/``.webp`` as the server encoded them. ``save_images`` never overwrites:
a name already taken (a second call into the same folder) gets a counter, ``image-0-1.png``. A download carries the API key
only when the URL is on the configured API host: signed URLs on other hosts must not receive it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limner.client._async_client import AsyncApiClient
from limner.client._base import BaseApiClient, Call
from limner.client._client import ApiClient
from limner.client._files import extension_for, sniff_content_type
from limner.types import Image, ImagesResponse

PathLike = str | os.PathLike[str]


def _inline_bytes(image: Any) -> bytes | None:
    """The bytes carried in the result itself (b64_json, or a data: URL), else None."""
    b64 = getattr(image, "b64_json", None)
    if b64:
        return base64.b64decode(b64)
    url = getattr(image, "url", None)
    if url and url.startswith("data:"):
        return base64.b64decode(url.partition(",")[2])
    if not url:
        raise ValueError("This image has neither b64_json nor url.")
    return None


def _download_call(client: BaseApiClient, url: str) -> Call:
    api = urlsplit(client.configuration.host)
    target = urlsplit(url)
    same_host = (api.scheme, api.netloc) == (target.scheme, target.netloc)
    return Call("GET", url, send_auth=same_host)


def _with_extension(data: bytes, path: PathLike) -> Path:
    target = Path(path)
    if not target.suffix:
        target = target.with_suffix("." + extension_for(sniff_content_type(data[:16])))
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _write(data: bytes, path: PathLike) -> Path:
    target = _with_extension(data, path)
    target.write_bytes(data)
    return target


def write_new(data: bytes, path: PathLike) -> Path:
    """Write to ``path`` (extension from the bytes) or, if that file exists, to ``<stem>-1``, ``-2``...:
    never over an existing file, even one another process creates meanwhile (exclusive create)."""
    target = _with_extension(data, path)
    candidate, counter = target, 0
    while True:
        try:
            with open(candidate, "xb") as file:
                file.write(data)
            return candidate
        except FileExistsError:
            counter += 1
            candidate = target.with_name(f"{target.stem}-{counter}{target.suffix}")


def _targets(response: ImagesResponse | Sequence[Image], directory: PathLike, prefix: str) -> list[Any]:
    images = list(response.data or []) if isinstance(response, ImagesResponse) else list(response)
    return [(image, Path(directory) / f"{prefix}-{index}") for index, image in enumerate(images)]


def image_bytes(image: Image | Any, api_client: ApiClient | None = None) -> bytes:
    """The encoded image of a result or stream event, downloading its url when needed."""
    data = _inline_bytes(image)
    if data is not None:
        return data
    client = api_client or ApiClient()
    try:
        response, _ = client.send(_download_call(client, str(image.url)))
        return response.content
    finally:
        if api_client is None:
            client.close()


def save_image(image: Image | Any, path: PathLike, api_client: ApiClient | None = None) -> Path:
    """Write one image to ``path`` (an extension is added from the bytes if it has none)."""
    return _write(image_bytes(image, api_client), path)


def save_images(
    response: ImagesResponse | Sequence[Image],
    directory: PathLike,
    *,
    prefix: str = "image",
    api_client: ApiClient | None = None,
) -> list[Path]:
    """Write every image of a response as ``directory/prefix-<i>.<ext>`` (a taken name gets a counter:
    nothing is overwritten); returns the paths."""
    return [
        write_new(image_bytes(image, api_client), target)
        for image, target in _targets(response, directory, prefix)
    ]


async def async_image_bytes(image: Image | Any, api_client: AsyncApiClient | None = None) -> bytes:
    data = _inline_bytes(image)
    if data is not None:
        return data
    client = api_client or AsyncApiClient()
    try:
        response, _ = await client.send(_download_call(client, str(image.url)))
        return response.content
    finally:
        if api_client is None:
            await client.close()


async def async_save_image(
    image: Image | Any, path: PathLike, api_client: AsyncApiClient | None = None
) -> Path:
    return _write(await async_image_bytes(image, api_client), path)


async def async_save_images(
    response: ImagesResponse | Sequence[Image],
    directory: PathLike,
    *,
    prefix: str = "image",
    api_client: AsyncApiClient | None = None,
) -> list[Path]:
    """Like save_images: every image written, nothing overwritten."""
    return [
        write_new(await async_image_bytes(image, api_client), target)
        for image, target in _targets(response, directory, prefix)
    ]
