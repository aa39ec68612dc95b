from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image as PILImage

from limner.client import ApiClient, Configuration, ImagesApi
from tests.support.server import RunningServer


def png(size: int = 64, color: tuple[int, int, int, int] = (40, 90, 200, 255)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGBA", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_with_hole(size: int = 64) -> bytes:
    """An opaque square with a transparent middle: what dall-e-2 edits without a mask need."""
    image = PILImage.new("RGBA", (size, size), (40, 90, 200, 255))
    image.paste((0, 0, 0, 0), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64: str | None) -> PILImage.Image:
    assert b64, "expected base64 image data"
    return PILImage.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture()
def client(server: RunningServer) -> Iterator[ApiClient]:
    with ApiClient(Configuration(host=server.api_base, access_token=None)) as api_client:
        yield api_client


@pytest.fixture()
def images(client: ApiClient) -> ImagesApi:
    return ImagesApi(client)
