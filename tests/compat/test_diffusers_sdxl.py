"""The diffusers engine on the Stable Diffusion XL architecture, through `limner serve` and `openai`.

A tiny random StableDiffusionXLPipeline (two CLIP text encoders, a UNet with SDXL's `text_time`
conditioning on pooled text and size ids, Euler) is built offline and saved with save_pretrained (see
tests/conftest.py); the server loads it from the folder through AutoPipelineForText2Image, and edits
and variations go through the XL image-to-image and inpaint pipelines that `from_pipe` derives from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.support import schema
from tests.support.images import decode_b64, gradient, half_mask, png_bytes
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers

FAST: dict[str, Any] = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def xl_server(tiny_sdxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(
        tmp_path_factory.mktemp("sdxl-data"), "--model", f"xl=diffusers:{tiny_sdxl_dir}", timeout=120
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(xl_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=xl_server.api_base, api_key="x", max_retries=0)


def _px(b64: str | None) -> np.ndarray:
    return np.asarray(decode_b64(b64 or "").convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("size", ["128x64", "64x128"])
def test_generation_size_and_orientation(client: openai.OpenAI, size: str) -> None:
    raw = client.images.with_raw_response.generate(
        model="xl",
        prompt="a cat",
        size=size,
        extra_body=FAST,
    )
    body = raw.http_response.json()
    schema.validate(body, "ImagesResponse", free_size=True)
    width, height = map(int, size.split("x"))
    assert decode_b64(body["data"][0]["b64_json"]).size == (width, height)  # PIL: (width, height)
    assert body["size"] == size
    models = {m.id: m for m in client.models.list()}
    assert "xl" in models


def test_seed_determinism_and_seed_plus_i(client: openai.OpenAI) -> None:
    def gen(n: int, seed: int) -> list[str]:
        result = client.images.generate(
            model="xl", prompt="a house", size="64x64", n=n, extra_body={**FAST, "seed": seed}
        )
        return [d.b64_json or "" for d in result.data or []]

    two = gen(2, 10)
    assert len(two) == 2 and two[0] != two[1]
    assert two == gen(2, 10)
    assert two[1] == gen(1, 11)[0]


def test_masked_edit_keeps_the_unmasked_half(client: openai.OpenAI) -> None:
    # Not square, so a swapped width and height anywhere in the inpaint path would show.
    original = gradient(128, 64)
    result = client.images.edit(
        model="xl",
        image=("a.png", png_bytes(original), "image/png"),
        mask=("m.png", png_bytes(half_mask(128, 64)), "image/png"),  # right half transparent: repaint
        prompt="a red square",
        size="128x64",
        extra_body=FAST,
    )
    edited = _px((result.data or [])[0].b64_json)
    before = np.asarray(original, dtype=np.int16)
    assert edited.shape == before.shape
    assert np.array_equal(edited[:, :64], before[:, :64])
    assert np.abs(edited[:, 64:] - before[:, 64:]).mean() > 5


def test_unmasked_edit_and_variations(client: openai.OpenAI) -> None:
    source = gradient(128, 64)
    src = png_bytes(source)
    edit = client.images.edit(
        model="xl", image=("a.png", src, "image/png"), prompt="x", size="128x64", extra_body=FAST
    )
    edited = _px((edit.data or [])[0].b64_json)
    assert edited.shape == (64, 128, 3)
    # Image-to-image redraws the whole frame, the left half included (no mask, no composing).
    assert np.abs(edited[:, :64] - np.asarray(source, dtype=np.int16)[:, :64]).mean() > 1
    varied = client.images.create_variation(
        model="xl",
        image=("a.png", src, "image/png"),
        n=2,
        size="128x64",  # type: ignore[arg-type]  # the SDK lists dall-e-2's sizes; limner takes any
        response_format="b64_json",
        extra_body=FAST,
    )
    outs = [d.b64_json for d in varied.data or []]
    assert len(outs) == 2 and outs[0] != outs[1]
    assert all(decode_b64(o or "").size == (128, 64) for o in outs)


def test_streamed_partials_generation_and_masked_edit(client: openai.OpenAI) -> None:
    events = list(
        client.images.generate(
            model="xl",
            prompt="x",
            size="128x64",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 4},
        )
    )
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [getattr(e, "partial_image_index", None) for e in events[:2]] == [0, 1]
    for event in events:
        kind = (
            "ImageGenPartialImageEvent" if event.type.endswith("partial_image") else "ImageGenCompletedEvent"
        )
        schema.validate(event.model_dump(exclude_none=True), kind, free_size=True)
        assert decode_b64(event.b64_json).size == (128, 64)

    # XL inpaint previews go through the same composing: the kept half is exact in every partial too.
    original = gradient(128, 64)
    edit = list(
        client.images.edit(
            model="xl",
            image=("a.png", png_bytes(original), "image/png"),
            mask=("m.png", png_bytes(half_mask(128, 64)), "image/png"),
            prompt="x",
            size="128x64",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 4},
        )
    )
    assert [e.type for e in edit] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    before = np.asarray(original, dtype=np.int16)
    for edit_event in edit:
        assert np.array_equal(_px(edit_event.b64_json)[:, :64], before[:, :64])


# -- engine level: one set of weights, XL previews ---------------------------------------------------


@pytest.fixture(scope="module")
def xl_engine(tiny_sdxl_dir: Path) -> Any:
    from limner.engines.diffusers import create_engine

    engine = create_engine("xl", {"source": str(tiny_sdxl_dir), "device": "cpu"})
    engine.load()
    return engine


def test_edit_pipelines_share_the_xl_weights(xl_engine: Any) -> None:
    loaded = xl_engine._loaded  # private: the test looks inside at which module objects are used
    base = loaded.base
    assert type(base).__name__ == "StableDiffusionXLPipeline"
    expected = {
        "image2image": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    }
    for task, class_name in expected.items():
        view = xl_engine.calls._view(loaded, task)
        assert type(view).__name__ == class_name
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"):
            assert getattr(view, name) is getattr(base, name), f"{task} has its own {name}"
        assert view.scheduler is not base.scheduler  # stateful: one copy per call


def test_linear_previews_use_the_xl_factors(xl_engine: Any) -> None:
    import torch

    from limner.engines.diffusers.previews import PreviewDecoder

    view = xl_engine.calls._view(xl_engine._loaded, "text2image")
    latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    xl = PreviewDecoder(view, "auto", 128, 64).decode(latents)
    assert xl is not None and xl[0].size == (128, 64)
    # A pipeline that is not XL gets the SD 1.x projection: same latents, another picture.
    sd1 = PreviewDecoder(object(), "auto", 128, 64).decode(latents)
    assert sd1 is not None and not np.array_equal(np.asarray(xl[0]), np.asarray(sd1[0]))
