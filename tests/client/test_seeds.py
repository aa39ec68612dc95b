"""Each seed document's example call, translated to Python, against a real `limner serve`."""

from __future__ import annotations

import base64
import io
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from limner.client import (
    ApiClient,
    BadRequestException,
    Configuration,
    CreateImageRequest,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImagesApi,
    ImagesResponse,
    Stream,
    UnauthorizedException,
    image_bytes,
)
from tests.client.conftest import png, png_with_hole
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    """A separate server with one API key: every /v1 call needs it."""
    data_dir = tmp_path_factory.mktemp("keyed")
    created = subprocess.run(
        [sys.executable, "-m", "limner", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    with start_server(data_dir) as running:
        yield running, key


# PowerShell: Initialize-CreateImageRequest -Prompt "A cute baby sea otter" -Model ... -N 1
#             -Quality "standard" -ResponseFormat "url" -Size "256x256" -Style "vivid" -User "user-1234"


def test_powershell_create_image_request(images: ImagesApi, client: ApiClient) -> None:
    # dall-e-2 is the model that takes 256x256 with quality standard; it accepts `style` and ignores it
    # (DALL-E-era clients always send it). dall-e-3 would refuse the size, which the second half shows.
    request = CreateImageRequest(
        prompt="A cute baby sea otter",
        model="dall-e-2",
        n=1,
        quality="standard",
        response_format="url",
        size="256x256",
        style="vivid",
        user="user-1234",
    )
    result = images.create_image(request)
    assert result.data is not None and len(result.data) == 1 and result.data[0].url
    picture = PILImage.open(io.BytesIO(image_bytes(result.data[0], client)))
    assert (picture.format, picture.size) == ("PNG", (256, 256))

    with pytest.raises(BadRequestException) as caught:
        images.create_image(request, model="dall-e-3")
    assert caught.value.param == "size" and "1024x1024" in caught.value.message


# Ruby: data, status_code, headers = api_instance.create_image_with_http_info(create_image_request)


def test_ruby_with_http_info_tuples(images: ImagesApi) -> None:
    create_image_request = CreateImageRequest(prompt="A cute baby sea otter")
    data, status_code, headers = images.create_image_with_http_info(create_image_request)
    assert status_code == 200 and isinstance(data, ImagesResponse) and headers["x-request-id"]

    opts: dict[str, Any] = {
        "mask": png(64, (0, 0, 0, 0)),
        "model": "dall-e-2",
        "n": 2,
        "size": "256x256",
        "response_format": "url",
        "user": "user_example",
    }
    data, status_code, headers = images.create_image_edit_with_http_info(png(64), "prompt_example", **opts)
    assert status_code == 200 and data.data is not None and len(data.data) == 2

    opts = {"model": "dall-e-2", "n": 2, "response_format": "url", "size": "256x256", "user": "user_example"}
    data, status_code, headers = images.create_image_variation_with_http_info(png_with_hole(64), **opts)
    assert status_code == 200 and data.data is not None and all(image.url for image in data.data)


# Dart: setAccessToken('YOUR_ACCESS_TOKEN') or setAccessToken(yourTokenGeneratorFunction)


def test_dart_token_string_and_token_function(keyed_server: tuple[RunningServer, str]) -> None:
    server, key = keyed_server
    calls: list[int] = []

    def your_token_generator_function() -> str:
        calls.append(1)
        return key

    for token in (key, your_token_generator_function):
        with ApiClient(Configuration(host=server.api_base, access_token=token)) as api_client:
            result = ImagesApi(api_client).create_image(CreateImageRequest(prompt="an otter", size="256x256"))
            assert result.data
    assert calls == [1]


def test_missing_or_wrong_key_is_401(keyed_server: tuple[RunningServer, str]) -> None:
    server, key = keyed_server
    for token in (None, "sk-wrong", lambda: key[:-1] + ("x" if key[-1] != "x" else "y")):
        config = Configuration(host=server.api_base, access_token=token, max_retries=0)
        with ApiClient(config) as api_client, pytest.raises(UnauthorizedException) as caught:
            ImagesApi(api_client).create_image(prompt="an otter")
        assert caught.value.status == 401 and caught.value.message


# Julia: create_image(_api, response_stream::Channel, create_image_request) -> Channel{...}


def test_julia_streaming_channel(images: ImagesApi) -> None:
    """The Julia seed hands a Channel that fills as events arrive; a thread draining the stream into a
    queue is the same shape in Python, with None as the channel being closed."""
    response_stream: queue.Queue[Any] = queue.Queue()
    request = CreateImageRequest(
        prompt="an otter", model="gpt-image-1", size="1024x1024", quality="low", stream=True, partial_images=2
    )
    # stream=True inside the request model: typed as ImagesResponse by the overloads, a Stream at run time
    stream: Any = images.create_image(request)
    assert isinstance(stream, Stream)

    def produce() -> None:
        for event in stream:
            response_stream.put(event)
        response_stream.put(None)

    producer = threading.Thread(target=produce)
    producer.start()
    received = []
    while (event := response_stream.get(timeout=60)) is not None:
        received.append(event)
    producer.join()
    assert [e.type for e in received] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert isinstance(received[-1], ImageGenCompletedEvent) and stream.closed


# Rust: create_image_edit(image, prompt, mask, background, model, n, size, response_format, output_format,
#       output_compression, user, input_fidelity, stream, partial_images, quality)


def test_rust_newest_edit_fields(images: ImagesApi, tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(png(64))
    second.write_bytes(png(64, (220, 40, 40, 255)))
    fields: dict[str, Any] = {
        "background": "transparent",
        "model": "gpt-image-1",
        "n": 1,
        "size": "1024x1024",
        "output_format": "webp",
        "output_compression": 80,
        "user": "user-1",
        "input_fidelity": "high",
        "quality": "low",
    }
    result = images.create_image_edit(
        [first, second], "put them side by side", mask=png(64, (0, 0, 0, 0)), **fields
    )
    assert (result.background, result.output_format, result.size, result.quality) == (
        "transparent",
        "webp",
        "1024x1024",
        "low",
    )
    assert result.data is not None and result.data[0].b64_json
    picture = PILImage.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert picture.format == "WEBP" and picture.mode == "RGBA"

    stream = images.create_image_edit(
        [first, second], "put them side by side", stream=True, partial_images=2, **fields
    )
    events = list(stream)
    assert [type(e) for e in events] == [ImageEditPartialImageEvent] * 2 + [ImageEditCompletedEvent]
    assert (events[-1].background, events[-1].output_format) == ("transparent", "webp")
