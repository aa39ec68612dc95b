"""Pure image functions: check and decode uploads, masks from alpha, compose edits, encode outputs.

No server imports: the server hands in bytes or a binary file object (a multipart upload's
SpooledTemporaryFile, possibly rolled over to disk) and gets back PIL images or bytes. Every problem
with an upload is raised as :class:`limner.errors.InvalidImage` whose ``param`` names the form field
("image", "image[]", "mask"), so the server renders a 400 and never a 500.

Hostile uploads are the reason for the order of checks in :func:`decode_image`:

1. the byte size, from ``seek``/``tell`` where the source allows it, before reading anything;
2. the format, from magic bytes (never the file name or the declared content type), before any
   Pillow plugin sees the data, and only the plugin of the sniffed format is allowed to parse it;
3. the declared width x height against ``max_pixels``: read straight from the header for PNG, GIF,
   BMP and WebP before Pillow opens the file (Pillow's WebP plugin allocates the whole canvas when it
   opens), and from ``Image.open``'s header parse for every format before a single pixel is decoded.
   The global ``Image.MAX_IMAGE_PIXELS`` is neither relied on nor changed;
4. a full decode inside one guard, with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left off, so truncated
   or corrupt data is refused here and not half-way through an engine.

Output encoding (measured on the 2-core dev machine, 1024x1024 RGB, best of 5):

===============  ==============================  ===============================================
format           settings                         photo-like / flat synthetic picture
===============  ==============================  ===============================================
png (default)    zlib level 1                     147 ms, 1724 KiB / 27 ms, 63 KiB
png              zlib level 6 (Pillow default)    449 ms, 1556 KiB / 39 ms, 37 KiB
png              zlib level 9                     1434 ms, 1542 KiB / 111 ms, 31 KiB
jpeg (default)   quality 100, 4:4:4               18 ms, 1180 KiB
webp (default)   quality 100, method 2            158 ms, 565 KiB (method 4: 277 ms, 410 KiB)
webp             quality 80, method 2             91 ms, 134 KiB (method 4: 194 ms, 128 KiB)
===============  ==============================  ===============================================

Level 1 is three times faster than Pillow's default on photo-like output for 11% more bytes, and
this runs on every request, so it is the PNG default; callers who want smaller PNGs ask for a lower
``compression`` (see :func:`encode_image`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import IO, Literal, get_args

from PIL import ExifTags, Image, ImageOps

from limner.errors import InvalidImage

OutputFormat = Literal["png", "jpeg", "webp"]

#: The formats this module decodes. Each maps to the one Pillow plugin allowed to parse it. ICO and
#: AVIF are sniffed (for a clear error message) but never decoded: Pillow's ICO plugin decodes pixels
#: while it opens the file, before any size check could run.
DECODABLE_FORMATS: frozenset[str] = frozenset({"png", "jpeg", "webp", "gif", "bmp", "tiff"})

#: What the edit endpoint takes for GPT image models, and what dall-e-2 takes (image, mask, variation).
EDIT_FORMATS: frozenset[str] = frozenset({"png", "jpeg", "webp"})
PNG_ONLY: frozenset[str] = frozenset({"png"})

DEFAULT_MAX_PIXELS = 4096 * 4096

#: The order formats are listed in messages (OpenAI's order first).
_FORMAT_ORDER = ("png", "webp", "jpeg", "gif", "bmp", "tiff")

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}

_CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tiff"}

#: Bytes sniff_format and the header size check look at.
SNIFF_BYTES = 32

#: PNG zlib level for the default compression (100); see the table in the module docstring.
PNG_DEFAULT_ZLIB_LEVEL = 1
#: libwebp effort (0 fastest .. 6 smallest); 2 is about half the time of Pillow's 4 for similar size
#: at the qualities people ask for.
WEBP_METHOD = 2
#: From this JPEG quality up, keep full chroma resolution (4:4:4): "best quality" should not blur
#: colour edges. Below it, 4:2:0 (smaller files), which keeps sizes monotonic in the quality.
JPEG_FULL_CHROMA_FROM = 90

# Lookup table for Image.point: alpha 0 -> 255 (edit here), anything else -> 0 (keep).
_TRANSPARENT_TO_EDIT = [255] + [0] * 255

# BMP info header sizes (BITMAPCOREHEADER .. BITMAPV5HEADER): a file that starts with "BM" but has
# none of these is text or something else, not a bitmap.
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


# --------------------------------------------------------------------------------------------------
# Format names


def sniff_format(head: bytes) -> str | None:
    """Name the image format of data from its first bytes (at least 32 for WebP/AVIF), or None.

    Recognises "png", "jpeg", "webp", "gif", "bmp", "tiff", and also "ico", "avif" and "heic" so that
    messages can say what was sent. Looks at magic bytes only: a file's name and declared content
    type are whatever the client says and are never consulted.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES
    ):
        return "bmp"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ico"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "heic"
    return None


