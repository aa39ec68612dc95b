"""Edits and variations for the sketch engine: pictures drawn from input images.

* A masked edit draws the prompt's scene into the mask's bounding box, over a blur of the input
  mixed with the scene's own background (more of the input at input_fidelity "high"), with the other
  inputs collaged in, and composes it through the mask: pixels where the mask is 0 are the input's,
  bit for bit.
* An edit without a mask keeps the input's low frequencies (its composition and palette) and some of
  its fine detail, mixes in the scene's background, and draws the prompt's shapes on top.
* A variation warps the input smoothly, turns its hues a little, re-weights its fine detail, adds
  faint shapes in its own palette and restores its mean colour.

With transparent=True, sketch never claims alpha it did not draw. It cannot tell a subject from its
background, so a transparent edit without a mask draws the prompt's shapes, in the inputs' palette,
on a cleared background (a cut-out, as a sticker prompt expects); a masked edit clears the background
of the redrawn area only, and pixels outside the mask keep their own alpha.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from limner.engines.sketch.draw import F32, blur, planar, sd_box, shrink, smooth_noise, to_u8, upscale
from limner.engines.sketch.palette import Palette, build_palette, image_colours
from limner.engines.sketch.scene import Check, background, make_rng, plan_scene, render
from limner.engines.sketch.words import PromptPlan, read_prompt

#: Renders one image at a given (width, height).
Drawer = Callable[[int, int, Check], Image.Image]

#: For edits without a mask, per input_fidelity: how much of the input's low frequencies and of its fine
#: detail is kept under the shapes, how opaque the shapes are drawn, and how far the result's own low
#: frequencies are then pulled back to the input's (which keeps the input's composition whatever the
#: shapes covered, while the shapes' edges stay).
FIDELITY = {"high": (0.8, 0.6, 0.8, 0.75), "low": (0.55, 0.15, 1.0, 0.5)}
#: For masked edits: how much of the blurred input shows under the redrawn area.
MASKED_FIDELITY = {"high": 0.55, "low": 0.25}
#: Variations: how many faint shapes per detail level, and which.
VARY_SHAPES = {"low": 2, "medium": 4, "high": 6}
VARY_KINDS = ("circle", "square", "triangle", "ring", "blob", "diamond", "hexagon", "star")


def as_array(img: Image.Image) -> F32:
    """An image as planar straight RGBA float32 in 0..1, (4, h, w) (opaque when it has no alpha)."""
    return planar(img.convert("RGBA"))


def fit(img: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    return img if img.size == (width, height) else img.resize((width, height), resample)


def hue_matrix(degrees: float, saturation: float) -> F32:
    """The 3 x 3 matrix that turns RGB hues by `degrees` about the grey axis and scales saturation:
    a linear map, so it commutes with blurring and costs nine multiply-adds a pixel."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = 1.0 / 3.0
    q = math.sqrt(k)
    # Rodrigues' rotation about the unit grey vector (q, q, q).
    rot = np.array(
        [
            [c + k * (1 - c), k * (1 - c) - q * s, k * (1 - c) + q * s],
            [k * (1 - c) + q * s, c + k * (1 - c), k * (1 - c) - q * s],
            [k * (1 - c) - q * s, k * (1 - c) + q * s, c + k * (1 - c)],
        ]
    )
    grey = np.full((3, 3), k)
    return (grey + (rot - grey) * saturation).astype(np.float32)


def apply_matrix(m: F32, rgb: F32) -> F32:
    out = np.empty_like(rgb)
    for i in range(3):
        np.multiply(rgb[0], m[i, 0], out=out[i])
        out[i] += rgb[1] * m[i, 1]
        out[i] += rgb[2] * m[i, 2]
    return out


def inputs_digest(images: list[Image.Image], salt: bytes = b"") -> bytes:
    """A digest of the inputs' thumbnails, so that different inputs give different layouts."""
    h = hashlib.sha256(salt)
    for im in images:
        h.update(im.convert("RGBA").resize((16, 16), Image.Resampling.BOX).tobytes())
    return h.digest()


