"""Tests for limner.imaging: hostile uploads, decoding, masks, composition and encoding.

Every test image is made here, in code: no binary fixtures.
"""

from __future__ import annotations

import functools
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limner.errors import InvalidImage
from limner.imaging import (
    EDIT_FORMATS,
    PNG_ONLY,
    alpha_edit_region,
    compose,
    content_type_for,
    decode_image,
    encode_image,
    encode_preview,
    extension_for,
    mask_from_alpha,
    png_zlib_level,
    sniff_format,
)

ALL_FORMATS = frozenset({"png", "jpeg", "webp", "gif", "bmp", "tiff"})


# --------------------------------------------------------------------------------------------------
# Making test data


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)


def picture(size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A smooth gradient with mild grain: compresses like a picture, not like noise."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    arr += np.random.default_rng(1).normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, bit_depth: int, color_type: int, row: bytes) -> bytes:
    """A PNG written by hand, every row equal to `row` (filter byte included), streamed into zlib."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def png_bomb() -> bytes:
    """30000x30000 1-bit black PNG: 900 million pixels in about a hundred kilobytes."""
    return raw_png(30000, 30000, bit_depth=1, color_type=0, row=bytes(1 + 30000 // 8))


@functools.cache
def small_png_bomb() -> bytes:
    """5000x5000 greyscale: under Pillow's own bomb limit (89M pixels) but over limner's (16.7M)."""
    return raw_png(5000, 5000, bit_depth=8, color_type=0, row=bytes(1 + 5000))


def gif_bomb() -> bytes:
    """A real 1x1 GIF whose logical screen claims 65535x65535."""
    data = bytearray(encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def webp_bomb(chunk: str = "VP8X") -> bytes:
    """A small real WebP whose header claims a 16384x16384 (or 16383x16383) canvas.

    "VP8X": an extended-format canvas wrapped around a real lossy frame (libwebp allocates the
    canvas when the file is opened); "VP8L" and "VP8 ": the lossless and lossy frame headers patched.
    """
    if chunk == "VP8X":
        vp8 = encoded(Image.new("RGB", (16, 16)), "WEBP", quality=50)
        payload = b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
        body = b"WEBP" + b"VP8X" + struct.pack("<I", len(payload)) + payload + vp8[12:]
        return b"RIFF" + struct.pack("<I", len(body)) + body
    data = bytearray(encoded(Image.new("RGB", (16, 16)), "WEBP", lossless=chunk == "VP8L", quality=50))
    assert data[12:16] == chunk.encode()
    if chunk == "VP8L":
        bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
        struct.pack_into("<I", data, 21, bits | 16383 | (16383 << 14))
    else:
        struct.pack_into("<HH", data, 26, 16383, 16383)
    return bytes(data)


def jpeg_bomb() -> bytes:
    """A real 16x16 JPEG whose SOF0 frame header is patched to claim 60000x60000."""
    data = bytearray(encoded(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A real 1x1 TIFF whose ImageWidth and ImageLength tags are patched to claim width x height."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "TIFF"))
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, value)
    return bytes(data)


def jpeg_with_exif_first(size: tuple[int, int]) -> bytes:
    """A JPEG with a large EXIF segment before its frame header, so the header is far from the start."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 30000  # ImageDescription
    return encoded(noise(size), "JPEG", exif=exif.tobytes())


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_png_idat() -> bytes:
    data = bytearray(encoded(noise((64, 64)), "PNG"))
    start = data.index(b"IDAT") + 4 + 20
    data[start : start + 200] = bytes(200)
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# Hostile uploads


HOSTILE: list[tuple[str, Callable[[], bytes], dict[str, object], str]] = [
    ("truncated png", lambda: truncated(encoded(noise((64, 64)), "PNG")), {}, "truncated or corrupt"),
    ("corrupt png data", corrupt_png_idat, {}, "truncated or corrupt"),
    ("png signature then junk", lambda: b"\x89PNG\r\n\x1a\n" + b"junk" * 50, {}, "truncated or corrupt"),
    ("truncated jpeg", lambda: truncated(encoded(noise((64, 64)), "JPEG")), {}, "truncated or corrupt"),
    ("truncated webp", lambda: truncated(encoded(noise((64, 64)), "WEBP")), {}, "truncated or corrupt"),
    ("random bytes", lambda: random.Random(7).randbytes(4096), {}, "not an image"),
    ("text file", lambda: b"just some notes, not a picture\n" * 40, {}, "not an image"),
    ("html file", lambda: b"<!DOCTYPE html><html><body><img src=x></body></html>", {}, "not an image"),
    (
        "svg file",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        {},
        "not an image",
    ),
    ("empty file", lambda: b"", {}, "empty"),
    ("zero-width png", lambda: raw_png(0, 10, bit_depth=8, color_type=0, row=b"\x00"), {}, "no pixels"),
    ("png bomb 30000x30000", png_bomb, {}, "30000x30000"),
    ("png bomb under Pillow's limit", small_png_bomb, {}, "5000x5000"),
    ("gif bomb", gif_bomb, {"allowed_formats": ALL_FORMATS}, "65535x65535"),
    ("webp bomb (VP8X canvas)", webp_bomb, {}, "16384x16384"),
    ("webp bomb (lossless)", lambda: webp_bomb("VP8L"), {}, "16384x16384"),
    ("webp bomb (lossy)", lambda: webp_bomb("VP8 "), {}, "16383x16383"),
    ("jpeg bomb", jpeg_bomb, {}, "60000x60000"),
    ("jpeg under Pillow's limit", lambda: jpeg_with_exif_first((64, 64)), {"max_pixels": 4000}, "64x64"),
    ("tiff bomb", lambda: tiff_claiming(60000, 60000), {"allowed_formats": ALL_FORMATS}, "too large"),
    (
        "tiff under Pillow's limit",
        lambda: tiff_claiming(5000, 5000),
        {"allowed_formats": ALL_FORMATS},
        "5000x5000",
    ),
    ("small max_pixels", lambda: encoded(noise((100, 100)), "PNG"), {"max_pixels": 5000}, "limit is 5000"),
    ("jpeg where png only", lambda: encoded(noise((8, 8)), "JPEG"), {"allowed_formats": PNG_ONLY}, "jpeg"),
    ("webp where png only", lambda: encoded(noise((8, 8)), "WEBP"), {"allowed_formats": PNG_ONLY}, "webp"),
    ("gif not allowed", lambda: encoded(Image.new("P", (8, 8)), "GIF"), {}, "got gif"),
    ("bmp not allowed", lambda: encoded(noise((8, 8)), "BMP"), {}, "got bmp"),
    ("non-square", lambda: encoded(noise((64, 32)), "PNG"), {"require_square": True}, "must be square"),
    ("over max_bytes", lambda: encoded(noise((64, 64)), "PNG"), {"max_bytes": 1000}, "too large"),
]


@pytest.mark.parametrize("param", ["image", "image[]", "mask"])
@pytest.mark.parametrize(
    ("make", "options", "phrase"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_hostile_upload_is_refused_naming_the_field(
    make: Callable[[], bytes], options: dict[str, object], phrase: str, param: str
) -> None:
    kwargs: dict[str, object] = {"allowed_formats": EDIT_FORMATS, **options}
    with pytest.raises(InvalidImage) as info:
        decode_image(make(), param=param, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.param == param
    assert err.status_code == 400
    assert err.code == "invalid_image"
    assert phrase in err.message
    assert f"'{param}'" in err.message


def test_format_errors_say_what_is_allowed() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(encoded(noise((8, 8)), "GIF"), param="image", allowed_formats=EDIT_FORMATS)
    assert "Supported formats are png, webp, jpeg." in info.value.message
    with pytest.raises(InvalidImage) as info:
        decode_image(b"hello", param="image", allowed_formats=PNG_ONLY)
    assert "Supported formats are png." in info.value.message


def test_a_file_is_judged_by_its_content_not_its_name(tmp_path: Path) -> None:
    # A JPEG saved as "photo.png": the name is never consulted, so it is refused where only PNG goes.
    path = tmp_path / "photo.png"
    path.write_bytes(encoded(noise((8, 8)), "JPEG"))
    with path.open("rb") as f, pytest.raises(InvalidImage, match="got jpeg"):
        decode_image(f, param="image", allowed_formats=PNG_ONLY)


@pytest.mark.parametrize("make", [png_bomb, gif_bomb, webp_bomb, jpeg_bomb])
def test_bomb_is_refused_fast_and_small(make: Callable[[], bytes]) -> None:
    data = make()
    assert len(data) < 200_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InvalidImage, match="too large"):
            decode_image(data, param="image", allowed_formats=ALL_FORMATS)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 5 * 1024 * 1024


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from limner.errors import InvalidImage
    from limner.imaging import decode_image
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None  # an application that switched Pillow's global check off
    data = Path(sys.argv[1]).read_bytes()
    try:
        decode_image(data, param="image", allowed_formats=frozenset({"png", "webp", "gif", "jpeg"}))
    except InvalidImage:
        print("refused")
    else:
        print("decoded")
    """
)


def _child_peak_rss_kib(path: Path) -> tuple[str, int]:
    """Run a decode in a fresh interpreter; return its output and its own peak RSS (KiB)."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read().strip()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return out, usage.ru_maxrss


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 for per-process peak RSS")
def test_bomb_allocates_no_pixels_in_native_memory(tmp_path: Path) -> None:
    # tracemalloc cannot see Pillow's C allocations; a child's own peak RSS can. Baseline: the same
    # child decoding a small real picture. Decoding the bomb would take 856 MiB. The child turns
    # Pillow's global limit off, so only limner's own check stands between it and the pixels.
    small = tmp_path / "small.png"
    small.write_bytes(encoded(picture((64, 64)), "PNG"))
    base_out, base_rss = _child_peak_rss_kib(small)
    assert base_out == "decoded"
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb())
    out, rss = _child_peak_rss_kib(bomb)
    assert out == "refused"
    assert rss - base_rss < 50 * 1024, f"the bomb raised peak RSS by {(rss - base_rss) // 1024} MiB"


def test_global_pillow_limit_is_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidImage):
        decode_image(small_png_bomb(), param="image", allowed_formats=PNG_ONLY)
    assert before == Image.MAX_IMAGE_PIXELS
    # A caller may allow more than the default: the same 5000x5000 file then decodes.
    image = decode_image(small_png_bomb(), param="image", allowed_formats=PNG_ONLY, max_pixels=5000 * 5000)
    assert image.size == (5000, 5000)


def test_allowed_formats_must_be_decodable() -> None:
    with pytest.raises(ValueError):
        decode_image(b"", param="image", allowed_formats=frozenset({"ico"}))
    with pytest.raises(ValueError):
        decode_image(b"", param="image", allowed_formats=frozenset())


# --------------------------------------------------------------------------------------------------
# Valid uploads


def palette_with_trns() -> bytes:
    image = Image.new("P", (20, 10), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(0, (0, 0, 10, 10))
    return encoded(image, "PNG", transparency=0)  # palette entry 0 (the red half) is transparent


def grey16_png() -> bytes:
    arr = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    return raw_png(4, 1, bit_depth=16, color_type=0, row=b"\x00" + arr.astype(">u2").tobytes())


VALID: list[tuple[str, Callable[[], bytes], str, tuple[int, int]]] = [
    ("png rgb", lambda: encoded(noise((40, 30)), "PNG"), "RGB", (40, 30)),
    ("png rgba", lambda: encoded(noise((40, 30), "RGBA"), "PNG"), "RGBA", (40, 30)),
    ("png grey", lambda: encoded(noise((40, 30), "L"), "PNG"), "RGB", (40, 30)),
    ("png grey+alpha", lambda: encoded(noise((40, 30), "LA"), "PNG"), "RGBA", (40, 30)),
    ("png 1-bit", lambda: encoded(Image.new("1", (40, 30), 1), "PNG"), "RGB", (40, 30)),
    ("png palette", lambda: encoded(noise((40, 30)).convert("P"), "PNG"), "RGB", (40, 30)),
    ("png palette + tRNS", palette_with_trns, "RGBA", (20, 10)),
    ("png rgb + tRNS", lambda: encoded(noise((16, 16)), "PNG", transparency=(0, 0, 0)), "RGBA", (16, 16)),
    ("png 16-bit grey", grey16_png, "RGB", (4, 1)),
    ("jpeg", lambda: encoded(picture((64, 48)), "JPEG"), "RGB", (64, 48)),
    ("jpeg progressive", lambda: encoded(picture((64, 48)), "JPEG", progressive=True), "RGB", (64, 48)),
    ("jpeg with big exif", lambda: jpeg_with_exif_first((40, 30)), "RGB", (40, 30)),
    ("jpeg cmyk", lambda: encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), "RGB", (32, 32)),
    ("webp lossy", lambda: encoded(picture((64, 48)), "WEBP"), "RGB", (64, 48)),
    ("webp alpha", lambda: encoded(noise((64, 48), "RGBA"), "WEBP"), "RGBA", (64, 48)),
    ("webp lossless", lambda: encoded(noise((64, 48)), "WEBP", lossless=True), "RGB", (64, 48)),
    ("gif", lambda: encoded(noise((30, 30)).convert("P"), "GIF"), "RGB", (30, 30)),
    ("bmp", lambda: encoded(noise((30, 20)), "BMP"), "RGB", (30, 20)),
    ("tiff", lambda: encoded(noise((30, 20)), "TIFF"), "RGB", (30, 20)),
    (
        "tiff rgba deflate",
        lambda: encoded(noise((30, 20), "RGBA"), "TIFF", compression="tiff_adobe_deflate"),
        "RGBA",
        (30, 20),
    ),
]


@pytest.mark.parametrize(("make", "mode", "size"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_upload_decodes_to_rgb_or_rgba(
    make: Callable[[], bytes], mode: str, size: tuple[int, int]
) -> None:
    data = make()
    image = decode_image(data, param="image", allowed_formats=ALL_FORMATS)
    assert image.mode == mode
    assert image.size == size
    assert image.info == {}
    assert image.getpixel((0, 0)) is not None  # loaded: pixels are there without the source


def test_lossless_decode_keeps_pixels_exactly() -> None:
    source = noise((33, 17), "RGBA", seed=3)
    image = decode_image(encoded(source, "PNG"), param="image", allowed_formats=PNG_ONLY)
    assert np.array_equal(np.asarray(image), np.asarray(source))


def test_palette_transparency_becomes_alpha() -> None:
    image = decode_image(palette_with_trns(), param="image", allowed_formats=PNG_ONLY)
    assert image.getpixel((2, 2)) == (255, 0, 0, 0)  # palette entry 0, marked transparent by tRNS
    assert image.getpixel((15, 5)) == (0, 0, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    image = decode_image(grey16_png(), param="image", allowed_formats=PNG_ONLY)
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def _red_left_blue_right(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def _close(pixel: object, colour: tuple[int, int, int]) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) < 40 for a, b in zip(pixel[:3], colour, strict=True))


@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "blue_at"),
    [
        (1, (40, 20), (5, 10), (35, 10)),  # as stored
        (3, (40, 20), (35, 10), (5, 10)),  # rotated 180: red moves right
        (6, (20, 40), (10, 5), (10, 35)),  # rotate 90 clockwise to view: the left edge goes to the top
        (8, (20, 40), (10, 35), (10, 5)),  # rotate 90 anticlockwise: the left edge goes to the bottom
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], red_at: tuple[int, int], blue_at: tuple[int, int]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(_red_left_blue_right(), "JPEG", quality=95, exif=exif.tobytes())
    image = decode_image(data, param="image", allowed_formats=EDIT_FORMATS)
    assert image.size == size
    assert _close(image.getpixel(red_at), (255, 0, 0))
    assert _close(image.getpixel(blue_at), (0, 0, 255))


def test_animated_gif_gives_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    image = decode_image(buf.getvalue(), param="image", allowed_formats=frozenset({"gif"}))
    assert image.size == (16, 16)
    assert image.getpixel((8, 8)) == (255, 0, 0)


def test_square_is_accepted_when_required() -> None:
    data = encoded(noise((64, 64)), "PNG")
    image = decode_image(
        data, param="image", allowed_formats=PNG_ONLY, require_square=True, max_bytes=len(data)
    )
    assert image.size == (64, 64)


# --------------------------------------------------------------------------------------------------
# File-object sources


class CountingFile(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out


class Pipe(io.RawIOBase):
    """A stream that cannot seek, like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_bytesio_source() -> None:
    source = noise((24, 24), "RGBA")
    image = decode_image(io.BytesIO(encoded(source, "PNG")), param="image", allowed_formats=PNG_ONLY)
    assert np.array_equal(np.asarray(image), np.asarray(source))


def test_source_is_read_from_its_current_position() -> None:
    data = encoded(noise((24, 24)), "PNG")
    f = io.BytesIO(b"prefix" + data)
    f.seek(6)
    assert decode_image(f, param="image", allowed_formats=PNG_ONLY, max_bytes=len(data)).size == (24, 24)


def test_tempfile_source_on_disk() -> None:
    data = encoded(picture((128, 96)), "WEBP")
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        image = decode_image(f, param="image", allowed_formats=EDIT_FORMATS)
    assert (image.mode, image.size) == ("RGB", (128, 96))


def test_spooled_upload_rolled_to_disk() -> None:
    data = encoded(noise((64, 64)), "PNG")
    with tempfile.SpooledTemporaryFile(max_size=1024) as f:
        f.write(data)
        f.seek(0)
        assert f._rolled  # type: ignore[attr-defined]  # the multipart case: the upload is on disk
        assert decode_image(f, param="image[]", allowed_formats=EDIT_FORMATS).size == (64, 64)


def test_oversized_seekable_file_is_refused_without_reading_it() -> None:
    f = CountingFile(encoded(noise((64, 64)), "PNG"))
    with pytest.raises(InvalidImage, match="too large") as info:
        decode_image(f, param="mask", allowed_formats=PNG_ONLY, max_bytes=100)
    assert info.value.param == "mask"
    assert f.bytes_read == 0


def test_unseekable_stream() -> None:
    data = encoded(noise((32, 32)), "PNG")
    assert decode_image(Pipe(data), param="image", allowed_formats=PNG_ONLY).size == (32, 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidImage, match="too large"):
        decode_image(Pipe(data), param="image", allowed_formats=PNG_ONLY, max_bytes=len(data) - 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Sniffing and names


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: encoded(noise((4, 4)), "PNG"), "png"),
        (lambda: encoded(noise((4, 4)), "JPEG"), "jpeg"),
        (lambda: encoded(noise((4, 4)), "WEBP"), "webp"),
        (lambda: encoded(noise((4, 4)), "GIF"), "gif"),
        (lambda: encoded(noise((4, 4)), "BMP"), "bmp"),
        (lambda: encoded(noise((4, 4)), "TIFF"), "tiff"),
        (lambda: encoded(noise((16, 16)), "ICO"), "ico"),
        (lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "avif"),
        (lambda: b"BM not really a bitmap header", None),
        (lambda: b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (lambda: b"%PDF-1.7", None),
        (lambda: b"", None),
    ],
)
def test_sniff_format(make: Callable[[], bytes], expected: str | None) -> None:
    assert sniff_format(make()[:32]) == expected


def test_content_type_and_extension() -> None:
    assert [content_type_for(f) for f in ("png", "jpeg", "webp")] == ["image/png", "image/jpeg", "image/webp"]
    assert [extension_for(f) for f in ("png", "jpeg", "webp")] == ["png", "jpg", "webp"]
    with pytest.raises(ValueError):
        content_type_for("svg")
    with pytest.raises(ValueError):
        extension_for("svg")


# --------------------------------------------------------------------------------------------------
# Masks


def _hole_mask(size: tuple[int, int], hole: tuple[int, int, int, int], mode: str = "RGBA") -> Image.Image:
    """Opaque everywhere except `hole`, which is fully transparent; one pixel with alpha 1."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    mask.putpixel((size[0] - 1, size[1] - 1), (0, 0, 0, 1))  # almost transparent is still "keep"
    return mask.convert(mode) if mode != "RGBA" else mask


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_mask_marks_fully_transparent_pixels(mode: str) -> None:
    mask = mask_from_alpha(_hole_mask((32, 16), (4, 4, 12, 10), mode), (32, 16))
    arr = np.asarray(mask)
    assert mask.mode == "L"
    expected = np.zeros((16, 32), dtype=np.uint8)
    expected[4:10, 4:12] = 255
    assert np.array_equal(arr, expected)


def test_mask_from_uploaded_png() -> None:
    data = encoded(_hole_mask((32, 32), (0, 0, 16, 32)), "PNG")
    decoded = decode_image(data, param="mask", allowed_formats=PNG_ONLY)
    mask = mask_from_alpha(decoded, (32, 32))
    assert np.asarray(mask)[:, :16].min() == 255
    assert np.asarray(mask)[:, 16:].max() == 0


def test_palette_mask_with_trns() -> None:
    decoded = decode_image(palette_with_trns(), param="mask", allowed_formats=PNG_ONLY)
    mask = np.asarray(mask_from_alpha(decoded, (20, 10)))
    assert mask[:, :10].min() == 255 and mask[:, 10:].max() == 0


def test_mask_size_mismatch_names_both_sizes() -> None:
    with pytest.raises(InvalidImage) as info:
        mask_from_alpha(_hole_mask((512, 512), (0, 0, 8, 8)), (1024, 768))
    assert info.value.param == "mask"
    assert "512x512" in info.value.message and "1024x768" in info.value.message


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_mask_without_alpha_is_refused(mode: str) -> None:
    decoded = decode_image(encoded(Image.new(mode, (16, 16)), "PNG"), param="mask", allowed_formats=PNG_ONLY)
    with pytest.raises(InvalidImage, match="no alpha channel") as info:
        mask_from_alpha(decoded, (16, 16))
    assert info.value.param == "mask"


def test_alpha_edit_region() -> None:
    assert alpha_edit_region(noise((16, 16))) is None
    assert alpha_edit_region(Image.new("RGBA", (16, 16), (1, 2, 3, 1))) is None  # no alpha == 0
    image = Image.new("RGBA", (16, 16), (9, 9, 9, 255))
    image.paste((0, 0, 0, 0), (2, 3, 6, 8))
    region = alpha_edit_region(image)
    assert region is not None and region.mode == "L"
    assert region.getbbox() == (2, 3, 6, 8)
    assert np.asarray(region).sum() == 255 * 4 * 5


# --------------------------------------------------------------------------------------------------
# Composition


@pytest.mark.parametrize(
    ("original_mode", "generated_mode", "result_mode"),
    [("RGB", "RGB", "RGB"), ("RGB", "RGBA", "RGBA"), ("RGBA", "RGB", "RGBA"), ("RGBA", "RGBA", "RGBA")],
)
def test_compose_keeps_outside_pixels_identical(
    original_mode: str, generated_mode: str, result_mode: str
) -> None:
    original = noise((48, 32), original_mode, seed=1)
    generated = noise((48, 32), generated_mode, seed=2)
    mask = Image.new("L", (48, 32), 0)
    mask.paste(255, (10, 5, 30, 20))
    out = compose(original, generated, mask)
    assert out.mode == result_mode
    inside = np.asarray(mask) == 255
    got = np.asarray(out)
    want_outside = np.asarray(original.convert(result_mode))
    want_inside = np.asarray(generated.convert(result_mode))
    assert np.array_equal(got[~inside], want_outside[~inside])
    assert np.array_equal(got[inside], want_inside[inside])


def test_compose_refuses_mismatched_sizes() -> None:
    with pytest.raises(ValueError):
        compose(noise((8, 8)), noise((8, 9)), Image.new("L", (8, 8)))


# --------------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_encode_round_trip(fmt: str, mode: str) -> None:
    source = picture((96, 64))
    if mode == "RGBA":
        source = source.convert("RGBA")
        source.paste((0, 0, 0, 0), (0, 0, 20, 20))
    elif mode != "RGB":
        source = source.convert(mode)
    data = encode_image(source, output_format=fmt, compression=None)  # type: ignore[arg-type]
    assert sniff_format(data[:32]) == fmt
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    assert decoded.size == (96, 64)
    keeps_alpha = mode == "RGBA" and fmt != "jpeg"
    assert decoded.mode == ("RGBA" if keeps_alpha else "RGB")
    if keeps_alpha:
        assert decoded.getchannel("A").getpixel((5, 5)) == 0
        assert decoded.getchannel("A").getpixel((50, 50)) == 255
    if fmt == "png":
        assert np.array_equal(np.asarray(decoded), np.asarray(source.convert(decoded.mode)))


def test_jpeg_flattens_alpha_onto_white() -> None:
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 16, 32))  # transparent blue: must not show as blue or black
    decoded = Image.open(io.BytesIO(encode_image(image, output_format="jpeg")))
    assert decoded.mode == "RGB"
    assert _close(decoded.getpixel((4, 16)), (255, 255, 255))
    assert _close(decoded.getpixel((28, 16)), (255, 0, 0))
    assert image.mode == "RGBA"  # the caller's image is untouched


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lower_compression_gives_smaller_files(fmt: str) -> None:
    image = picture((256, 256))
    sizes = [len(encode_image(image, output_format=fmt, compression=c)) for c in (100, 75, 50, 10)]  # type: ignore[arg-type]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert len(encode_image(image, output_format=fmt, compression=None)) == sizes[0]  # type: ignore[arg-type]


def test_png_compression_changes_size_not_pixels() -> None:
    image = Image.new("RGB", (256, 256), (10, 20, 30))
    image.paste(picture((128, 128)).quantize(16).convert("RGB"), (64, 64))
    fast = encode_image(image, output_format="png", compression=100)
    small = encode_image(image, output_format="png", compression=0)
    assert len(small) < len(fast)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(small))), np.asarray(Image.open(io.BytesIO(fast))))


