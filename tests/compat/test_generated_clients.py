"""The literal bodies that clients generated from the published spec send (openapi-generator's Ruby and
Python clients fill in every `default:` of the spec), against a real `limner serve`.

These are written out by hand, as the generators write them, so no Java is needed to run them.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx2
import pytest
from PIL import Image

from tests.support import schema
from tests.support.generated import RUBY_CREATE_IMAGE
from tests.support.images import decode_b64, gradient, half_mask, png_bytes
from tests.support.server import RunningServer

#: The text parts of a generated client's CreateImageEditRequest (every spec default filled in).
GENERATED_EDIT_FIELDS: dict[str, str] = {
    "prompt": "A cute baby sea otter wearing a beret",
    "background": "auto",
    "model": "gpt-image-1.5",
    "n": "1",
    "size": "1024x1024",
    "response_format": "url",
    "output_format": "png",
    "output_compression": "100",
    "stream": "false",
    "partial_images": "0",
    "quality": "auto",
}

#: The text parts of a generated client's CreateImageVariationRequest.
GENERATED_VARIATION_FIELDS: dict[str, str] = {
    "model": "dall-e-2",
    "n": "1",
    "response_format": "url",
    "size": "1024x1024",
}


def download(url: str) -> Image.Image:
    response = httpx2.get(url, timeout=30)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def post(server: RunningServer, path: str, **kwargs: Any) -> httpx2.Response:
    return httpx2.post(server.api_base + path, timeout=120, **kwargs)


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body written out part by part, as the generators write it: (name,
    filename or None for a text part, content)."""
    boundary = "----limnerGeneratedClient7MA4YWxkTrZu0gW"
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: application/octet-stream\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_parts(
    server: RunningServer, path: str, parts: list[tuple[str, str | None, bytes]]
) -> httpx2.Response:
    body, content_type = multipart(parts)
    return post(server, path, content=body, headers={"content-type": content_type})


def test_ruby_seed_body_is_a_dall_e_2_request_answered_with_a_url(server: RunningServer) -> None:
    response = post(server, "/images/generations", json=RUBY_CREATE_IMAGE)
    assert response.status_code == 200, response.text
    body = response.json()
    schema.validate(body, "ImagesResponse")
    assert set(body) == {"created", "data"}  # dall-e-2: no echoed settings, no usage
    assert download(body["data"][0]["url"]).size == (1024, 1024)


@pytest.mark.parametrize("model", ["gpt-image-1", "dall-e-3", "dall-e-2"])
def test_ruby_seed_body_with_a_model(server: RunningServer, model: str) -> None:
    response = post(server, "/images/generations", json={**RUBY_CREATE_IMAGE, "model": model})
    assert response.status_code == 200, response.text
    body = response.json()
    schema.validate(body, "ImagesResponse")
    item = body["data"][0]
    assert "b64_json" not in item and download(item["url"]).size == (1024, 1024)
    if model == "gpt-image-1":  # a GPT image request: settings echoed and usage counted
        assert (body["size"], body["quality"], body["output_format"]) == ("1024x1024", "high", "png")
        assert body["usage"]["output_tokens"] == 4160
    if model == "dall-e-3":
        assert item["revised_prompt"] == RUBY_CREATE_IMAGE["prompt"]


