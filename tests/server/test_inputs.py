"""server/inputs directly, without a route: JSON bodies and the pydantic-to-400 mapping (parsing),
multipart bounded while read (forms), uploaded images and masks (uploads)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image
from starlette.requests import Request

from limner import rules
from limner.errors import InvalidImage, InvalidRequest, UnknownParameter
from limner.server.inputs import forms, parsing, uploads
from limner.types import CreateImageRequest


def request(body: bytes, content_type: str) -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "limner-test-boundary"
    chunks = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(size: tuple[int, int] = (32, 32), mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- parsing ------------------------------------------------------------------------------------------


async def test_json_bodies_name_what_is_wrong() -> None:
    assert await parsing.json_object(request(b'{"prompt": "x"}', "application/json")) == {"prompt": "x"}
    with pytest.raises(InvalidRequest, match="could not parse the JSON body"):
        await parsing.json_object(request(b"{nope", "application/json"))
    with pytest.raises(InvalidRequest) as deep:
        await parsing.json_object(
            request(b'{"user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json")
        )
    assert deep.value.param == "user"
    with pytest.raises(InvalidRequest) as lone:
        await parsing.json_object(request(b'{"prompt": "\\ud800"}', "application/json"))
    assert lone.value.param == "prompt"


def test_pydantic_errors_become_400s_naming_their_param() -> None:
    with pytest.raises(UnknownParameter):
        parsing.validate(CreateImageRequest, {"prompt": "x", "nope": 1})
    with pytest.raises(InvalidRequest) as missing:
        parsing.validate(CreateImageRequest, {})
    assert missing.value.param == "prompt" and missing.value.code == "missing_required_parameter"
    with pytest.raises(InvalidRequest) as typed:
        parsing.validate(CreateImageRequest, {"prompt": "x", "n": parsing._parse_int("9" * 5000)})
    assert typed.value.param == "n" and "5000 digits" in typed.value.message
    assert parsing.validate(CreateImageRequest, {"prompt": "x", "n": None}).n is None  # null: the default


# -- forms ---------------------------------------------------------------------------------------------


async def test_a_form_reads_fields_and_files_within_its_limits() -> None:
    body, kind = multipart([("prompt", b"a cat", None), ("image", png(), "a.png")])
    form = await forms.read_form(request(body, kind), max_file_bytes=1 << 20, max_files=2)
    try:
        assert form.fields == {"prompt": "a cat"} and len(form.files["image"]) == 1
    finally:
        form.close()
    body, kind = multipart([("image", png(), "a.png")])
    with pytest.raises(InvalidImage) as big:
        await forms.read_form(request(body, kind), max_file_bytes=64, max_files=2)
    assert big.value.param == "image"


async def test_a_file_where_text_belongs_names_the_field() -> None:
    body, kind = multipart([("prompt", b"x", "p.txt")])
    form = await forms.read_form(request(body, kind), max_file_bytes=1 << 20, max_files=2)
    try:
        with pytest.raises(InvalidRequest) as wrong:
            forms.check_part_kinds(form, file_fields=("image",), text_fields=("prompt",))
        assert wrong.value.param == "prompt"
    finally:
        form.close()


# -- uploads -------------------------------------------------------------------------------------------


async def test_uploads_decode_and_refuse_with_their_param() -> None:
    profile = rules.OPENAI_PROFILES["gpt-image-1"]
    image = await uploads.decode(png(), param="image[1]", profile=profile, max_pixels=1 << 24)
    assert image.size == (32, 32)
    with pytest.raises(InvalidImage) as corrupt:
        await uploads.decode(
            b"\x89PNG\r\n\x1a\nbroken", param="image[1]", profile=profile, max_pixels=1 << 24
        )
    assert corrupt.value.param == "image[1]"
    with pytest.raises(InvalidRequest):
        uploads.check_count(profile, 0)
    with pytest.raises(InvalidImage):
        uploads.check_count(rules.OPENAI_PROFILES["dall-e-2"], 2)


async def test_a_mask_marks_its_transparent_pixels_for_redrawing() -> None:
    profile = rules.OPENAI_PROFILES["gpt-image-1"]
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 0, 32, 32))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    region = await uploads.edit_mask(
        profile, [Image.new("RGB", (32, 32))], buffer.getvalue(), max_pixels=1 << 24
    )
    assert region is not None and region.getpixel((4, 4)) == 0 and region.getpixel((28, 4)) == 255
