"""Streams from a real `limner serve`: events in order per image, edits, closing on break."""

from __future__ import annotations

import pytest

from limner.client import (
    ApiClient,
    ApiConnectionError,
    Configuration,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesApi,
    Stream,
)
from tests.client.conftest import decoded, png
from tests.support.server import RunningServer


def test_generation_stream_sends_partials_then_completed_per_image(images: ImagesApi) -> None:
    stream = images.create_image(
        prompt="a lighthouse",
        model="gpt-image-1",
        size="1024x1024",
        quality="low",
        n=2,
        stream=True,
        partial_images=2,
    )
    assert isinstance(stream, Stream)
    events = list(stream)
    kinds = [type(e) for e in events]
    per_image = [ImageGenPartialImageEvent, ImageGenPartialImageEvent, ImageGenCompletedEvent]
    assert kinds == per_image * 2
    assert [e.partial_image_index for e in events if isinstance(e, ImageGenPartialImageEvent)] == [0, 1, 0, 1]
    assert decoded(events[-1].b64_json).size == (1024, 1024)
    assert stream.closed


def test_edit_stream(images: ImagesApi) -> None:
    with images.create_image_edit(
        png(), "a hat", model="gpt-image-1", quality="low", size="1024x1024", stream=True, partial_images=1
    ) as stream:
        events = list(stream)
    assert [type(e) for e in events] == [ImageEditPartialImageEvent, ImageEditCompletedEvent]


def test_breaking_early_closes_the_connection(images: ImagesApi) -> None:
    stream = images.create_image(
        prompt="a long one",
        model="gpt-image-1",
        size="1024x1024",
        quality="low",
        n=3,
        stream=True,
        partial_images=3,
    )
    for event in stream:
        assert isinstance(event, ImageGenPartialImageEvent)
        break
    assert stream.closed
    # the server is still fine afterwards
    assert images.create_image(prompt="after", size="256x256").data


def test_a_large_image_streams_whole(images: ImagesApi) -> None:
    """A finished 1536x1024 high-quality PNG is well over httpx2's default 1 MiB event cap."""
    stream = images.create_image(
        prompt="a noisy field of many coloured stars",
        model="gpt-image-1",
        size="1536x1024",
        quality="high",
        stream=True,
        partial_images=1,
    )
    events = list(stream)
    final = events[-1]
    assert isinstance(final, ImageGenCompletedEvent)
    assert len(final.b64_json) > 1024 * 1024  # the case that broke before
    assert decoded(final.b64_json).size == (1536, 1024)


def test_the_event_cap_is_the_clients_setting(server: RunningServer) -> None:
    """A cap below the event's size still breaks the stream, with a message that names the limit."""
    config = Configuration(host=server.api_base, access_token=None, max_stream_event_bytes=64 * 1024)
    with ApiClient(config) as client:
        stream = ImagesApi(client).create_image(
            prompt="a noisy field of many coloured stars", model="gpt-image-1", size="1024x1024", stream=True
        )
        with pytest.raises(ApiConnectionError, match="65536 byte limit"):
            list(stream)
