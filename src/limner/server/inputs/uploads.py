"""Turning uploaded or referenced images into checked PIL images for an edit or variation job."""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from PIL import Image

from limner import imaging, rules
from limner.errors import InvalidImage, InvalidRequest

MASK_MAX_BYTES = 4 * 1024 * 1024


async def decode(
    source: bytes | BinaryIO,
    *,
    param: str,
    profile: rules.ModelProfile,
    max_pixels: int,
    formats: frozenset[str] | None = None,
    max_bytes: int | None = None,
    square: bool | None = None,
) -> Image.Image:
    """Decode one input off the event loop, with the profile's edit rules unless overridden."""
    return await asyncio.to_thread(
        imaging.decode_image,
        source,
        param=param,
        allowed_formats=formats or profile.edit_formats,
        max_pixels=max_pixels,
        require_square=profile.edit_square if square is None else square,
        max_bytes=profile.edit_max_bytes if max_bytes is None else max_bytes,
    )


def check_count(profile: rules.ModelProfile, count: int) -> None:
    if count == 0:
        raise InvalidRequest(
            "Missing required parameter: 'image'.", param="image", code="missing_required_parameter"
        )
    if count > profile.edit_max_images:
        raise InvalidImage(
            f"Too many images: {count}. Model '{profile.name}' takes at most {profile.edit_max_images} "
            f"image{'s' if profile.edit_max_images > 1 else ''}.",
            param="image",
        )


async def edit_mask(
    profile: rules.ModelProfile,
    images: list[Image.Image],
    mask_source: bytes | BinaryIO | None,
    *,
    max_pixels: int,
) -> Image.Image | None:
    """The edit region as "L" (255 = redraw), from the mask (alpha 0 = edit, OpenAI's convention), else
    for dall-e-2 from the first image's own transparency. None: redraw the whole picture."""
    first = images[0]
    if mask_source is not None:
        mask = await decode(
            mask_source,
            param="mask",
            profile=profile,
            max_pixels=max_pixels,
            formats=imaging.PNG_ONLY,
            max_bytes=MASK_MAX_BYTES,
            square=False,
        )
        return imaging.mask_from_alpha(mask, first.size, param="mask")
    region = imaging.alpha_edit_region(first)
    if profile.family == "dall-e-2":
        if region is None:
            raise InvalidImage(
                "The image has no transparent area and no mask was given: for dall-e-2, either send a "
                "mask (transparent where the image should be edited) or an image whose transparent "
                "pixels mark the area to edit.",
                param="mask",
            )
        return region
    return None
