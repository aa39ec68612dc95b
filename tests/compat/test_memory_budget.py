"""Two models under a memory budget that fits one, through `limner serve` and the `openai` package:
requests alternating between them all succeed, each model is loaded when asked for and the other
unloaded (counted in /metrics, never both resident), and a model whose checkpoint is damaged answers a
503 naming it while the others keep answering."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import openai
import pytest

from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers


@pytest.fixture(scope="module")
def budget_server(
    tiny_text2image_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("budget")
    broken = root / "broken"
    shutil.copytree(tiny_text2image_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    models = "".join(
        # No prompt cache: its bytes would count against the budget beside the weights.
        f'[models.{name}]\nengine = "diffusers"\nsource = "{source}"\ndevice = "cpu"\nprompt_cache_mb = 0\n'
        for name, source in (("one", tiny_text2image_dir), ("two", tiny_text2image_dir), ("broken", broken))
    )
    # The tiny pipeline takes about 8.2 MB at float32: 12 MB holds one of them, never two.
    (root / "limner.toml").write_text(f'memory_budget = "12MB"\nload_wait_seconds = 120\n{models}')
    with start_server(root / "data", "--config", str(root / "limner.toml"), timeout=240) as running:
        yield running


def generate(server: RunningServer, model: str, seed: int = 1) -> httpx2.Headers:
    client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=600)
    raw = client.images.with_raw_response.generate(
        model=model, prompt="a boat", size="64x64", extra_body={"seed": seed, "num_inference_steps": 2}
    )
    assert raw.http_response.json()["data"][0]["b64_json"]
    return raw.http_response.headers


def test_two_models_take_turns_in_a_budget_for_one(budget_server: RunningServer) -> None:
    health = budget_server.health()
    assert health["residency"]["budgets"]["cpu"]["budget"] == 12_000_000
    states = health["residency"]["models"]
    assert states["one"]["state"] == states["two"]["state"] == "unloaded"
    assert 7_000_000 < states["one"]["bytes"]["estimated"] < 10_000_000

    both_seen: list[dict[str, str]] = []
    done = threading.Event()

    def watch() -> None:  # what /health says while the requests run: never both resident
        while not done.is_set():
            models = budget_server.health()["residency"]["models"]
            now = {name: models[name]["state"] for name in ("one", "two")}
            if "unloaded" not in now.values():
                both_seen.append(now)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            headers = list(pool.map(lambda i: generate(budget_server, ("one", "two")[i % 2], i), range(12)))
    finally:
        done.set()
        watcher.join()
    assert both_seen == []
    assert any("x-limner-load-ms" in h for h in headers)  # some waited for their model to be loaded
    models = budget_server.health()["residency"]["models"]
    assert models["one"]["loads"] + models["two"]["loads"] >= 2
    assert models["one"]["evictions"] + models["two"]["evictions"] >= 1
    loaded = next(name for name in ("one", "two") if models[name]["state"] == "loaded")
    measured = models[loaded]["bytes"]["measured"]
    assert abs(measured - models[loaded]["bytes"]["estimated"]) < 0.01 * measured
    metrics = httpx2.get(f"{budget_server.base_url}/metrics").text
    assert 'limner_model_evictions_total{model="' in metrics
    assert 'limner_model_loads_total{model="one"}' in metrics
    assert 'limner_memory_budget_bytes{device="cpu"} 1.2e+07' in metrics


def test_a_damaged_checkpoint_is_a_503_naming_it_and_the_others_keep_answering(
    budget_server: RunningServer,
) -> None:
    answer = httpx2.post(
        f"{budget_server.api_base}/images/generations",
        json={"model": "broken", "prompt": "a boat", "size": "64x64"},
        timeout=600,
    )
    assert answer.status_code == 503, answer.text
    assert "'broken'" in answer.json()["error"]["message"]
    assert generate(budget_server, "one") is not None
    state = budget_server.health()["residency"]["models"]["broken"]
    assert state["state"] == "unloaded" and state["load_failures"] == 1
    listed = {m["id"]: m for m in httpx2.get(f"{budget_server.api_base}/models").json()["data"]}
    assert listed["broken"]["residency"]["state"] == "unloaded"
    assert listed["one"]["residency"]["bytes"]["estimated"] > 0