def _collage(
    rgb: F32, alpha: F32 | None, extras: list[Image.Image], rng: np.random.Generator, opacity: float
) -> None:
    """Blends each extra input into premultiplied planar `rgb` (3, h, w) and `alpha` (None: opaque) in
    place, as a feathered rectangle of random size and place."""
    h, w = rgb.shape[1:]
    unit = min(w, h)
    for im in extras:
        side = float(rng.uniform(0.35, 0.55)) * unit
        aspect = im.width / max(1, im.height)
        rw = max(1, min(w, round(side * math.sqrt(aspect))))
        rh = max(1, min(h, round(side / math.sqrt(aspect))))
        x0 = int(rng.uniform(0, 1) * (w - rw + 1))
        y0 = int(rng.uniform(0, 1) * (h - rh + 1))
        pic = as_array(im.resize((rw, rh), Image.Resampling.BILINEAR))
        xs = np.arange(rw, dtype=np.float32)[None, :] + np.float32(0.5 - rw / 2)
        ys = np.arange(rh, dtype=np.float32)[:, None] + np.float32(0.5 - rh / 2)
        feather = max(1.0, 0.12 * min(rw, rh))
        inside = np.clip(-sd_box(xs, ys, rw / 2, rh / 2, feather) / np.float32(feather), 0.0, 1.0)
        f = inside * pic[3] * np.float32(opacity)
        region = rgb[:, y0 : y0 + rh, x0 : x0 + rw]
        region *= 1.0 - f
        region += pic[:3] * f
        if alpha is not None:
            a = alpha[y0 : y0 + rh, x0 : x0 + rw]
            a *= 1.0 - f
            a += f


def _input_palette(
    plan: PromptPlan, images: list[Image.Image], guidance: float | None, rng: np.random.Generator
) -> Palette | None:
    if plan.colours:
        return None  # the prompt's own colours win
    return build_palette(image_colours(images), plan.avoid_colours, guidance, rng, from_inputs=True)