def content_type_for(fmt: str) -> str:
    """The MIME type for a format name: ``content_type_for("jpeg") == "image/jpeg"``."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}") from None


def extension_for(fmt: str) -> str:
    """The usual file extension for a format name, without the dot: "png", "jpg", "webp"."""
    try:
        return _EXTENSIONS[fmt]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}") from None


def _format_list(formats: Iterable[str]) -> str:
    chosen = set(formats)
    ordered = [f for f in _FORMAT_ORDER if f in chosen] + sorted(chosen - set(_FORMAT_ORDER))
    return ", ".join(ordered)


# --------------------------------------------------------------------------------------------------
# Decoding uploads


def decode_image(
    source: bytes | bytearray | memoryview | IO[bytes],
    *,
    param: str,
    allowed_formats: frozenset[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    require_square: bool = False,
    max_bytes: int | None = None,
) -> Image.Image:
    """Check and fully decode one uploaded image; return it in mode "RGB" or "RGBA".

    ``source`` is the raw bytes or a binary file object, read from its current position; a seekable
    file at position 0 (an upload) is measured with seek/tell and handed to Pillow as it is, never
    read whole into memory here. The result is "RGBA" whenever the source carries any transparency
    information (an alpha channel, LA, or palette/tRNS transparency), else "RGB". Animated images
    give their first frame. An EXIF orientation tag is applied (for any format that carries one, as
    browsers do), so width and height are the ones a viewer shows.

    Raises :class:`InvalidImage` with ``param`` for: an empty file, data that is not an image, a
    format outside ``allowed_formats``, more than ``max_bytes`` bytes, more than ``max_pixels``
    pixels declared in the header (checked before any pixel is decoded), a zero width or height,
    truncated or corrupt data, and a non-square image when ``require_square``. Raises ValueError for
    a programming error: ``allowed_formats`` naming something this module does not decode.
    """
    unknown = allowed_formats - DECODABLE_FORMATS
    if unknown or not allowed_formats:
        raise ValueError(f"allowed_formats must be a non-empty subset of {sorted(DECODABLE_FORMATS)}")
    supported = f"Supported formats are {_format_list(allowed_formats)}."

    fp = _seekable_source(source, param=param, max_bytes=max_bytes)
    start = fp.tell()
    head = fp.read(SNIFF_BYTES)
    fp.seek(start)

    if not head:
        raise InvalidImage(f"The file for '{param}' is empty. {supported}", param=param)
    fmt = sniff_format(head)
    if fmt is None:
        raise InvalidImage(
            f"Invalid file for '{param}': the data is not an image of a known format (files are "
            f"identified by their content, not their name). {supported}",
            param=param,
        )
    if fmt not in allowed_formats:
        raise InvalidImage(f"Invalid image file format for '{param}': got {fmt}. {supported}", param=param)

    declared = _jpeg_declared_size(fp) if fmt == "jpeg" else _declared_size(fmt, head)
    fp.seek(start)
    if declared is not None:
        _check_dimensions(declared, param=param, max_pixels=max_pixels)

    try:
        with Image.open(fp, formats=[_PIL_FORMAT[fmt]]) as opened:
            # Image.open parsed the header only: check what it declares before decoding pixels.
            _check_dimensions(opened.size, param=param, max_pixels=max_pixels)
            if require_square and opened.width != opened.height:  # EXIF rotation keeps squareness
                raise InvalidImage(
                    f"The image for '{param}' must be square; it is {opened.width}x{opened.height}.",
                    param=param,
                )
            opened.load()  # first frame; raises on truncated or corrupt data
            image = _upright(opened)
            image = _to_rgb_or_rgba(image)
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own, global limit fired inside Image.open (for a header this module does not
        # parse itself) before the check above could run: the same refusal.
        raise InvalidImage(
            f"The image for '{param}' is too large: it declares more pixels than this server "
            f"decodes (the limit is at most {max_pixels} pixels).",
            param=param,
        ) from exc
    except Exception as exc:
        # Pillow, zlib, struct, libjpeg and libwebp report bad data with a zoo of exception types
        # (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError, IndexError...): every
        # one of them here means the upload is unusable, which is the client's 400, not our 500.
        raise InvalidImage(
            f"The image for '{param}' could not be decoded: the {fmt} data is truncated or corrupt.",
            param=param,
        ) from exc

    image.info = {}  # nothing of the upload's metadata travels further (EXIF, ICC, text chunks)
    return image


def _seekable_source(
    source: bytes | bytearray | memoryview | IO[bytes], *, param: str, max_bytes: int | None
) -> IO[bytes]:
    """A seekable binary stream over the source, after refusing it if it holds over max_bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_byte_size(len(data), param=param, max_bytes=max_bytes)
        return io.BytesIO(data)
    seekable = getattr(source, "seekable", None)
    if seekable is None or seekable():
        # A spooled upload may live on disk: measure it instead of reading it.
        start = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(start)
        _check_byte_size(end - start, param=param, max_bytes=max_bytes)
        if start == 0:
            return source
        # Pillow reads from offset 0 whatever the position; the rest is known to be within limits.
        return io.BytesIO(source.read())
    # A pipe-like stream: read at most one byte past the limit, so an endless stream is cut off.
    data = _read_up_to(source, None if max_bytes is None else max_bytes + 1)
    _check_byte_size(len(data), param=param, max_bytes=max_bytes)
    return io.BytesIO(data)


