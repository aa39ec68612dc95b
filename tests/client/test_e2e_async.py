"""AsyncImagesApi against a real `limner serve`: every method, streams, errors, concurrency."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image as PILImage

from limner.client import (
    AsyncApiClient,
    AsyncImagesApi,
    AsyncModelsApi,
    AsyncStream,
    BadRequestException,
    Configuration,
    ImageEditCompletedEvent,
    ImageGenCompletedEvent,
    NotFoundException,
    async_save_images,
)
from tests.client.conftest import decoded, png, png_with_hole
from tests.support.server import RunningServer

T = TypeVar("T")


def run(server: RunningServer, body: Callable[[AsyncImagesApi], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncApiClient(Configuration(host=server.api_base, access_token=None)) as client:
            return await body(AsyncImagesApi(client))

    return asyncio.run(main())


def test_async_generate_edit_vary_and_http_info(server: RunningServer, tmp_path: Path) -> None:
    async def body(api: AsyncImagesApi) -> None:
        result = await api.create_image(prompt="a red circle", size="256x256", response_format="b64_json")
        assert result.data and decoded(result.data[0].b64_json).size == (256, 256)
        path = tmp_path / "in.png"
        path.write_bytes(png_with_hole())
        for form in (
            path,
            png_with_hole(),
            io.BytesIO(png_with_hole()),
            ("x.png", png_with_hole(), "image/png"),
            PILImage.open(io.BytesIO(png_with_hole())),
        ):
            edited = await api.create_image_edit(
                form, "a hat", model="dall-e-2", size="256x256", response_format="b64_json"
            )
            assert edited.data and decoded(edited.data[0].b64_json).size == (256, 256)
        several = await api.create_image_edit(
            [png(), png()], "mix", model="gpt-image-1", quality="low", size="1024x1024"
        )
        assert several.data and several.output_format == "png"
        data, status, headers = await api.create_image_variation_with_http_info(png(), size="256x256", n=2)
        assert status == 200 and data.data and len(data.data) == 2 and headers["x-request-id"]
        data, status, _ = await api.create_image_with_http_info(prompt="x", size="256x256")
        assert status == 200 and data.data and data.data[0].url
        paths = await async_save_images(data, tmp_path / "out", api_client=api.api_client)
        # A second save into the same folder overwrites nothing.
        again = await async_save_images(data, tmp_path / "out", api_client=api.api_client)
        assert not set(again) & set(paths) and all(p.exists() for p in again)
        assert PILImage.open(paths[0]).size == (256, 256)
        data, status, _ = await api.create_image_edit_with_http_info(
            png_with_hole(), "a hat", model="dall-e-2", size="256x256"
        )
        assert status == 200 and data.data
        listing = await AsyncModelsApi(api.api_client).list_models()
        assert "dall-e-2" in [model.id for model in listing.data]

    run(server, body)


def test_async_errors_by_status(server: RunningServer) -> None:
    async def body(api: AsyncImagesApi) -> None:
        with pytest.raises(BadRequestException) as bad:
            await api.create_image(prompt="x", model="dall-e-3", n=2)
        assert bad.value.param == "n"
        with pytest.raises(NotFoundException):
            await api.create_image(prompt="x", model="nope")

    run(server, body)


def test_async_streams_for_generations_and_edits(server: RunningServer) -> None:
    async def body(api: AsyncImagesApi) -> None:
        stream = await api.create_image(
            prompt="a fox",
            model="gpt-image-1",
            size="1024x1024",
            quality="low",
            stream=True,
            partial_images=1,
        )
        assert isinstance(stream, AsyncStream)
        types = [event.type async for event in stream]
        assert types == ["image_generation.partial_image", "image_generation.completed"] and stream.closed
        stream = await api.create_image_edit(
            png(),
            "a hat",
            model="gpt-image-1",
            quality="low",
            size="1024x1024",
            stream=True,
            partial_images=0,
        )
        async with stream:
            events = [event async for event in stream]
        assert len(events) == 1 and isinstance(events[0], ImageEditCompletedEvent)

    run(server, body)


def test_async_large_image_streams_whole(server: RunningServer) -> None:
    """1536x1024 at high quality: a completed event well over httpx2's default 1 MiB cap."""

    async def body(api: AsyncImagesApi) -> str:
        stream = await api.create_image(
            prompt="a noisy field of many coloured stars",
            model="gpt-image-1",
            size="1536x1024",
            quality="high",
            stream=True,
        )
        events = [event async for event in stream]
        assert isinstance(events[-1], ImageGenCompletedEvent)
        return str(events[-1].b64_json)

    b64 = run(server, body)
    assert len(b64) > 1024 * 1024 and decoded(b64).size == (1536, 1024)


def test_async_concurrent_requests(server: RunningServer) -> None:
    async def body(api: AsyncImagesApi) -> list[int]:
        results = await asyncio.gather(
            *(
                api.create_image(prompt=f"shape {i}", size="256x256", response_format="b64_json", seed=i)
                for i in range(6)
            )
        )
        return [len(r.data or []) for r in results]

    assert run(server, body) == [1] * 6


def test_async_completed_event_is_typed(server: RunningServer) -> None:
    async def body(api: AsyncImagesApi) -> object:
        stream = await api.create_image(
            prompt="x", model="gpt-image-1", quality="low", size="1024x1024", stream=True
        )
        return [event async for event in stream][-1]

    event = run(server, body)
    assert isinstance(event, ImageGenCompletedEvent) and event.usage.output_tokens == 272
