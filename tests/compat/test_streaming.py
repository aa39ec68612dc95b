"""stream=true on generations and edits: SSE events through the official openai package."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest

from tests.support import schema
from tests.support.images import decode_b64, gradient, half_mask, png_bytes
from tests.support.server import RunningServer

EVENT_SCHEMAS = {
    "image_generation.partial_image": "ImageGenPartialImageEvent",
    "image_generation.completed": "ImageGenCompletedEvent",
    "image_edit.partial_image": "ImageEditPartialImageEvent",
    "image_edit.completed": "ImageEditCompletedEvent",
}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="unused", max_retries=0)


def check_events(events: list[Any], kind: str, n: int, partials: int) -> None:
    expected: list[str] = []
    for _ in range(n):
        expected += [f"{kind}.partial_image"] * partials + [f"{kind}.completed"]
    assert [e.type for e in events] == expected
    for event in events:
        schema.validate(event.model_dump(exclude_none=True), EVENT_SCHEMAS[event.type], free_size=True)
    indexes = [e.partial_image_index for e in events if e.type.endswith("partial_image")]
    assert indexes == list(range(partials)) * n


@pytest.mark.parametrize("partials", [0, 1, 3])
def test_generation_stream(client: openai.OpenAI, partials: int) -> None:
    stream = client.images.generate(
        model="gpt-image-1",
        prompt="a blue wave",
        stream=True,
        partial_images=partials,
        quality="low",
        size="1024x1536",
    )
    events = list(stream)
    check_events(events, "image_generation", 1, partials)
    final = events[-1]
    assert final.size == "1024x1536" and final.quality == "low" and final.output_format == "png"
    assert decode_b64(final.b64_json).size == (1024, 1536)
    assert final.usage.output_tokens == 408 and final.usage.total_tokens > 408


def test_stream_echoes_the_request_and_n_images_come_in_order(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(
            model="gpt-image-1",
            prompt="x",
            stream=True,
            partial_images=2,
            n=2,
            quality="auto",
            size="auto",
            background="auto",
            output_format="webp",
        )
    )
    check_events(events, "image_generation", 2, 2)
    assert {(e.size, e.quality, e.background) for e in events} == {("auto", "auto", "auto")}
    finals = [decode_b64(e.b64_json) for e in events if e.type.endswith("completed")]
    assert [f.format for f in finals] == ["WEBP", "WEBP"] and finals[0].tobytes() != finals[1].tobytes()


def test_partials_go_coarse_to_fine(client: openai.OpenAI) -> None:
    import numpy as np

    events = list(
        client.images.generate(
            model="gpt-image-1",
            prompt="a house and a tree",
            stream=True,
            partial_images=3,
            quality="high",
            extra_body={"seed": 5},
        )
    )
    final = np.asarray(decode_b64(events[-1].b64_json).convert("RGB"), dtype=np.float64)
    distances = [
        np.abs(
            np.asarray(decode_b64(e.b64_json).convert("RGB").resize(final.shape[1::-1]), dtype=np.float64)
            - final
        ).mean()
        for e in events[:-1]
    ]
    assert distances == sorted(distances, reverse=True) and distances[-1] < distances[0]


def test_streamed_and_plain_results_match_for_a_seed(client: openai.OpenAI) -> None:
    plain = client.images.generate(
        model="gpt-image-1", prompt="a moon", quality="low", n=2, extra_body={"seed": 77}
    )
    streamed = [
        e.b64_json
        for e in client.images.generate(
            model="gpt-image-1", prompt="a moon", quality="low", n=2, stream=True, extra_body={"seed": 77}
        )
    ]
    assert streamed == [d.b64_json for d in plain.data or []]


def test_edit_stream_with_mask(client: openai.OpenAI) -> None:
    stream = client.images.edit(
        model="gpt-image-1",
        image=("a.png", png_bytes(gradient(256, 256)), "image/png"),
        mask=("m.png", png_bytes(half_mask()), "image/png"),
        prompt="a star",
        stream=True,
        partial_images=2,
        quality="low",
    )
    events = list(stream)
    check_events(events, "image_edit", 1, 2)
    assert events[-1].usage.input_tokens_details.image_tokens == 65


def test_async_stream(server: RunningServer) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.api_base, api_key="x", max_retries=0) as aclient:
            stream = await aclient.images.generate(
                model="gpt-image-1", prompt="x", stream=True, partial_images=1, quality="low"
            )
            gen_types = [event.type async for event in stream]
            edit = await aclient.images.edit(
                model="gpt-image-1",
                prompt="x",
                stream=True,
                partial_images=1,
                image=("a.png", png_bytes(gradient(64, 64)), "image/png"),
            )
            return gen_types + [event.type async for event in edit]

    assert asyncio.run(run()) == [
        "image_generation.partial_image",
        "image_generation.completed",
        "image_edit.partial_image",
        "image_edit.completed",
    ]


def test_stream_is_decided_by_the_body_not_accept(server: RunningServer) -> None:
    answer = httpx2.post(
        server.api_base + "/images/generations",
        headers={"accept": "application/json"},
        json={"model": "gpt-image-1", "prompt": "x", "stream": True, "quality": "low"},
    )
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.text.startswith("event: image_generation.completed\ndata: {")
    plain = httpx2.post(
        server.api_base + "/images/generations",
        headers={"accept": "text/event-stream"},
        json={"model": "gpt-image-1", "prompt": "x", "quality": "low"},
    )
    assert plain.headers["content-type"].startswith("application/json")


def test_stream_errors_before_start_are_plain_http_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="dall-e-2", prompt="x", stream=True)
    assert info.value.param == "stream"


#: Ten large, detailed images: seconds of work that a cancelled job does not finish.
BIG = dict(model="gpt-image-2", prompt="a detailed city", n=10, quality="high", size="3840x2160")


def test_leaving_a_stream_stops_the_work(client: openai.OpenAI, server: RunningServer) -> None:
    server.wait_idle()
    done, cancelled = server.jobs()
    stream = client.images.generate(stream=True, partial_images=3, **BIG)  # type: ignore[call-overload]
    first = next(iter(stream))
    assert first.type == "image_generation.partial_image"
    stream.close()
    server.wait_idle()
    # The stream's first image job was stopped, and no later one started: nothing ran to the end.
    assert server.jobs() == (done, cancelled + 1)


def test_leaving_a_plain_request_stops_the_work(server: RunningServer) -> None:
    """Not streaming: the server watches the connection while the engine works and cancels the job."""
    server.wait_idle()
    done, cancelled = server.jobs()
    impatient = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(**BIG)  # type: ignore[call-overload]
    server.wait_idle()
    assert server.jobs() == (done, cancelled + 1)  # stopped, not finished
