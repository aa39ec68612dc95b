"""Streams against a scripted server: typed events, closing on end and break, error events, no retry
once started. (The same against `limner serve` is in test_e2e_streaming.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from limner.client import (
    ApiClient,
    ApiConnectionError,
    ApiResponseValidationError,
    ApiStreamError,
    AsyncApiClient,
    AsyncImagesApi,
    Configuration,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesApi,
    Stream,
)
from tests.client.scripted_server import Reply, scripted

COMMON = {
    "b64_json": "aGk=",
    "created_at": 1,
    "size": "1024x1024",
    "quality": "low",
    "background": "opaque",
    "output_format": "png",
}
USAGE = {
    "total_tokens": 3,
    "input_tokens": 1,
    "output_tokens": 2,
    "input_tokens_details": {"text_tokens": 1, "image_tokens": 0},
}


def sse(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


PARTIAL = [
    sse(
        {"type": "image_generation.partial_image", "partial_image_index": i, **COMMON},
        "image_generation.partial_image",
    )
    for i in range(2)
]
COMPLETED = sse(
    {"type": "image_generation.completed", "usage": USAGE, **COMMON}, "image_generation.completed"
)
ERROR_EVENT = sse(
    {"error": {"message": "engine died", "type": "server_error", "param": None, "code": "engine_failed"}},
    "error",
)


def stream_reply(*chunks: bytes) -> Reply:
    return Reply(chunks=list(chunks), content_type="text/event-stream")


def images(url: str) -> ImagesApi:
    return ImagesApi(ApiClient(Configuration(host=url, max_retries=2)))


def test_events_arrive_typed_and_the_stream_closes_at_the_end() -> None:
    with scripted(stream_reply(*PARTIAL, COMPLETED)) as server:
        stream = images(server.url).create_image(
            prompt="p", model="gpt-image-1", stream=True, partial_images=2
        )
        assert isinstance(stream, Stream) and not stream.closed
        events = list(stream)
    assert [type(e) for e in events] == [ImageGenPartialImageEvent] * 2 + [ImageGenCompletedEvent]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert events[2].usage.total_tokens == 3
    assert stream.closed
    assert json.loads(server.received[0].body)["stream"] is True


def test_breaking_out_of_the_loop_closes_the_stream() -> None:
    with scripted(stream_reply(*PARTIAL, COMPLETED)) as server:
        stream = images(server.url).create_image(prompt="p", stream=True)
        for _event in stream:
            break
        assert stream.closed


def test_an_error_event_raises_with_the_envelope() -> None:
    with scripted(stream_reply(PARTIAL[0], ERROR_EVENT)) as server:
        stream = images(server.url).create_image(prompt="p", stream=True)
        seen = []
        with pytest.raises(ApiStreamError) as caught:
            for event in stream:
                seen.append(event)
    assert len(seen) == 1 and stream.closed
    assert (caught.value.message, caught.value.code, caught.value.type) == (
        "engine died",
        "engine_failed",
        "server_error",
    )


def test_a_started_stream_that_breaks_is_not_retried() -> None:
    with scripted(stream_reply(PARTIAL[0], b"<drop>"), stream_reply(*PARTIAL, COMPLETED)) as server:
        stream = images(server.url).create_image(prompt="p", stream=True)
        with pytest.raises(ApiConnectionError):
            list(stream)
    assert server.attempts == 1


def test_done_ends_the_stream_and_a_json_answer_is_refused() -> None:
    with scripted(stream_reply(PARTIAL[0], b"data: [DONE]\n\n", COMPLETED)) as server:
        assert len(list(images(server.url).create_image(prompt="p", stream=True))) == 1
    with scripted(Reply()) as server, pytest.raises(ApiResponseValidationError):
        list(images(server.url).create_image(prompt="p", stream=True))


def test_async_stream_iterates_closes_on_break_and_raises_on_error() -> None:
    async def run(url: str) -> None:
        async with AsyncApiClient(Configuration(host=url)) as client:
            api = AsyncImagesApi(client)
            stream = await api.create_image(prompt="p", stream=True)
            events = [event async for event in stream]
            assert [e.type for e in events][-1] == "image_generation.completed" and stream.closed

            stream = await api.create_image(prompt="p", stream=True)
            async for _event in stream:
                break
            await asyncio.sleep(0.05)  # asyncio finalizes an abandoned async generator on its next turn
            assert stream.closed

            stream = await api.create_image(prompt="p", stream=True)
            async with stream:
                with pytest.raises(ApiStreamError, match="engine died"):
                    async for _event in stream:
                        pass

    with scripted(
        stream_reply(*PARTIAL, COMPLETED), stream_reply(*PARTIAL, COMPLETED), stream_reply(ERROR_EVENT)
    ) as server:
        asyncio.run(run(server.url))
