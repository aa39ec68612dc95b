"""Bad and hostile uploads: each a 400 naming the param, and the server keeps serving."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

from tests.support import schema
from tests.support.images import encoded, gradient, half_mask, png_bytes
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="unused", max_retries=0)


def bomb_png(side: int = 40000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (the IDAT is a few KB of compressed zeros)."""
    raw = zlib.compress(b"\x00" * (side // 8 + 1) * 64, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


GOOD = png_bytes(gradient(256, 256))

# (description, request kwargs builder, expected param)
CASES: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("truncated png", lambda: {"image": ("a.png", GOOD[: len(GOOD) // 2], "image/png")}, "image"),
    (
        "corrupt png",
        lambda: {"image": ("a.png", GOOD[:60] + os.urandom(500) + GOOD[-40:], "image/png")},
        "image",
    ),
    ("text named png", lambda: {"image": ("a.png", b"hello, I am not an image" * 10, "image/png")}, "image"),
    ("html named png", lambda: {"image": ("a.png", b"<html><body>hi</body></html>", "image/png")}, "image"),
    ("empty file", lambda: {"image": ("a.png", b"", "image/png")}, "image"),
    ("decompression bomb", lambda: {"image": ("a.png", bomb_png(), "image/png")}, "image"),
    ("gif", lambda: {"image": ("a.gif", encoded(gradient(64, 64), "GIF"), "image/gif")}, "image"),
    (
        "mask of other dimensions",
        lambda: {
            "image": ("a.png", GOOD, "image/png"),
            "mask": ("m.png", png_bytes(half_mask(128, 128)), "image/png"),
        },
        "mask",
    ),
    (
        "mask that is a jpeg",
        lambda: {
            "image": ("a.png", GOOD, "image/png"),
            "mask": ("m.jpg", encoded(gradient(256, 256), "JPEG"), "image/jpeg"),
        },
        "mask",
    ),
    (
        "mask without alpha",
        lambda: {
            "image": ("a.png", GOOD, "image/png"),
            "mask": ("m.png", png_bytes(gradient(256, 256)), "image/png"),
        },
        "mask",
    ),
    ("17 images", lambda: {"image": [("a.png", GOOD, "image/png")] * 17}, "image"),
    ("empty prompt", lambda: {"image": ("a.png", GOOD, "image/png"), "prompt": ""}, "prompt"),
    (
        "prompt over the limit",
        lambda: {"image": ("a.png", GOOD, "image/png"), "prompt": "x" * 32001},
        "prompt",
    ),
]

DALL_E_2_CASES: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    (
        "non-square",
        lambda: {"image": ("a.png", png_bytes(gradient(256, 128, rgba=True)), "image/png")},
        "image",
    ),
    (
        "jpeg for dall-e-2",
        lambda: {"image": ("a.jpg", encoded(gradient(256, 256), "JPEG"), "image/jpeg")},
        "image",
    ),
    (
        "over 4 MB",
        lambda: {
            "image": (
                "a.png",
                png_bytes(Image.frombytes("RGBA", (1024, 1024), os.urandom(1024 * 1024 * 4))),
                "image/png",
            )
        },
        "image",
    ),
    ("two images", lambda: {"image": [("a.png", GOOD, "image/png")] * 2}, "image"),
]


def _edit(client: openai.OpenAI, model: str, kwargs: dict[str, Any]) -> None:
    kwargs = {"prompt": "a star", **kwargs}
    client.images.edit(model=model, **kwargs)


@pytest.mark.parametrize("name,build,param", CASES, ids=[c[0] for c in CASES])
def test_hostile_edit_uploads(
    client: openai.OpenAI, name: str, build: Callable[[], dict[str, Any]], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _edit(client, "gpt-image-1", build())
    assert info.value.param == param, info.value.message
    schema.validate_error(info.value.response.json())
    assert client.images.generate(model="gpt-image-1", prompt="still here", quality="low").data


@pytest.mark.parametrize("name,build,param", DALL_E_2_CASES, ids=[c[0] for c in DALL_E_2_CASES])
def test_dall_e_2_upload_rules(
    client: openai.OpenAI, name: str, build: Callable[[], dict[str, Any]], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _edit(client, "dall-e-2", build())
    assert info.value.param == param, info.value.message


@pytest.mark.parametrize(
    "name,image",
    [
        ("non-square", png_bytes(gradient(256, 128))),
        ("jpeg", encoded(gradient(256, 256), "JPEG")),
        ("not an image", b"GIF89a but not really"),
        ("bomb", bomb_png()),
    ],
)
def test_hostile_variation_uploads(client: openai.OpenAI, name: str, image: bytes) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.create_variation(image=("a.png", image, "image/png"))
    assert info.value.param == "image"
    schema.validate_error(info.value.response.json())


def test_variation_field_rules(client: openai.OpenAI) -> None:
    for kwargs, param in [
        ({"n": 11}, "n"),
        ({"size": "1536x1024"}, "size"),
        ({"model": "gpt-image-1"}, "model"),
    ]:
        with pytest.raises(openai.BadRequestError) as info:
            client.images.create_variation(image=("a.png", GOOD, "image/png"), **kwargs)  # type: ignore[arg-type]
        assert info.value.param == param


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def test_60_mb_upload_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    with start_server(tmp_path / "data") as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        client.images.edit(
            model="gpt-image-1", image=("a.png", GOOD, "image/png"), prompt="warm up", quality="low"
        )
        before = _peak_rss_kib(server.process.pid)
        big = io.BytesIO(b"\x89PNG\r\n\x1a\n" + os.urandom(60 * 1024 * 1024))
        with pytest.raises(openai.BadRequestError) as info:
            client.images.edit(model="gpt-image-1", image=("big.png", big, "image/png"), prompt="x")
        assert info.value.param == "image" and "too large" in info.value.message
        grown_mib = (_peak_rss_kib(server.process.pid) - before) / 1024
        assert grown_mib < 25, f"server peak memory grew {grown_mib:.0f} MiB for a 60 MB upload"
        assert client.images.generate(model="gpt-image-1", prompt="still serving", quality="low").data