def test_png_zlib_level_mapping() -> None:
    assert [png_zlib_level(c) for c in (None, 100, 50, 0)] == [1, 1, 5, 9]


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    image = picture((32, 32))
    image.info["icc_profile"] = b"\x00" * 128 + b"SECRET-ICC"
    image.info["exif"] = exif.tobytes()
    for fmt in ("png", "jpeg", "webp"):
        data = encode_image(image, output_format=fmt)
        assert b"SECRET-ICC" not in data and b"SecretCam" not in data
        decoded = Image.open(io.BytesIO(data))
        assert "icc_profile" not in decoded.info and "exif" not in decoded.info
    assert "icc_profile" in image.info  # the caller's image is untouched


@pytest.mark.parametrize(("fmt", "compression"), [("png", 101), ("jpeg", -1), ("gif", None)])
def test_encode_refuses_bad_arguments(fmt: str, compression: int | None) -> None:
    with pytest.raises(ValueError):
        encode_image(picture((8, 8)), output_format=fmt, compression=compression)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_preview_is_the_same_picture_and_format(fmt: str) -> None:
    image = picture((128, 128)).convert("RGBA")
    data = encode_preview(image, output_format=fmt)  # type: ignore[arg-type]
    decoded = Image.open(io.BytesIO(data))
    assert sniff_format(data[:32]) == fmt and decoded.size == (128, 128)
    if fmt != "png":
        assert len(data) < len(encode_image(image, output_format=fmt))  # type: ignore[arg-type]
