"""POST /v1/images/generations through the official `openai` package against a real `limner serve`."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from PIL import Image

from limner import rules
from tests.support import schema
from tests.support.server import RunningServer

MODELS = [
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "chatgpt-image-latest",
]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="unused", max_retries=0)


def raw_generate(client: openai.OpenAI, **kwargs: Any) -> tuple[dict[str, Any], httpx2.Headers]:
    raw = client.images.with_raw_response.generate(**kwargs)
    return raw.http_response.json(), raw.headers


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.mark.parametrize("model", MODELS)
def test_every_model_generates_a_valid_response(client: openai.OpenAI, model: str) -> None:
    profile = rules.OPENAI_PROFILES[model]
    kwargs: dict[str, Any] = {"model": model, "prompt": "a red circle on blue"}
    if profile.default_response_format == "url":
        kwargs["response_format"] = "b64_json"
    body, headers = raw_generate(client, **kwargs)
    schema.validate(body, "ImagesResponse")
    image = decode(body["data"][0]["b64_json"])
    assert image.format == "PNG" and image.size == (1024, 1024)
    assert headers["x-request-id"].startswith("req_") and int(headers["openai-processing-ms"]) >= 0
    if profile.usage:
        assert body["usage"]["output_tokens"] == 4160  # high (auto) at 1024x1024
        assert body["size"] == "1024x1024" and body["quality"] == "high" and body["background"] == "opaque"
        assert body["output_format"] == "png"
    else:
        assert set(body) == {"created", "data"}
    assert ("revised_prompt" in body["data"][0]) == (model == "dall-e-3")


@pytest.mark.parametrize(
    "model,size",
    [
        ("dall-e-2", "256x256"),
        ("dall-e-2", "512x512"),
        ("dall-e-3", "1792x1024"),
        ("dall-e-3", "1024x1792"),
        ("gpt-image-1", "1536x1024"),
        ("gpt-image-1", "1024x1536"),
        ("gpt-image-2", "1280x720"),
        ("gpt-image-2", "480x1440"),
    ],
)
def test_size_is_honoured_with_the_right_orientation(client: openai.OpenAI, model: str, size: str) -> None:
    extra = {"response_format": "b64_json"} if model.startswith("dall-e") else {}
    body, _ = raw_generate(client, model=model, prompt="a house", size=size, **extra)
    width, height = map(int, size.split("x"))
    assert decode(body["data"][0]["b64_json"]).size == (width, height)
    schema.validate(body, "ImagesResponse", free_size=True)


def test_typed_result_and_request_id(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="a star", n=3, quality="low", size="1024x1024"
    )
    assert len(result.data or []) == 3
    assert result.usage is not None and result.usage.output_tokens == 3 * 272
    assert result._request_id and result._request_id.startswith("req_")
    images = [(d.b64_json or "") for d in result.data or []]
    assert len(set(images)) == 3  # n distinct images


def test_seed_is_deterministic_and_image_i_uses_seed_plus_i(client: openai.OpenAI) -> None:
    def gen(n: int, seed: int) -> list[str]:
        result = client.images.generate(
            model="gpt-image-1", prompt="a tree by a lake", n=n, quality="low", extra_body={"seed": seed}
        )
        return [d.b64_json or "" for d in result.data or []]

    two = gen(2, 41)
    assert two == gen(2, 41)
    assert two[1] == gen(1, 42)[0]
    assert two[0] != gen(1, 43)[0]


def test_without_a_seed_each_request_differs(client: openai.OpenAI) -> None:
    a = client.images.generate(model="gpt-image-1", prompt="a wave", quality="low")
    b = client.images.generate(model="gpt-image-1", prompt="a wave", quality="low")
    assert (a.data or [])[0].b64_json != (b.data or [])[0].b64_json


@pytest.mark.parametrize("fmt,pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client: openai.OpenAI, fmt: str, pil_format: str) -> None:
    body, _ = raw_generate(client, model="gpt-image-1", prompt="a moon", output_format=fmt, quality="low")
    assert body["output_format"] == fmt
    image = decode(body["data"][0]["b64_json"])
    assert image.format == pil_format and image.mode == "RGB" and image.size == (1024, 1024)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_output_compression_changes_the_bytes(client: openai.OpenAI, fmt: str) -> None:
    def size_at(compression: int) -> int:
        body, _ = raw_generate(
            client,
            model="gpt-image-1",
            prompt="a mountain",
            output_format=fmt,
            output_compression=compression,
            quality="high",
            extra_body={"seed": 3},
        )
        return len(base64.b64decode(body["data"][0]["b64_json"]))

    assert size_at(10) < size_at(100)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_background_has_real_alpha(client: openai.OpenAI, fmt: str) -> None:
    body, _ = raw_generate(
        client,
        model="gpt-image-1",
        prompt="a sun",
        background="transparent",
        output_format=fmt,
        quality="low",
    )
    assert body["background"] == "transparent"
    image = decode(body["data"][0]["b64_json"])
    assert image.mode == "RGBA"
    alpha = image.getchannel("A")
    lo, hi = alpha.getextrema()
    assert lo == 0 and hi == 255


def test_colour_words_steer_the_picture(client: openai.OpenAI) -> None:
    body, _ = raw_generate(client, model="gpt-image-1", prompt="red red red", quality="low")
    image = decode(body["data"][0]["b64_json"]).convert("RGB").resize((64, 64))
    rgb = np.asarray(image, dtype=np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((r > g + 40) & (r > b + 40)).mean() > 0.5


def test_url_response_is_served_and_signed(client: openai.OpenAI, server: RunningServer) -> None:
    result = client.images.generate(model="dall-e-2", prompt="a square", size="256x256")
    url = (result.data or [])[0].url or ""
    assert url.startswith(server.base_url + "/files/")  # the host the client used, never 0.0.0.0
    got = httpx2.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(got.content)).size == (256, 256)
    tampered = url.replace("sig=", "sig=0")
    answer = httpx2.get(tampered)
    assert answer.status_code == 403
    schema.validate_error(answer.json())
    later = url.replace("expires=", "expires=9")
    assert httpx2.get(later).status_code == 403  # extending the expiry breaks the signature


def test_dall_e_3_url_by_default_and_b64_on_request(client: openai.OpenAI) -> None:
    by_url = client.images.generate(model="dall-e-3", prompt="a heart")
    assert (by_url.data or [])[0].url and not (by_url.data or [])[0].b64_json
    assert (by_url.data or [])[0].revised_prompt == "a heart"


def test_models_endpoints(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert set(MODELS) <= ids
    assert client.models.retrieve("dall-e-3").id == "dall-e-3"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_health(server: RunningServer) -> None:
    answer = httpx2.get(server.base_url + "/health")
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


def test_dall_e_3_style_is_honoured(client: openai.OpenAI) -> None:
    def saturation(style: Any) -> float:
        result = client.images.generate(
            model="dall-e-3",
            prompt="a sun over the sea",
            style=style,
            response_format="b64_json",
            extra_body={"seed": 8},
        )
        hsv = decode((result.data or [])[0].b64_json or "").convert("HSV")
        return float(np.asarray(hsv, dtype=np.float64)[..., 1].mean())

    assert saturation("natural") < saturation("vivid")


def test_user_is_logged_for_the_operator(client: openai.OpenAI, server: RunningServer) -> None:
    raw = client.images.with_raw_response.generate(
        model="gpt-image-1", prompt="x", quality="low", user="end-user-42"
    )
    request_id = raw.headers["x-request-id"]
    assert f"{request_id} generate model=gpt-image-1 n=1 size=1024x1024 user=end-user-42" in server.log()
