"""POST /v1/images/edits and /v1/images/variations through the official `openai` package."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support import schema
from tests.support.images import decode_b64, encoded, gradient, half_mask, png_bytes
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="unused", max_retries=0)


def halves(original: Image.Image, edited: Image.Image) -> tuple[float, float]:
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(edited.convert("RGB"), dtype=np.int16)
    half = a.shape[1] // 2
    return float(np.abs(a[:, :half] - b[:, :half]).mean()), float(np.abs(a[:, half:] - b[:, half:]).mean())


@pytest.mark.parametrize("model,size", [("gpt-image-1", "1024x1024"), ("dall-e-2", "256x256")])
def test_masked_edit_changes_only_the_masked_half(client: openai.OpenAI, model: str, size: str) -> None:
    side = int(size.split("x")[0])
    original = gradient(side, side)
    extra: dict[str, Any] = {"response_format": "b64_json"} if model == "dall-e-2" else {}
    raw = client.images.with_raw_response.edit(
        model=model,
        image=("in.png", png_bytes(original), "image/png"),
        mask=("mask.png", png_bytes(half_mask(side, side)), "image/png"),
        prompt="a yellow star",
        size=size,
        **extra,  # type: ignore[arg-type]
    )
    body = raw.http_response.json()
    schema.validate(body, "ImagesResponse")
    edited = decode_b64(body["data"][0]["b64_json"])
    assert edited.size == (side, side)
    kept, changed = halves(original, edited)
    assert kept == 0.0  # bit-identical outside the mask
    assert changed > 10.0


def test_image_alpha_is_the_mask_for_dall_e_2(client: openai.OpenAI) -> None:
    original = gradient(256, 256, rgba=True)
    alpha = np.asarray(original).copy()
    alpha[:, 128:, 3] = 0  # the right half transparent: that is where to edit
    image = Image.fromarray(alpha, "RGBA")
    result = client.images.edit(
        model="dall-e-2",
        image=("in.png", png_bytes(image), "image/png"),
        prompt="a green tree",
        size="256x256",
        response_format="b64_json",
    )
    edited = decode_b64((result.data or [])[0].b64_json or "")
    left_before = np.asarray(image)[:, :128, :3]
    left_after = np.asarray(edited.convert("RGBA"))[:, :128, :3]
    assert np.array_equal(left_before, left_after)
    assert np.asarray(edited.convert("RGBA"))[:, 128:, 3].min() > 0  # the hole was filled


def test_dall_e_2_without_mask_or_transparency_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(model="dall-e-2", image=("in.png", png_bytes(gradient()), "image/png"), prompt="x")
    assert info.value.param == "mask"


def test_unmasked_edit_redraws_guided_by_the_input(client: openai.OpenAI) -> None:
    original = gradient(1024, 1024)
    result = client.images.edit(
        model="gpt-image-1",
        image=("in.jpg", encoded(original, "JPEG"), "image/jpeg"),
        prompt="a circle",
        quality="low",
    )
    assert result.size == "1024x1024" and result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 65 * 4  # one 1024x1024 input at low fidelity
    edited = decode_b64((result.data or [])[0].b64_json or "")
    assert edited.size == (1024, 1024)
    assert np.abs(np.asarray(edited, dtype=np.int16) - np.asarray(original, dtype=np.int16)).mean() > 1


def test_several_images_are_all_used(client: openai.OpenAI) -> None:
    first = gradient(512, 512)

    def edit_with(second: Image.Image) -> str:
        result = client.images.edit(
            model="gpt-image-1",
            image=[
                ("a.png", png_bytes(first), "image/png"),
                ("b.webp", encoded(second, "WEBP"), "image/webp"),
            ],
            prompt="combine them",
            size="1024x1024",
            quality="low",
            extra_body={"seed": 9},
        )
        return (result.data or [])[0].b64_json or ""

    red = Image.new("RGB", (512, 512), (250, 10, 10))
    blue = Image.new("RGB", (512, 512), (10, 10, 250))
    assert edit_with(red) == edit_with(red)
    assert edit_with(red) != edit_with(blue)


def test_size_auto_follows_the_input_orientation(client: openai.OpenAI) -> None:
    result = client.images.edit(
        model="gpt-image-1",
        image=("w.png", png_bytes(gradient(600, 400)), "image/png"),
        prompt="x",
        quality="low",
        size="auto",
    )
    assert result.size == "1536x1024"
    assert decode_b64((result.data or [])[0].b64_json or "").size == (1536, 1024)


def test_rust_seed_newest_edit_fields(client: openai.OpenAI) -> None:
    result = client.images.edit(
        model="gpt-image-1.5",
        image=[
            ("a.png", png_bytes(gradient(256, 256)), "image/png"),
            ("b.png", png_bytes(gradient(256, 256, rgba=True)), "image/png"),
        ],
        prompt="a transparent sticker",
        background="transparent",
        output_format="webp",
        output_compression=60,
        input_fidelity="high",
        quality="medium",
        size="1024x1536",
    )
    assert (result.background, result.output_format, result.size, result.quality) == (
        "transparent",
        "webp",
        "1024x1536",
        "medium",
    )
    image = decode_b64((result.data or [])[0].b64_json or "")
    assert image.format == "WEBP" and image.mode == "RGBA" and image.size == (1024, 1536)
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens == 2 * 129


def test_json_edit_with_a_data_url(server: RunningServer, client: openai.OpenAI) -> None:
    original = gradient(256, 256)
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(original)).decode()
    mask_url = "data:image/png;base64," + base64.b64encode(png_bytes(half_mask())).decode()
    body = {
        "model": "gpt-image-1",
        "prompt": "a red square",
        "images": [{"image_url": data_url}],
        "mask": {"image_url": mask_url},
        "size": "1024x1024",
        "quality": "low",
    }
    answer = httpx2.post(server.api_base + "/images/edits", json=body)
    assert answer.status_code == 200, answer.text
    schema.validate(answer.json(), "ImagesResponse")
    # The same through the SDK's generic post (the SDK's images.edit only sends multipart).
    typed = client.post("/images/edits", body=body, cast_to=openai.types.ImagesResponse)
    assert typed.data and typed.data[0].b64_json


@pytest.mark.parametrize(
    "images,param",
    [
        ([{"file_id": "file-abc123"}], "images"),
        ([{"image_url": "data:image/png;base64,!!!"}], "images[0]"),
        ([{"image_url": "http://127.0.0.1:9/x.png"}], "images[0]"),
        ([{"image_url": "http://169.254.169.254/latest/meta-data"}], "images[0]"),
        ([{"image_url": "file:///etc/passwd"}], "images[0]"),
        ([], "images"),
    ],
)
def test_json_edit_refusals(server: RunningServer, images: list[dict[str, str]], param: str) -> None:
    answer = httpx2.post(
        server.api_base + "/images/edits", json={"model": "gpt-image-1", "prompt": "x", "images": images}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    schema.validate_error(answer.json())


def test_json_edit_is_for_gpt_models_only(server: RunningServer) -> None:
    answer = httpx2.post(
        server.api_base + "/images/edits",
        json={"model": "dall-e-2", "prompt": "x", "images": [{"image_url": "data:,"}]},
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "model"


def test_variations_keep_composition_and_palette(client: openai.OpenAI) -> None:
    original = gradient(256, 256)
    raw = client.images.with_raw_response.create_variation(
        image=("in.png", png_bytes(original), "image/png"), n=3, size="256x256", response_format="b64_json"
    )
    body = raw.http_response.json()
    schema.validate(body, "ImagesResponse")
    outputs = [decode_b64(d["b64_json"]) for d in body["data"]]
    assert len({o.tobytes() for o in outputs}) == 3
    small = np.asarray(original.resize((16, 16)), dtype=np.float64).ravel()
    for out in outputs:
        assert out.size == (256, 256)
        other = np.asarray(out.convert("RGB").resize((16, 16)), dtype=np.float64).ravel()
        assert np.corrcoef(small, other)[0, 1] > 0.6
        assert abs(other.mean() - small.mean()) < 30


def test_variation_by_url(client: openai.OpenAI, server: RunningServer) -> None:
    result = client.images.create_variation(
        image=("in.png", png_bytes(gradient(512, 512)), "image/png"), size="512x512"
    )
    url = (result.data or [])[0].url or ""
    got = httpx2.get(url)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (512, 512)
