"""Test images made in code: nothing binary is committed."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def gradient(width: int = 256, height: int = 256, *, rgba: bool = False) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1)
    image = Image.fromarray(rgb, "RGB")
    return image.convert("RGBA") if rgba else image


def half_mask(width: int = 256, height: int = 256) -> Image.Image:
    """OpenAI mask: the right half fully transparent (edit there), the left half opaque (keep)."""
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[:, width // 2 :] = 0
    mask = np.zeros((height, width, 4), dtype=np.uint8)
    mask[..., 3] = alpha
    return Image.fromarray(mask, "RGBA")


def decode_b64(b64: str) -> Image.Image:
    import base64

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image
