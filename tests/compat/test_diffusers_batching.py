"""Batching across requests on a real diffusers pipeline, through `limner serve` and the `openai`
package: concurrent requests share one pipeline call, each gets its own seeded images (equal to the
unbatched ones up to float noise), and concurrent streams each get their own previews."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from tests.support.images import decode_b64
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers

#: The largest difference allowed, in 8-bit levels, between a batched image and the same image made
#: alone. Measured on the CPU with the tiny pipeline, 8 images at 64x64 and 256x256: at most 1 level
#: (batched convolutions sum in another order). A wrong seed or prompt differs by tens of levels.
BATCH_NOISE_LEVELS = 2


@pytest.fixture(scope="module")
def batching_server(
    tiny_text2image_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = tmp_path_factory.mktemp("batching") / "limner.toml"
    config.write_text(
        f'[models.tiny]\nengine = "diffusers"\nsource = "{tiny_text2image_dir}"\ndevice = "cpu"\n'
        'load = "startup"\nmax_batch = 8\nmax_queue = 16\n'
    )
    with start_server(
        tmp_path_factory.mktemp("batching-data"), "--config", str(config), timeout=180
    ) as running:
        yield running


def generate(
    server: RunningServer, seed: int, steps: int = 3, **fields: Any
) -> tuple[np.ndarray, dict[str, str]]:
    client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=600)
    raw = client.images.with_raw_response.generate(
        model="tiny",
        prompt=f"a picture number {seed}",
        size="64x64",  # type: ignore[arg-type]
        extra_body={"seed": seed, "num_inference_steps": steps, **fields},
    )
    image = decode_b64(raw.http_response.json()["data"][0]["b64_json"])
    return np.asarray(image.convert("RGB"), dtype=np.int16), dict(raw.http_response.headers)


def in_threads(calls: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for(server: RunningServer, condition: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 300
    while not condition(server.health()["scheduler"]["tiny"]):
        assert time.monotonic() < deadline, server.health()
        time.sleep(0.01)


def behind_a_blocker(server: RunningServer, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run `calls` while a long job holds the pipeline, so that they queue and leave as one batch."""
    blocker, _ = in_threads([lambda: generate(server, 999, steps=150)])
    wait_for(server, lambda s: s["running"] == 1)
    threads, results = in_threads(calls)
    wait_for(server, lambda s: s["queued"] == len(calls))
    for thread in blocker + threads:
        thread.join()
    return results


def test_concurrent_requests_batch_and_keep_their_own_images(batching_server: RunningServer) -> None:
    seeds = [11, 12, 13, 14]
    alone = {seed: generate(batching_server, seed) for seed in seeds}
    assert all(headers["x-limner-batch-size"] == "1" for _, headers in alone.values())
    batched = behind_a_blocker(batching_server, [lambda s=s: generate(batching_server, s) for s in seeds])
    for seed, (image, headers) in zip(seeds, batched, strict=True):
        assert headers["x-limner-batch-size"] == "4"
        assert int(np.abs(image - alone[seed][0]).max()) <= BATCH_NOISE_LEVELS
        for other in seeds:
            if other != seed:  # and clearly not another request's picture
                assert float(np.abs(image - alone[other][0]).mean()) > 4 * BATCH_NOISE_LEVELS


def test_concurrent_streams_each_get_their_own_previews(batching_server: RunningServer) -> None:
    def stream(seed: int) -> tuple[list[str], str]:
        client = openai.OpenAI(base_url=batching_server.api_base, api_key="x", max_retries=0, timeout=600)
        with client.images.with_streaming_response.generate(
            model="tiny",
            prompt=f"stream {seed}",
            size="64x64",  # type: ignore[arg-type]
            stream=True,
            partial_images=2,
            extra_body={"seed": seed, "num_inference_steps": 4},
        ) as response:
            events = [
                line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")
            ]
            return events, response.headers["x-limner-batch-size"]

    results = behind_a_blocker(batching_server, [lambda: stream(21), lambda: stream(22)])
    for events, batch_size in results:
        assert batch_size == "2"
        assert events == [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed",
        ]


def test_a_repeated_prompt_is_encoded_once_and_draws_the_same(batching_server: RunningServer) -> None:
    def hits() -> float:
        metrics = httpx2.get(f"{batching_server.base_url}/metrics").text
        line = next(
            x for x in metrics.splitlines() if x.startswith('limner_prompt_cache_hits_total{model="tiny"}')
        )
        return float(line.split()[-1])

    first, _ = generate(batching_server, 71)
    before = hits()
    again, _ = generate(batching_server, 71)  # the same prompt: its embeddings come from the cache
    assert hits() > before
    assert int(np.abs(first - again).max()) == 0  # lossless