def edit_drawer(
    *,
    prompt: str,
    negative_prompt: str | None,
    images: list[Image.Image],
    mask: Image.Image | None,
    width: int,
    height: int,
    seed: int,
    detail: str,
    transparent: bool,
    fidelity: str,
    steps: int | None,
    guidance: float | None,
) -> Drawer:
    """A drawer for one edited image. `images` and `mask` are already at (width, height)."""
    plan = read_prompt(prompt, negative_prompt)
    digest = inputs_digest(images, plan.digest)
    rng = make_rng(seed, digest)
    palette = _input_palette(plan, images, guidance, rng)
    base = images[0]
    extras = images[1:]

    if mask is None:
        keep_low, keep_detail, shape_opacity, pull = FIDELITY[fidelity]
        scene = plan_scene(
            plan,
            seed,
            aspect=width / height,
            detail=detail,
            steps=steps,
            guidance=guidance,
            palette=palette,
            digest=digest,
        )

        def draw_whole(w: int, h: int, check: Check) -> Image.Image:
            src = fit(base, w, h, Image.Resampling.BILINEAR)
            full = as_array(src)
            small_in = shrink(full[:3])
            low = upscale(small_in, w, h)
            rgb = low * np.float32(keep_low) + background(scene, w, h) * np.float32(1 - keep_low)
            rgb += (full[:3] - low) * np.float32(keep_detail)
            np.clip(rgb, 0.0, 1.0, out=rgb)
            # Transparent: the background is cleared and only the prompt's shapes are drawn (see above).
            alpha = np.zeros_like(full[3]) if transparent else None
            if alpha is not None:
                rgb *= alpha
            check()
            _collage(rgb, alpha, extras, make_rng(seed, digest[::-1]), 0.5 if fidelity == "low" else 0.35)
            canvas = render(
                scene,
                w,
                h,
                transparent=transparent,
                check=check,
                underlay=(rgb, alpha),
                shape_opacity=1.0 if transparent else shape_opacity,  # a cut-out's shapes are solid
            )
            if transparent:  # a cut-out: nothing of the input's background is pulled back in
                return canvas.to_image(transparent)
            # Pull the result's low frequencies towards the input's. Blurring is linear, so the
            # difference is taken on the small grids and upscaled once.
            small = (small_in - shrink(canvas.rgb)) * np.float32(pull)
            canvas.rgb += upscale(small, w, h)
            return canvas.to_image(transparent)

        return draw_whole

    mask_img = mask
    m_full = np.asarray(mask_img, np.uint8)
    rows = np.flatnonzero(m_full.any(axis=1))
    cols = np.flatnonzero(m_full.any(axis=0))
    if rows.size == 0:  # nothing to redraw
        return lambda w, h, check: fit(base, w, h, Image.Resampling.BILINEAR).convert(
            "RGBA" if transparent else "RGB"
        )
    # The mask's box in fractions, so that previews place the drawing where the final puts it.
    box = (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)
    box_aspect = (cols[-1] + 1 - cols[0]) / (rows[-1] + 1 - rows[0])
    scene = plan_scene(
        plan,
        seed,
        aspect=box_aspect,
        detail=detail,
        steps=steps,
        guidance=guidance,
        palette=palette,
        digest=digest,
    )
    under_weight = MASKED_FIDELITY[fidelity]

    def draw_masked(w: int, h: int, check: Check) -> Image.Image:
        src = fit(base, w, h, Image.Resampling.BILINEAR)
        m = fit(mask_img, w, h, Image.Resampling.NEAREST)
        x0, y0 = min(w - 1, math.floor(box[0] * w)), min(h - 1, math.floor(box[1] * h))
        x1, y1 = max(x0 + 1, math.ceil(box[2] * w)), max(y0 + 1, math.ceil(box[3] * h))
        rw, rh = x1 - x0, y1 - y0
        alpha: F32 | None
        if transparent:  # the redrawn area's background is cleared; collaged inputs stay opaque
            rgb = np.zeros((3, rh, rw), np.float32)
            alpha = np.zeros((rh, rw), np.float32)
        else:
            low = upscale(shrink(as_array(src)[:3]), w, h, (x0, y0, x1, y1))
            rgb = low * np.float32(under_weight) + background(scene, rw, rh) * np.float32(1 - under_weight)
            alpha = None
        _collage(rgb, alpha, extras, make_rng(seed, digest[::-1]), 1.0 if transparent else 0.6)
        check()
        canvas = render(scene, rw, rh, transparent=transparent, check=check, underlay=(rgb, alpha))
        drawn = np.asarray(canvas.to_image(transparent).convert("RGBA" if transparent else "RGB"))
        return compose(src, drawn, (x0, y0), m, transparent)

    return draw_masked


def compose(
    src: Image.Image, drawn: np.ndarray, at: tuple[int, int], mask: Image.Image, transparent: bool
) -> Image.Image:
    """`drawn` (the redrawn box) placed at `at` on `src` through `mask`; where the mask is 0 the
    result is `src`'s pixels exactly."""
    mode = "RGBA" if transparent else "RGB"
    out = np.array(src.convert(mode))
    m = np.asarray(mask, np.uint8)
    x0, y0 = at
    rh, rw = drawn.shape[:2]
    region = out[y0 : y0 + rh, x0 : x0 + rw]
    mr = m[y0 : y0 + rh, x0 : x0 + rw]
    weight = (mr.astype(np.float32) / np.float32(255.0))[..., None]
    blended = to_u8((region.astype(np.float32) * (1.0 - weight) + drawn.astype(np.float32) * weight) / 255.0)
    region[...] = np.where(mr[..., None] == 0, region, blended)
    return Image.fromarray(out, mode)


