"""The scheduler through the app: limits built at start-up, up-front refusals, batches across requests,
dropped images of clients who left, fair turns between keys, freed places and per-key limits.

The engine is tests/support/engines.GateEngine, handed in with `create_app(settings, engines=...)`:
each run waits until the test lets it through, so queues are filled and read without any timing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from limner.server.app import create_app
from limner.server.settings import ModelConfig, Settings
from limner.stores.keys import SqliteKeyStore
from tests.support.engines import GateEngine, colour_of
from tests.support.inprocess import app_client

GENERATIONS = "/v1/images/generations"


def body(model: str, seed: int, **fields: Any) -> dict[str, Any]:
    size = {"dall-e-2": "256x256", "gpt-image-1": "1024x1024"}.get(model, "64x64")
    return {
        "model": model,
        "prompt": "x",
        "size": size,
        "seed": seed,
        "response_format": "b64_json",
        **fields,
    }


def post(client: httpx2.AsyncClient, payload: dict[str, Any], **kwargs: Any) -> asyncio.Task[httpx2.Response]:
    return asyncio.ensure_future(client.post(GENERATIONS, json=payload, **kwargs))


def stats(client: httpx2.AsyncClient, model: str) -> dict[str, Any]:
    health: dict[str, Any] = client.app.state.scheduler.health()  # type: ignore[attr-defined]
    return dict(health[model])


async def until(condition: Any, timeout: float = 60.0) -> None:
    """Poll a condition with a generous deadline (the event loop keeps serving meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


def colour(response: httpx2.Response) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    pixel: tuple[int, int, int] = image.convert("RGB").getpixel((0, 0))  # type: ignore[assignment]
    return pixel


async def settle(tasks: list[asyncio.Task[httpx2.Response]]) -> list[httpx2.Response]:
    return list(await asyncio.gather(*tasks))


# -- limits are the configuration's, whatever arrives first ------------------------------------------


@pytest.mark.parametrize("first", ["gpt-image-1", "dall-e-2"])
async def test_queue_limits_do_not_depend_on_the_first_request(tmp_path: Path, first: str) -> None:
    engine = GateEngine(batches=False)
    settings = Settings(data_dir=tmp_path, models={"dall-e-2": ModelConfig(max_queue=2)})
    async with app_client(settings, engines={"dall-e-2": engine, "gpt-image-1": engine}) as client:
        tasks = [post(client, body(first, 1))]
        await engine.began(1)
        tasks += [post(client, body("dall-e-2", s)) for s in (2, 3)]
        await until(lambda: stats(client, "dall-e-2")["queued"] == 2)
        refused = await client.post(GENERATIONS, json=body("dall-e-2", 4))
        assert refused.status_code == 429  # dall-e-2's own limit holds...
        tasks += [post(client, body("gpt-image-1", s)) for s in (5, 6, 7)]
        await until(lambda: stats(client, "gpt-image-1")["queued"] == 3)  # ...and is not gpt-image-1's
        engine.open()
        assert [r.status_code for r in await settle(tasks)] == [200] * 6


async def test_a_model_with_no_queue_does_not_close_the_others(tmp_path: Path) -> None:
    engine = GateEngine(batches=False)
    settings = Settings(data_dir=tmp_path, models={"slow": ModelConfig(max_queue=0)})
    async with app_client(settings, engines={"slow": engine, "gpt-image-1": engine}) as client:
        tasks = [post(client, body("slow", 1))]
        await engine.began(1)
        tasks += [post(client, body("gpt-image-1", s)) for s in (2, 3)]
        await until(lambda: stats(client, "gpt-image-1")["queued"] == 2)
        assert (await client.post(GENERATIONS, json=body("slow", 4))).status_code == 429
        engine.open()
        assert [r.status_code for r in await settle(tasks)] == [200] * 3


def test_a_concurrency_that_cannot_be_honoured_stops_start_up(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, sketch_concurrency=2, models={"slow": ModelConfig(engine="sketch", concurrency=1)}
    )
    with pytest.raises(ValueError, match=r"models\.slow\.concurrency"):
        create_app(settings)


# -- the engine refuses up front -----------------------------------------------------------------


async def test_a_stream_the_engine_cannot_make_is_a_plain_400(tmp_path: Path) -> None:
    engine = GateEngine(max_side=256)
    async with app_client(Settings(data_dir=tmp_path), engines={"small": engine}) as client:
        response = await client.post(
            GENERATIONS, json={"model": "small", "prompt": "x", "size": "512x512", "stream": True}
        )
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["param"] == "size"
        assert engine.runs == []  # nothing was queued


# -- batches across requests ------------------------------------------------------------------------


async def test_concurrent_requests_share_one_engine_run_and_keep_their_own_images(tmp_path: Path) -> None:
    engine = GateEngine(max_batch=8)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = post(client, body("m", 100))
        await engine.began(1)
        tasks = [post(client, body("m", seed)) for seed in (1, 2, 3, 4)]
        await until(lambda: stats(client, "m")["queued"] == 4)
        engine.open()
        first, *batched = await settle([blocker, *tasks])
        assert engine.runs == [[100], [1, 2, 3, 4]]
        assert first.headers["x-limner-batch-size"] == "1"
        for seed, response in zip((1, 2, 3, 4), batched, strict=True):
            assert response.status_code == 200
            assert response.headers["x-limner-batch-size"] == "4"
            assert int(response.headers["x-limner-queue-ms"]) >= 0
            assert colour(response) == colour_of(seed)  # its own seed's image, not a neighbour's
        model = stats(client, "m")
        assert (model["batches"], model["done"], model["mean_batch_size"]) == (2, 5, 2.5)


async def test_a_batch_holds_at_most_max_batch_images(tmp_path: Path) -> None:
    engine = GateEngine(max_batch=4)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = post(client, body("m", 100))
        await engine.began(1)
        tasks = [post(client, body("m", seed, n=n)) for seed, n in ((1, 3), (2, 2), (3, 1))]
        await until(lambda: stats(client, "m")["queued"] == 3)
        engine.open()
        await settle([blocker, *tasks])
        assert engine.runs == [[100], [1, 3], [2]]  # 3 + 1 images fit in four; 2 waits


async def test_a_client_that_leaves_a_batch_loses_only_its_images(tmp_path: Path) -> None:
    engine = GateEngine(max_batch=8)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = post(client, body("m", 100))
        await engine.began(1)
        leaving, staying = post(client, body("m", 1)), post(client, body("m", 2))
        await until(lambda: stats(client, "m")["queued"] == 2)
        engine.let_through()
        await engine.began(2)  # the batch [1, 2] is running
        leaving.cancel()
        await asyncio.wait([leaving])  # the request is gone: its job is told so
        engine.let_through()
        response = await staying
        assert response.status_code == 200 and colour(response) == colour_of(2)
        await blocker
        assert engine.runs[1] == [1, 2]
        assert (stats(client, "m")["done"], stats(client, "m")["cancelled"]) == (2, 1)


async def test_a_batch_everyone_left_stops(tmp_path: Path) -> None:
    engine = GateEngine(max_batch=8)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = post(client, body("m", 100))
        await engine.began(1)
        tasks = [post(client, body("m", s)) for s in (1, 2)]
        await until(lambda: stats(client, "m")["queued"] == 2)
        engine.let_through()
        await engine.began(2)
        for task in tasks:
            task.cancel()
        # No permit is given: the run ends because nobody waits for it.
        await until(lambda: stats(client, "m")["cancelled"] == 2 and stats(client, "m")["running"] == 0)
        await blocker


# -- fairness and back-pressure ------------------------------------------------------------------


async def test_one_key_with_many_jobs_delays_another_by_at_most_one_batch(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    (_, alice), (_, bob) = store.create("alice"), store.create("bob")
    engine = GateEngine(batches=False)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        as_alice = {"headers": {"authorization": f"Bearer {alice}"}}
        tasks = [post(client, body("m", 1), **as_alice)]
        await engine.began(1)
        tasks += [post(client, body("m", seed), **as_alice) for seed in range(2, 8)]
        await until(lambda: stats(client, "m")["queued"] == 6)
        tasks.append(post(client, body("m", 50), headers={"authorization": f"Bearer {bob}"}))
        await until(lambda: stats(client, "m")["queued"] == 7)
        engine.open()
        assert all(r.status_code == 200 for r in await settle(tasks))
        order = [run[0] for run in engine.runs]
        assert order[:3] == [1, 50, 2]  # bob's one job runs right after the batch that was running


async def test_a_cancelled_job_frees_its_place_at_once(tmp_path: Path) -> None:
    engine = GateEngine(batches=False)
    settings = Settings(data_dir=tmp_path, models={"m": ModelConfig(max_queue=1)})
    async with app_client(settings, engines={"m": engine}) as client:
        blocker = post(client, body("m", 100))
        await engine.began(1)
        waiting = post(client, body("m", 1))
        await until(lambda: stats(client, "m")["queued"] == 1)
        assert (await client.post(GENERATIONS, json=body("m", 2))).status_code == 429
        waiting.cancel()
        await until(lambda: stats(client, "m")["queued"] == 0)
        third = post(client, body("m", 3))  # the place is free before any worker came by
        await until(lambda: stats(client, "m")["queued"] == 1)
        engine.open()
        assert (await third).status_code == 200 and (await blocker).status_code == 200
        assert [run[0] for run in engine.runs] == [100, 3]


@pytest.mark.parametrize(
    "limits,name",
    [({"max_queued_per_key": 1}, "max_queued_per_key"), ({"max_running_per_key": 1}, "max_running_per_key")],
)
async def test_per_key_limits_name_what_was_exceeded(
    tmp_path: Path, limits: dict[str, int], name: str
) -> None:
    engine = GateEngine(batches=False)
    settings = Settings(data_dir=tmp_path, **limits)  # type: ignore[arg-type]
    async with app_client(settings, engines={"m": engine}) as client:
        tasks = [post(client, body("m", 1))]
        await engine.began(1)
        if name == "max_queued_per_key":
            tasks.append(post(client, body("m", 2)))
            await until(lambda: stats(client, "m")["queued"] == 1)
        refused = await client.post(GENERATIONS, json=body("m", 3))
        assert refused.status_code == 429 and name in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        engine.open()
        await settle(tasks)


async def test_health_reports_each_model(tmp_path: Path) -> None:
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        assert (await client.post(GENERATIONS, json=body("m", 1))).status_code == 200
        health = (await client.get("/health")).json()["scheduler"]["m"]
        assert health["done"] == 1 and health["batches"] == 1 and health["mean_batch_size"] == 1.0
        assert health["queued"] == 0 and health["running"] == 0 and health["mean_seconds_per_job"] >= 0
