"""429 answers: their grammar, and a Retry-After measured from the time jobs really take."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from limner.server.settings import ModelConfig, Settings
from tests.support.inprocess import app_client

GENERATIONS = "/v1/images/generations"


async def test_a_full_queue_answers_429_with_a_measured_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, sketch_concurrency=1, models={"slow": ModelConfig(engine="sketch", max_queue=0)}
    )
    async with app_client(settings) as client:
        small = {"model": "slow", "prompt": "x", "size": "64x64", "response_format": "b64_json"}
        for _ in range(3):  # measured: each takes milliseconds
            assert (await client.post(GENERATIONS, json=small)).status_code == 200
        scheduler = client.app.state.scheduler  # type: ignore[attr-defined]
        lane = scheduler.lanes["sketch"]
        assert lane.stat("slow").batch_seconds_avg < 1.0
        big = {**small, "size": "2048x2048", "n": 10, "quality": "high"}
        running = asyncio.ensure_future(client.post(GENERATIONS, json=big))
        for _ in range(12000):
            if scheduler.health()["slow"]["running"]:
                break
            await asyncio.sleep(0.01)
        refused = await client.post(GENERATIONS, json=small)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert "1 request is in progress or queued" in error["message"]
        # One job ahead at milliseconds a job: one second, where `1 + pending` said two.
        assert refused.headers["retry-after"] == "1"
        assert (await running).status_code == 200


def test_retry_after_grows_with_the_queue_and_the_time_per_batch() -> None:
    from limner.engines.sketch import SketchEngine
    from limner.scheduler import Lane

    lane = Lane("q", SketchEngine(), concurrency=2, max_batch=1)
    assert lane.retry_after("m", 0) == 1  # nothing measured yet
    lane.stat("m").batch_seconds_avg = 3.0
    # One more job after `ahead` jobs, two workers, three seconds a batch of one job.
    assert lane.retry_after("m", 0) == 3 and lane.retry_after("m", 1) == 3 and lane.retry_after("m", 5) == 9


async def test_start_up_block(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="limner")
    settings = Settings(data_dir=tmp_path, port=9123, models={"house": ModelConfig(engine="sketch")})
    async with app_client(settings):
        pass
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "limner serving on http://127.0.0.1:9123" in text
    assert f"data dir: {tmp_path}" in text
    assert "API keys: not required (no key created yet)" in text
    assert any(line.split() == ["house", "sketch", "loaded"] for line in text.splitlines())


@pytest.mark.diffusers
async def test_start_up_block_shows_a_diffusers_models_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tiny_text2image_dir: Path
) -> None:
    caplog.set_level(logging.INFO, logger="limner")
    table = ModelConfig(engine="diffusers", source=str(tiny_text2image_dir), device="cpu")  # type: ignore[call-arg]
    async with app_client(Settings(data_dir=tmp_path, models={"tiny": table})):
        pass
    lines = [line.split() for r in caplog.records for line in r.getMessage().splitlines()]
    assert ["tiny", "diffusers", str(tiny_text2image_dir), "loads", "on", "first", "request"] in lines