def _read_up_to(source: IO[bytes], limit: int | None) -> bytes:
    """Read until EOF or `limit` bytes; raw streams may return fewer bytes than asked per read."""
    chunks: list[bytes] = []
    total = 0
    while limit is None or total < limit:
        chunk = source.read(1 << 20 if limit is None else min(1 << 20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _check_byte_size(size: int, *, param: str, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise InvalidImage(
            f"The image for '{param}' is too large: {_human_bytes(size)}; the limit is "
            f"{_human_bytes(max_bytes)}.",
            param=param,
        )


def _human_bytes(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MB ({n} bytes)"
    return f"{n} bytes"


def _check_dimensions(size: tuple[int, int], *, param: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(
            f"The image for '{param}' has no pixels: it declares {width}x{height}.", param=param
        )
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image for '{param}' is too large: {width}x{height} is {width * height} pixels; "
            f"the limit is {max_pixels} pixels.",
            param=param,
        )


def _declared_size(fmt: str, head: bytes) -> tuple[int, int] | None:
    """Width and height straight from the first bytes of the file, for formats that put them there.

    None where the header is elsewhere (JPEG's SOF may follow megabytes of EXIF; TIFF's IFD can be
    anywhere): for those, Image.open's own header parse is checked before pixels are decoded.
    """
    try:
        if fmt == "png" and head[12:16] == b"IHDR":
            w, h = struct.unpack_from(">II", head, 16)
            return int(w), int(h)
        if fmt == "gif":
            w, h = struct.unpack_from("<HH", head, 6)
            return int(w), int(h)
        if fmt == "bmp":
            if struct.unpack_from("<I", head, 14)[0] == 12:  # OS/2 core header: 16-bit sizes
                w, h = struct.unpack_from("<HH", head, 18)
            else:
                w, h = struct.unpack_from("<ii", head, 18)
            return abs(int(w)), abs(int(h))  # a negative height means top-down rows
        if fmt == "webp":
            return _webp_canvas_size(head)
    except struct.error:
        return None  # too short to say; Image.open will refuse it
    return None


# Start-of-frame markers (baseline, progressive, lossless, arithmetic...); not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, with no length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_declared_size(fp: IO[bytes], max_segments: int = 512) -> tuple[int, int] | None:
    """Width and height from a JPEG's start-of-frame header, found by hopping over segments.

    EXIF and ICC segments can push the frame header many kilobytes in, so this seeks from segment
    to segment (reading 4 bytes each) instead of reading the file. None if no frame header is found
    before the scan data; the image is then refused or checked when Pillow opens it.
    """
    fp.read(2)  # SOI
    for _ in range(max_segments):
        marker = fp.read(2)
        while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes before a marker
            marker = marker[1:] + fp.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] in _JPEG_STANDALONE:
            continue
        if marker[1] == 0xDA:  # start of scan: pixel data follows, no frame header seen
            return None
        length_bytes = fp.read(2)
        if len(length_bytes) < 2:
            return None
        length = struct.unpack(">H", length_bytes)[0]
        if marker[1] in _JPEG_SOF:
            frame = fp.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack_from(">HH", frame, 1)
            return int(width), int(height)
        if length < 2:
            return None
        fp.seek(length - 2, io.SEEK_CUR)
    return None


def _webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack_from("<HH", head, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = struct.unpack_from("<I", head, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(head) >= 30:
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    return None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if there is one other than "normal"."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """A new, independent "RGBA" image if the source has any transparency data, else "RGB"."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8 bits by scaling, where Pillow's convert would clip to white."""
    import numpy as np

    arr = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(arr, 0.0, 255.0)
    else:  # I;16 variants and I (Pillow opens 16-bit greyscale PNG as I or I;16): 0..65535
        scaled = np.clip(arr.astype(np.float64) / 257.0, 0.0, 255.0)
    out = Image.fromarray(np.rint(scaled).astype(np.uint8))
    if "transparency" in image.info and isinstance(image.info["transparency"], int):
        # A tRNS grey value at 16 bits: find it at the same scaled position.
        out.info["transparency"] = min(255, round(image.info["transparency"] / 257))
    return out


# --------------------------------------------------------------------------------------------------
# Masks and composition


def _alpha_of(image: Image.Image) -> Image.Image | None:
    """The alpha channel ("L") of an image, or None if it carries no transparency information."""
    if not image.has_transparency_data:
        return None
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.getchannel("A")
    return image.convert("RGBA").getchannel("A")


def mask_from_alpha(mask: Image.Image, size: tuple[int, int], *, param: str = "mask") -> Image.Image:
    """Turn an uploaded mask into the engine's mask ("L": 255 = redraw, 0 = keep).

    OpenAI's semantics: fully transparent pixels (alpha == 0) of the mask mark the area to edit;
    every other pixel, even an almost transparent one, is kept. ``size`` is the size of the image the
    mask applies to (the first image of an edit). Raises InvalidImage naming ``param`` when the sizes
    differ, and when the mask has no alpha channel or transparency, since such a mask marks nothing.
    """
    if mask.size != tuple(size):
        raise InvalidImage(
            f"The mask must have the same dimensions as the image: the mask is "
            f"{mask.width}x{mask.height}, the image is {size[0]}x{size[1]}.",
            param=param,
        )
    alpha = _alpha_of(mask)
    if alpha is None:
        raise InvalidImage(
            "The mask has no alpha channel, so it marks nothing to edit. Send a PNG with "
            "transparency: fully transparent pixels (alpha = 0) mark the area to edit.",
            param=param,
        )
    return alpha.point(_TRANSPARENT_TO_EDIT)


def alpha_edit_region(image: Image.Image) -> Image.Image | None:
    """For an edit without a mask (dall-e-2), the image's own transparent pixels are the mask.

    Returns "L" with 255 where alpha == 0 and 0 elsewhere, or None when the image has no fully
    transparent pixel (no alpha at all, or every pixel at least slightly opaque).
    """
    alpha = _alpha_of(image)
    if alpha is None:
        return None
    region = alpha.point(_TRANSPARENT_TO_EDIT)
    return region if region.getbbox() is not None else None


def compose(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste ``generated`` over ``original`` where ``mask`` is 255; keep ``original`` where it is 0.

    Pixels where the mask is 0 are bit-identical to the original's (after the mode change, which is
    lossless from RGB to RGBA); intermediate mask values, if an engine softens the edge, blend. The
    result is "RGBA" if either image has transparency, else "RGB". All three must have one size:
    resizing is the caller's decision, so a mismatch is a programming error (ValueError).
    """
    if not (original.size == generated.size == mask.size):
        raise ValueError(
            f"compose needs one size: original {original.size}, generated {generated.size}, mask {mask.size}"
        )
    mode = "RGBA" if (original.has_transparency_data or generated.has_transparency_data) else "RGB"
    base = original if original.mode == mode else original.convert(mode)
    top = generated if generated.mode == mode else generated.convert(mode)
    return Image.composite(top, base, mask if mask.mode == "L" else mask.convert("L"))


def keep_outside_mask(original: Image.Image, mask: Image.Image, image: Image.Image) -> Image.Image:
    """The masked-edit guarantee (limner.server.serving.run applies it to every masked edit's images
    and previews, whatever the engine did): `image` with `original`'s pixels wherever `mask` is 0.
    At the same size those pixels are the original's exactly; an original and mask of another size
    (a preview, an output size other than the input's) are resampled to the image's first."""
    if original.size != image.size:
        original = original.resize(image.size, Image.Resampling.LANCZOS)
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    return compose(original, image, mask)


# --------------------------------------------------------------------------------------------------
# Encoding outputs


def png_zlib_level(compression: int | None) -> int:
    """The zlib level used for a PNG at ``compression`` (0..100; None means 100).

    PNG stays lossless, so compression only trades time for size: 100 (the default, "least
    compression") -> level 1, the fast default; lower values ask for smaller files, linearly up to
    level 9 at 0: ``level = 1 + round((100 - compression) * 8 / 100)``.
    """
    c = 100 if compression is None else compression
    return PNG_DEFAULT_ZLIB_LEVEL + round((100 - c) * (9 - PNG_DEFAULT_ZLIB_LEVEL) / 100)


def encode_image(image: Image.Image, *, output_format: OutputFormat, compression: int | None = None) -> bytes:
    """Encode an output image as png, jpeg or webp, with no metadata.

    ``compression`` is OpenAI's ``output_compression``: 0..100, None meaning 100. For jpeg and webp it
    is the encoder quality (100 = best quality, lower = smaller files). For png, which stays lossless,
    it picks the zlib level (see :func:`png_zlib_level`). JPEG cannot hold alpha, so an image with
    transparency is flattened onto white; png and webp keep alpha. EXIF, ICC profiles and text chunks
    are never written. Raises ValueError for an unknown format or a compression outside 0..100
    (request validation reports those to clients before this runs).
    """
    if output_format not in get_args(OutputFormat):
        raise ValueError(f"output_format must be one of {get_args(OutputFormat)}, not {output_format!r}")
    if compression is not None and not 0 <= compression <= 100:
        raise ValueError(f"compression must be within 0..100, not {compression}")
    quality = 100 if compression is None else compression

    image = _output_pixels(image, flatten=output_format == "jpeg")
    buf = io.BytesIO()
    if output_format == "png":
        image.save(buf, "PNG", compress_level=png_zlib_level(compression))
    elif output_format == "jpeg":
        image.save(
            buf,
            "JPEG",
            quality=max(1, quality),
            subsampling=0 if quality >= JPEG_FULL_CHROMA_FROM else 2,
            optimize=False,
        )
    else:
        image.save(buf, "WEBP", quality=quality, method=WEBP_METHOD)
    return buf.getvalue()


def encode_preview(image: Image.Image, *, output_format: OutputFormat) -> bytes:
    """Encode a partial (preview) image cheaply: the same format and size, at speed-first settings.

    Previews are thrown away a moment later, so jpeg and webp use quality 70 (webp at libwebp's
    fastest method) and png the fastest zlib level. Metadata and alpha as :func:`encode_image`.
    """
    if output_format == "png":
        return encode_image(image, output_format="png")
    if output_format == "jpeg":
        return encode_image(image, output_format="jpeg", compression=70)
    buf = io.BytesIO()
    _output_pixels(image, flatten=False).save(buf, "WEBP", quality=70, method=0)
    return buf.getvalue()


def _output_pixels(image: Image.Image, *, flatten: bool) -> Image.Image:
    """An "RGB"/"RGBA" image with empty metadata, never the caller's object when a change is needed."""
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    if flatten and image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        image = white
    if image.info:
        # Pillow's PNG and JPEG writers copy an ICC profile from image.info; keep the caller's image
        # untouched and write from a copy with no metadata.
        image = image.copy()
        image.info = {}
    return image
