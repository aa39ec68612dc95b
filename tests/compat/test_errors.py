"""Every invalid field is refused the way OpenAI refuses it: the envelope, the status, the param."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

from tests.support import schema
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="unused", max_retries=0)


INVALID_GENERATIONS: list[tuple[dict[str, Any], str, str | None]] = [
    # (request fields, param, code)
    ({"model": "dall-e-2", "size": "1792x1024"}, "size", "invalid_value"),
    ({"model": "dall-e-3", "size": "256x256"}, "size", "invalid_value"),
    ({"model": "gpt-image-1", "size": "512x512"}, "size", "invalid_value"),
    ({"model": "gpt-image-2", "size": "1000x1000"}, "size", "invalid_value"),
    ({"model": "gpt-image-2", "size": "4000x4000"}, "size", "invalid_value"),
    ({"model": "dall-e-2", "n": 11}, "n", "invalid_value"),
    ({"model": "dall-e-2", "n": 0}, "n", "invalid_value"),
    ({"model": "dall-e-3", "n": 2}, "n", "invalid_value"),
    ({"model": "gpt-image-1", "quality": "hd"}, "quality", "invalid_value"),
    ({"model": "dall-e-3", "quality": "low"}, "quality", "invalid_value"),
    ({"model": "dall-e-3", "style": "cartoon"}, "style", "invalid_value"),
    ({"model": "gpt-image-1", "quality": "ultra"}, "quality", "invalid_value"),
    ({"model": "gpt-image-1", "response_format": "link"}, "response_format", "invalid_value"),
    ({"model": "gpt-image-2", "size": "1024x1024\n"}, "size", "invalid_value"),
    ({"model": "dall-e-2", "background": "transparent"}, "background", "unsupported_parameter"),
    ({"model": "dall-e-3", "output_format": "webp"}, "output_format", "unsupported_parameter"),
    ({"model": "dall-e-2", "output_compression": 50}, "output_compression", "unsupported_parameter"),
    ({"model": "dall-e-2", "moderation": "low"}, "moderation", "unsupported_parameter"),
    ({"model": "dall-e-2", "partial_images": 2}, "partial_images", "unsupported_parameter"),
    (
        {"model": "gpt-image-1", "background": "transparent", "output_format": "jpeg"},
        "output_format",
        "invalid_value",
    ),
    ({"model": "gpt-image-1", "output_compression": 101}, "output_compression", "invalid_value"),
    ({"model": "gpt-image-1", "partial_images": 4, "stream": True}, "partial_images", "invalid_value"),
    ({"model": "gpt-image-1", "output_format": "gif"}, "output_format", "invalid_value"),
    ({"model": "gpt-image-1", "n": "two"}, "n", "invalid_type"),
    ({"model": "dall-e-2", "prompt": "a" * 1001}, "prompt", "string_above_max_length"),
    ({"model": "dall-e-3", "prompt": "a" * 4001}, "prompt", "string_above_max_length"),
    ({"model": "gpt-image-1", "prompt": ""}, "prompt", "empty_prompt"),
    ({"model": "gpt-image-1", "seed": -5}, "seed", "invalid_value"),
    ({"model": "gpt-image-1", "num_inference_steps": 500}, "num_inference_steps", "invalid_value"),
    ({"model": "gpt-image-1", "guidance_scale": 99}, "guidance_scale", "invalid_value"),
    ({"model": "gpt-image-1", "wobble": 1}, "wobble", "unknown_parameter"),
]


@pytest.mark.parametrize("fields,param,code", INVALID_GENERATIONS)
def test_invalid_field_is_a_400_naming_it(
    client: openai.OpenAI, fields: dict[str, Any], param: str, code: str | None
) -> None:
    fields = dict(fields)
    prompt = fields.pop("prompt", "a cat")
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt=prompt, extra_body=fields)
    err = info.value
    assert err.status_code == 400 and err.param == param and err.code == code
    assert err.type == "invalid_request_error"
    schema.validate_error(err.response.json())


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="dall-e-7", prompt="x")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    schema.validate_error(info.value.response.json())


def test_missing_prompt(server: RunningServer) -> None:
    answer = httpx2.post(server.api_base + "/images/generations", json={"model": "gpt-image-1"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "prompt"
    schema.validate_error(answer.json())


@pytest.mark.parametrize(
    "body,content_type",
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"prompt=x", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_400(server: RunningServer, body: bytes, content_type: str) -> None:
    answer = httpx2.post(
        server.api_base + "/images/generations", content=body, headers={"content-type": content_type}
    )
    assert answer.status_code == 400
    schema.validate_error(answer.json())
    assert answer.headers["x-request-id"].startswith("req_")


def test_unknown_route_and_wrong_method(server: RunningServer) -> None:
    missing = httpx2.post(server.api_base + "/images/nope", json={})
    assert missing.status_code == 404
    schema.validate_error(missing.json())
    wrong = httpx2.get(server.api_base + "/images/generations")
    assert wrong.status_code == 405
    schema.validate_error(wrong.json())


def test_null_means_default(server: RunningServer) -> None:
    answer = httpx2.post(
        server.api_base + "/images/generations",
        json={"prompt": "x", "model": None, "n": None, "size": None, "response_format": None},
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 1
