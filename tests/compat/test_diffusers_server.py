"""`limner serve --model NAME=diffusers:FOLDER` through the official `openai` package.

A tiny random-weight Stable Diffusion pipeline is built offline and saved with save_pretrained (see
tests/conftest.py); the server loads it from the folder through the real loading code, on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from tests.support import schema
from tests.support.images import decode_b64, gradient, half_mask, png_bytes
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers

FAST: dict[str, Any] = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def tiny_server(
    tiny_text2image_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with start_server(
        tmp_path_factory.mktemp("diffusers-data"),
        "--model",
        f"tiny=diffusers:{tiny_text2image_dir}",
        timeout=120,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(tiny_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.api_base, api_key="x", max_retries=0)


def test_listed_and_loaded_lazily(client: openai.OpenAI, tiny_server: RunningServer) -> None:
    assert "tiny" in {m.id for m in client.models.list()}
    health = httpx2.get(tiny_server.base_url + "/health").json()
    if not health["models"]["tiny"]:  # lazy: loaded by the first request
        client.images.generate(model="tiny", prompt="x", size="64x64", extra_body=FAST)
    assert httpx2.get(tiny_server.base_url + "/health").json()["models"]["tiny"] is True


@pytest.mark.parametrize("size", ["64x64", "128x64", "64x128"])
def test_sizes_honoured(client: openai.OpenAI, size: str) -> None:
    raw = client.images.with_raw_response.generate(
        model="tiny",
        prompt="a cat",
        size=size,  # type: ignore[arg-type]
        extra_body=FAST,
    )
    body = raw.http_response.json()
    schema.validate(body, "ImagesResponse", free_size=True)
    width, height = map(int, size.split("x"))
    assert decode_b64(body["data"][0]["b64_json"]).size == (width, height)
    assert body["size"] == size


@pytest.mark.parametrize("size", ["100x100", "64x8192", "auto-ish"])
def test_sizes_the_model_cannot_make_are_refused(client: openai.OpenAI, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="tiny", prompt="x", size=size, extra_body=FAST)  # type: ignore[arg-type]
    assert info.value.param == "size"


def test_n_seed_and_seed_plus_i(client: openai.OpenAI) -> None:
    def gen(n: int, seed: int) -> list[str]:
        result = client.images.generate(
            model="tiny", prompt="a house", size="64x64", n=n, extra_body={**FAST, "seed": seed}
        )
        return [d.b64_json or "" for d in result.data or []]

    two = gen(2, 10)
    assert len(set(two)) == 2
    assert two == gen(2, 10)
    assert two[1] == gen(1, 11)[0]


def test_extensions_reach_the_pipeline(client: openai.OpenAI) -> None:
    def gen(**extra: Any) -> str:
        result = client.images.generate(
            model="tiny",
            prompt="a tree",
            size="64x64",
            extra_body={"seed": 3, "num_inference_steps": 2, **extra},
        )
        return (result.data or [])[0].b64_json or ""

    base = gen()
    assert gen(num_inference_steps=3) != base
    assert gen(guidance_scale=1.5) != base
    assert gen(negative_prompt="blurry") != base


def test_url_response(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="tiny", prompt="x", size="64x64", response_format="url", output_format="webp", extra_body=FAST
    )
    got = httpx2.get((result.data or [])[0].url or "")
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"


def test_transparent_background_is_refused_not_faked(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(
            model="tiny", prompt="x", size="64x64", background="transparent", extra_body=FAST
        )
    assert info.value.param == "background"


def test_masked_edit_keeps_the_unmasked_half(client: openai.OpenAI) -> None:
    original = gradient(128, 128)
    result = client.images.edit(
        model="tiny",
        image=("a.png", png_bytes(original), "image/png"),
        mask=("m.png", png_bytes(half_mask(128, 128)), "image/png"),
        prompt="a red square",
        size="128x128",
        extra_body=FAST,
    )
    edited = np.asarray(decode_b64((result.data or [])[0].b64_json or "").convert("RGB"), dtype=np.int16)
    before = np.asarray(original, dtype=np.int16)
    assert np.array_equal(edited[:, :64], before[:, :64])
    assert np.abs(edited[:, 64:] - before[:, 64:]).mean() > 5


def test_unmasked_edit_and_variations(client: openai.OpenAI) -> None:
    src = png_bytes(gradient(64, 64))
    edit = client.images.edit(
        model="tiny",
        image=("a.png", src, "image/png"),
        prompt="x",
        size="64x64",
        input_fidelity="high",
        extra_body=FAST,
    )
    assert decode_b64((edit.data or [])[0].b64_json or "").size == (64, 64)
    varied = client.images.create_variation(
        model="tiny",
        image=("a.png", src, "image/png"),
        n=2,
        size="64x64",
        response_format="b64_json",
        extra_body=FAST,
    )
    outs = [d.b64_json for d in varied.data or []]
    assert len(outs) == 2 and outs[0] != outs[1]


def test_several_images_are_refused_for_this_engine(client: openai.OpenAI) -> None:
    src = ("a.png", png_bytes(gradient(64, 64)), "image/png")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="tiny", image=[src, src], prompt="x", size="64x64", extra_body=FAST)
    assert info.value.param == "image"


def test_streamed_partials_generation_and_edit(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(
            model="tiny",
            prompt="x",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 4},
        )
    )
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    for event in events:
        kind = (
            "ImageGenPartialImageEvent" if event.type.endswith("partial_image") else "ImageGenCompletedEvent"
        )
        schema.validate(event.model_dump(exclude_none=True), kind, free_size=True)
    edit = list(
        client.images.edit(
            model="tiny",
            image=("a.png", png_bytes(gradient(64, 64)), "image/png"),
            prompt="x",
            size="64x64",
            stream=True,
            partial_images=1,
            extra_body={"num_inference_steps": 3},
        )
    )
    assert [e.type for e in edit] == ["image_edit.partial_image", "image_edit.completed"]


def test_leaving_a_stream_interrupts_the_pipeline(client: openai.OpenAI, tiny_server: RunningServer) -> None:
    tiny_server.leave_a_long_stream(
        lambda fields: client.images.generate(model="tiny", prompt="x", size="256x256", **fields)
    )


def test_full_queue_answers_429(tiny_text2image_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "limner.toml"
    config.write_text(
        f'[models.tiny]\nengine = "diffusers"\nsource = "{tiny_text2image_dir}"\n'
        'load = "startup"\nmax_queue = 0\n'
    )
    with start_server(tmp_path / "data", "--config", str(config), timeout=120) as server:
        assert httpx2.get(server.base_url + "/health").json()["models"]["tiny"] is True  # loaded at start
        # Long enough to be running when the next request comes (it is sent as soon as /health shows
        # the job), short enough not to hold the suite: about 4 s on 2 cores.
        slow = {"model": "tiny", "prompt": "x", "size": "256x256", "num_inference_steps": 20}
        status: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: status.update(
                first=httpx2.post(
                    server.api_base + "/images/generations", json=slow, timeout=None
                ).status_code
            )
        )
        worker.start()
        deadline = time.monotonic() + 120
        while not server.pending():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = httpx2.post(server.api_base + "/images/generations", json={**slow, "num_inference_steps": 2})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(busy.headers["retry-after"]) >= 1
        schema.validate_error(busy.json())
        assert httpx2.get(server.base_url + "/health").status_code == 200  # answers while the model works
        worker.join()
        assert status["first"] == 200


def test_missing_extra_is_a_clear_error(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None\n"
        "from limner.cli.main import main\n"
        f"sys.argv = ['limner', 'serve', '--data-dir', {str(tmp_path)!r}, '--model', 'x=diffusers:/no/such']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install -e '.[diffusers]'" in done.stderr and "Traceback" not in done.stderr


def test_a_model_that_fails_to_load(tmp_path: Path) -> None:
    """A corrupt model folder, loaded lazily: a 503 envelope without internals when not streaming, and
    an `event: error` that the SDK raises on when the stream had already started (contract 10)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    with start_server(tmp_path / "data", "--model", f"broken=diffusers:{broken}", timeout=120) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.images.generate(model="broken", prompt="x", size="64x64")
        assert info.value.status_code == 503 and info.value.code == "engine_unavailable"
        schema.validate_error(info.value.response.json())
        assert str(broken) not in info.value.response.text  # no paths or library messages
        assert str(broken) in server.log()  # the operator learns why

        raw = httpx2.post(
            server.api_base + "/images/generations",
            json={"model": "broken", "prompt": "x", "size": "64x64", "stream": True, "n": 2},
        )
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        assert raw.text.startswith("event: error\ndata: {")
        schema.validate_error(json.loads(raw.text.split("data: ", 1)[1]))
        stream = client.images.generate(model="broken", prompt="x", size="64x64", stream=True, n=2)
        with pytest.raises(openai.APIError) as streamed:
            list(stream)
        assert "could not be loaded" in streamed.value.message
        assert client.models.retrieve("broken").id == "broken"  # the server keeps serving
