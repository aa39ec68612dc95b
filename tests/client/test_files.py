"""Every accepted file form becomes the right multipart part, with its type taken from the bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image as PILImage

from limner.client import ApiClient, Configuration, ImagesApi, sniff_content_type
from limner.client._files import file_parts, to_file_part
from tests.client.scripted_server import Reply, scripted


def encoded(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG, JPEG, WEBP = encoded("PNG"), encoded("JPEG"), encoded("WEBP")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (b"GIF89a....", "image/gif"),
        (b"not an image", None),
    ],
)
def test_sniff(data: bytes, expected: str | None) -> None:
    assert sniff_content_type(data[:16]) == expected


def test_a_misnamed_path_is_sent_as_what_its_bytes_are(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(JPEG)
    part = to_file_part("image", path)
    assert (part.filename, part.content_type, part.content) == ("photo.png", "image/jpeg", JPEG)
    assert to_file_part("image", str(path)).content == JPEG


def test_bytes_and_buffers_without_names_get_a_name_from_their_type() -> None:
    assert to_file_part("image", WEBP).filename == "image.webp"
    assert to_file_part("mask", io.BytesIO(PNG)).filename == "mask.png"
    assert to_file_part("image[]", bytearray(JPEG)).filename == "image.jpg"


def test_a_file_object_keeps_its_name_and_is_read_from_its_position(tmp_path: Path) -> None:
    path = tmp_path / "x.webp"
    path.write_bytes(WEBP)
    with path.open("rb") as handle:
        part = to_file_part("image", handle)
    assert (part.filename, part.content_type, part.content) == ("x.webp", "image/webp", WEBP)


def test_tuples_with_and_without_an_explicit_type() -> None:
    assert to_file_part("image", ("a.bin", PNG)).content_type == "image/png"
    assert to_file_part("image", ("a.png", PNG, "image/x-custom")).content_type == "image/x-custom"
    assert to_file_part("image", ("a.png", io.BytesIO(JPEG))).content_type == "image/jpeg"


def test_a_pil_image_is_sent_as_png() -> None:
    part = to_file_part("image", PILImage.new("RGBA", (4, 4)))
    assert part.content_type == "image/png" and isinstance(part.content, bytes)
    assert PILImage.open(io.BytesIO(part.content)).size == (4, 4)


def test_text_mode_files_and_unknown_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("x")
    with path.open() as text, pytest.raises(TypeError, match="binary mode"):
        to_file_part("image", text)
    with pytest.raises(TypeError, match="Unsupported file input"):
        to_file_part("image", 42)


def test_a_list_becomes_image_array_parts() -> None:
    parts = file_parts("image", [PNG, JPEG])
    assert [p.field for p in parts] == ["image[]", "image[]"]
    assert [p.field for p in file_parts("image", PNG)] == ["image"]
    with pytest.raises(ValueError):
        file_parts("image", [])


def test_the_wire_carries_each_form_as_a_typed_part(tmp_path: Path) -> None:
    path = tmp_path / "first.png"
    path.write_bytes(PNG)
    with scripted(Reply()) as server, ApiClient(Configuration(host=server.url)) as client:
        ImagesApi(client).create_image_edit(
            [path, io.BytesIO(JPEG), ("third", WEBP, None), PILImage.new("RGB", (3, 3))],
            "a hat",
            mask=PNG,
            n=2,
            model="gpt-image-1",
            input_fidelity="high",
            stream=False,
        )
    parts = server.received[0].multipart()
    fields = {name: payload.decode() for name, filename, _, payload in parts if filename is None}
    assert fields == {
        "prompt": "a hat",
        "n": "2",
        "model": "gpt-image-1",
        "input_fidelity": "high",
        "stream": "false",
    }
    files = [(name, filename, ctype) for name, filename, ctype, _ in parts if filename is not None]
    assert files == [
        ("image[]", "first.png", "image/png"),
        ("image[]", "image.jpg", "image/jpeg"),
        ("image[]", "third", "image/webp"),
        ("image[]", "image.png", "image/png"),
        ("mask", "mask.png", "image/png"),
    ]