def test_non_default_values_keep_the_model_rules(server: RunningServer) -> None:
    response = post(server, "/images/generations", json={**RUBY_CREATE_IMAGE, "background": "transparent"})
    # A GPT-only field with a value of its own picks the GPT default model, which honours it.
    assert response.status_code == 200, response.text
    assert response.json()["background"] == "transparent"
    response = post(
        server,
        "/images/generations",
        json={**RUBY_CREATE_IMAGE, "model": "dall-e-2", "background": "transparent"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "background"


def test_gpt_image_answers_with_a_url_when_asked(server: RunningServer) -> None:
    response = post(
        server,
        "/images/generations",
        json={"model": "gpt-image-1", "prompt": "a sun", "response_format": "url", "output_format": "webp"},
    )
    assert response.status_code == 200, response.text
    image = download(response.json()["data"][0]["url"])
    assert image.format == "WEBP"


@pytest.mark.parametrize("model,side", [("dall-e-2", 256), ("gpt-image-1.5", 1024)])
def test_generated_multipart_edit(server: RunningServer, model: str, side: int) -> None:
    original = gradient(side, side)
    fields = {**GENERATED_EDIT_FIELDS, "model": model, "size": f"{side}x{side}"}
    files = [
        ("image", ("image.png", png_bytes(original), "image/png")),
        ("mask", ("mask.png", png_bytes(half_mask(side, side)), "image/png")),
    ]
    response = post(server, "/images/edits", data=fields, files=files)
    assert response.status_code == 200, response.text
    edited = download(response.json()["data"][0]["url"])
    assert edited.size == (side, side)
    left = (0, 0, side // 2, side)
    assert edited.convert("RGB").crop(left).tobytes() == original.crop(left).tobytes()


def test_generated_multipart_variation(server: RunningServer) -> None:
    files = [("image", ("otter.png", png_bytes(gradient(256, 256)), "image/png"))]
    response = post(server, "/images/variations", data=GENERATED_VARIATION_FIELDS, files=files)
    assert response.status_code == 200, response.text
    assert download(response.json()["data"][0]["url"]).size == (1024, 1024)


@pytest.mark.parametrize("name,param", [("image", "image"), ("image[]", "image"), ("mask", "mask")])
def test_a_file_field_sent_as_text_says_it_must_be_a_file(
    server: RunningServer, name: str, param: str
) -> None:
    parts: list[tuple[str, str | None, bytes]] = [("prompt", None, b"x"), ("model", None, b"gpt-image-1")]
    if name == "mask":
        parts.append(("image", "a.png", png_bytes(gradient(64, 64))))
    parts.append((name, None, b"image.png"))
    response = post_parts(server, "/images/edits", parts)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_type"
    assert f"'{param}' must be a file upload" in error["message"]


def test_variation_image_sent_as_text(server: RunningServer) -> None:
    response = post_parts(server, "/images/variations", [("image", None, b"otter.png")])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"
    assert "must be a file upload" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "path,name",
    [("/images/edits", n) for n in ("model", "size", "prompt", "n")]
    + [("/images/variations", n) for n in ("model", "size", "n")],
)
def test_a_text_field_sent_as_a_file_says_it_must_be_text(
    server: RunningServer, path: str, name: str
) -> None:
    parts: list[tuple[str, str | None, bytes]] = [("image", "a.png", png_bytes(gradient(64, 64)))]
    if path == "/images/edits" and name != "prompt":
        parts.append(("prompt", None, b"x"))
    parts.append((name, "value.txt", b"dall-e-2"))
    response = post_parts(server, path, parts)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == name and error["code"] == "invalid_type"
    assert f"'{name}' must be a text field" in error["message"]


@pytest.mark.parametrize("size", ["1024x1024\n", " 1024x1024", "1024x1024 "])
def test_sizes_are_exact_strings(server: RunningServer, size: str) -> None:
    for model in ("gpt-image-1", "gpt-image-2", "dall-e-2"):
        response = post(server, "/images/generations", json={"model": model, "prompt": "x", "size": size})
        assert response.status_code == 400, (model, size)
        assert response.json()["error"]["param"] == "size"


def test_png_output_compression_sets_effort_not_pixels(server: RunningServer) -> None:
    """output_compression with png: 100 (the default) encodes fastest, 0 gives the smallest file; the
    picture is the same at both ends."""
    sizes: dict[int, int] = {}
    pixels: dict[int, bytes] = {}
    for compression in (0, 100):
        response = post(
            server,
            "/images/generations",
            json={
                "model": "gpt-image-1",
                "prompt": "a red sun over blue mountains",
                "quality": "low",
                "output_format": "png",
                "output_compression": compression,
                "seed": 7,
            },
        )
        assert response.status_code == 200, response.text
        b64 = response.json()["data"][0]["b64_json"]
        sizes[compression] = len(base64.b64decode(b64))
        pixels[compression] = decode_b64(b64).tobytes()
    assert pixels[0] == pixels[100]
    assert sizes[0] < sizes[100]
