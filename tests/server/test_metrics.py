"""GET /metrics, read with prometheus_client's own parser: counters and histograms move by the amounts
known requests should move them, a 429 and a cancellation included; and the structured request log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from limner.server.settings import ModelConfig, Settings
from limner.stores.keys import SqliteKeyStore
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client
from tests.support.server import start_server

GENERATIONS = "/v1/images/generations"
ROUTE = "/v1/images/generations"


async def scrape(client: httpx2.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_and_histograms_follow_known_requests(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path)) as client:
        before = await scrape(client)
        body = {"model": "gpt-image-1", "prompt": "a secret prompt", "quality": "low", "size": "1024x1024"}
        assert (await client.post(GENERATIONS, json={**body, "n": 2})).status_code == 200
        assert (await client.post(GENERATIONS, json={**body, "response_format": "url"})).status_code == 200
        assert (await client.post(GENERATIONS, json={**body, "model": "no-such"})).status_code == 404
        after = await scrape(client)
        text = (await client.get("/metrics")).text

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": ROUTE, "model": "gpt-image-1", "status": "200"}
    assert moved("limner_requests_total", **ok) == 2
    assert moved("limner_requests_total", route=ROUTE, model="-", status="404") == 1  # unknown names: "-"
    assert moved("limner_request_duration_seconds_count", route=ROUTE, model="gpt-image-1") == 2
    job = {"model": "gpt-image-1", "operation": "generate"}
    assert moved("limner_images_total", **job) == 3
    assert moved("limner_queue_wait_seconds_count", **job) == 2
    assert moved("limner_engine_run_seconds_count", **job) == 2
    assert moved("limner_encode_seconds_count", **job) == 2
    assert moved("limner_store_seconds_count", **job) == 1  # only the url response stored anything
    assert moved("limner_batch_size_sum", model="gpt-image-1") == 3
    assert moved("limner_batch_size_count", model="gpt-image-1") == 2
    assert value(after, "limner_model_loaded", model="gpt-image-1") == 1
    assert value(after, "limner_queue_depth", model="gpt-image-1") == 0
    assert "secret prompt" not in text and "no-such" not in text  # no client text in labels


async def test_a_429_and_a_cancellation_are_counted(tmp_path: Path) -> None:
    engine = GateEngine(batches=False)
    settings = Settings(data_dir=tmp_path, models={"m": ModelConfig(max_queue=1)})
    async with app_client(settings, engines={"m": engine}) as client:
        body = {"model": "m", "prompt": "x", "size": "64x64", "seed": 1}
        running = asyncio.ensure_future(client.post(GENERATIONS, json=body))
        await engine.began(1)
        waiting = asyncio.ensure_future(client.post(GENERATIONS, json={**body, "seed": 2}))
        while client.app.state.scheduler.health()["m"]["queued"] < 1:  # type: ignore[attr-defined]
            await asyncio.sleep(0.005)
        during = await scrape(client)
        assert value(during, "limner_queue_depth", model="m") == 1
        assert value(during, "limner_running_jobs", model="m") == 1
        assert (await client.post(GENERATIONS, json={**body, "seed": 3})).status_code == 429
        waiting.cancel()
        await asyncio.wait([waiting])
        engine.open()
        assert (await running).status_code == 200
        after = await scrape(client)
    assert value(after, "limner_rejected_requests_total", model="m", reason="queue_full") == 1
    assert value(after, "limner_requests_total", route=ROUTE, model="m", status="429") == 1
    assert value(after, "limner_cancelled_jobs_total", model="m") == 1
    assert value(after, "limner_queue_depth", model="m") == 0


async def test_metrics_can_be_off_or_behind_the_key(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path / "off", metrics=False)) as client:
        assert (await client.get("/metrics")).status_code == 404
    _, key = SqliteKeyStore(tmp_path / "keyed" / "keys.sqlite3").create()
    settings = Settings(data_dir=tmp_path / "keyed", metrics_require_key=True, metrics_per_key=True)
    async with app_client(settings) as client:
        assert (await client.get("/metrics")).status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        await client.get("/v1/models", headers=auth)
        response = await client.get("/metrics", headers=auth)
        assert response.status_code == 200
        key_id = SqliteKeyStore(tmp_path / "keyed" / "keys.sqlite3").list()[0].id
        assert f'key="{key_id}"' in response.text and key not in response.text


def test_json_logs_write_one_object_per_request(tmp_path: Path) -> None:
    with start_server(tmp_path / "data", "--log-format", "json") as server:
        body = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "n": 2, "size": "1024x1536"}
        response = httpx2.post(server.api_base + "/images/generations", json=body, timeout=120)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        # A request with an Idempotency-Key is a job: its record and headers say the same.
        keyed = httpx2.post(
            server.api_base + "/images/generations", json=body, headers={"idempotency-key": "k"}, timeout=120
        )
        assert keyed.status_code == 200 and int(keyed.headers["x-limner-batch-size"]) >= 1
        assert int(keyed.headers["x-limner-queue-ms"]) >= 0
        wanted = (request_id, keyed.headers["x-request-id"])
        for rid in wanted:  # each access record is written once its answer has gone
            server.log_line("limner.access", rid)
        lines = server.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len([line for line in lines if line.strip()])  # every line is JSON
    (access,) = [r for r in records if r["logger"] == "limner.access" and r["request_id"] == request_id]
    assert access["route"] == ROUTE and access["model"] == "gpt-image-1" and access["status"] == 200
    assert access["n"] == 2 and access["size"] == "1024x1536"
    assert access["queue_ms"] >= 0 and access["run_ms"] >= 0 and access["key_id"] is None
    (job,) = [r for r in records if r["logger"] == "limner.access" and r["request_id"] == wanted[1]]
    assert job["queue_ms"] >= 0 and job["run_ms"] >= 0 and job["status"] == 200


async def test_a_400_for_a_served_model_counts_under_that_model(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # not decodable: a 400 after the model is known
    async with app_client(Settings(data_dir=tmp_path)) as client:
        before = await scrape(client)
        bad_size = {"model": "gpt-image-1", "prompt": "x", "size": "999x999"}
        assert (await client.post(GENERATIONS, json=bad_size)).status_code == 400
        assert (await client.post(GENERATIONS, json={**bad_size, "n": "many"})).status_code == 400
        assert (await client.post(GENERATIONS, json={"prompt": "x", "size": "999x999"})).status_code == 400
        edit = await client.post(
            "/v1/images/edits", data={"model": "dall-e-2", "prompt": "x"}, files={"image": ("a.png", png)}
        )
        vary = await client.post(
            "/v1/images/variations", data={"model": "dall-e-2"}, files={"image": ("a.png", png)}
        )
        assert edit.status_code == vary.status_code == 400
        weird = {"model": "no such\nmodel", "prompt": "x"}
        assert (await client.post(GENERATIONS, json=weird)).status_code == 404
        after = await scrape(client)

    def moved(route: str, model: str, status: str) -> float:
        labels = {"route": route, "model": model, "status": status}
        return value(after, "limner_requests_total", **labels) - value(
            before, "limner_requests_total", **labels
        )

    assert moved(ROUTE, "gpt-image-1", "400") == 2
    assert moved(ROUTE, "dall-e-2", "400") == 1  # no model named: the default generation model's
    assert moved("/v1/images/edits", "dall-e-2", "400") == 1
    assert moved("/v1/images/variations", "dall-e-2", "400") == 1
    assert moved(ROUTE, "-", "404") == 1  # a name the server does not serve stays "-"


def test_text_logs_carry_the_request_id_on_the_access_line(tmp_path: Path) -> None:
    with start_server(tmp_path / "data") as server:
        response = httpx2.get(server.api_base + "/models", timeout=60)
        request_id = response.headers["x-request-id"]
        line = server.log_line(f"request_id={request_id}")
        assert [other for other in server.log().splitlines() if request_id in other] == [line]  # one line
    assert line.startswith("INFO limner.access: GET /v1/models 200 request_id=req_")