def vary_drawer(
    *,
    image: Image.Image,
    width: int,
    height: int,
    seed: int,
    detail: str,
    transparent: bool,
    steps: int | None,
    guidance: float | None,
) -> Drawer:
    """A drawer for one variation of `image` (already at (width, height))."""
    digest = inputs_digest([image], b"vary")
    rng = make_rng(seed, digest)
    palette = build_palette(image_colours([image]), (), guidance, rng, from_inputs=True)
    # A few faint shapes in the input's own colours: more at higher detail, never a landscape.
    kinds = [VARY_KINDS[int(i)] for i in rng.integers(0, len(VARY_KINDS), size=VARY_SHAPES[detail])]
    plan = PromptPlan(
        colours=(),
        shapes=tuple((k, 1) for k in kinds),
        avoid_colours=(),
        avoid_shapes=frozenset(),
        digest=digest,
    )
    scene = plan_scene(
        plan,
        seed,
        aspect=width / height,
        detail=detail,
        steps=steps,
        guidance=guidance,
        palette=palette,
        digest=digest,
        shape_scale=0.6,
        extra_copies=False,
    )
    # The warp: a 6 x 6 mesh whose inner vertices move by up to 7 % of a cell.
    cells = 6
    jitter = rng.uniform(-0.07, 0.07, size=(cells + 1, cells + 1, 2)) / cells
    jitter[0, :, 1] = jitter[-1, :, 1] = 0.0  # edge vertices slide along their edge only
    jitter[:, 0, 0] = jitter[:, -1, 0] = 0.0
    hue_turn = float(rng.uniform(5.0, 14.0)) * (1 if rng.random() < 0.5 else -1)
    saturation = float(rng.uniform(0.9, 1.12))
    detail_gain = float(rng.uniform(0.5, 0.9))
    grain = smooth_noise(rng, 48, 48)
    grain_amp = {"low": 0.0, "medium": 0.03, "high": 0.05}[detail]
    thumb = as_array(image.convert("RGBA").resize((64, 64), Image.Resampling.BOX))
    # The mean colour to restore, premultiplied like the canvas it is compared with.
    mean_in = (thumb[:3] * thumb[3] if transparent else thumb[:3]).mean(axis=(1, 2))
    turn = hue_matrix(hue_turn, saturation)

    def draw(w: int, h: int, check: Check) -> Image.Image:
        src = fit(image, w, h, Image.Resampling.BILINEAR).convert("RGBA")
        mesh = []
        for j in range(cells):
            for i in range(cells):
                box = (w * i // cells, h * j // cells, w * (i + 1) // cells, h * (j + 1) // cells)
                quad: list[float] = []
                for vj, vi in ((j, i), (j + 1, i), (j + 1, i + 1), (j, i + 1)):
                    quad += [(vi / cells + jitter[vj, vi, 0]) * w, (vj / cells + jitter[vj, vi, 1]) * h]
                mesh.append((box, tuple(quad)))
        warped = as_array(src.transform((w, h), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR))
        check()
        full = apply_matrix(turn, warped[:3])
        low = blur(full)
        full -= low  # now the detail layer, re-weighted and put back
        full *= np.float32(detail_gain)
        full += low
        if grain_amp:
            full *= 1.0 + upscale(grain, w, h) * np.float32(grain_amp)
        np.clip(full, 0.0, 1.0, out=full)
        alpha = warped[3].copy() if transparent else None
        if alpha is not None:
            full *= alpha
        canvas = render(
            scene, w, h, transparent=transparent, check=check, underlay=(full, alpha), shape_opacity=0.4
        )
        # Restore the input's mean colour, which the hue turn and the shapes moved.
        for c in range(3):
            canvas.rgb[c] += np.float32(mean_in[c] - canvas.rgb[c].mean())
        return canvas.to_image(transparent)

    return draw
