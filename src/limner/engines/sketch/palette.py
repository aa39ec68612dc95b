"""Palettes for the sketch engine: from the prompt's colour words, from input images, or from the digest.

With colour words, every colour of the picture is a shade of a named colour (hue jittered a little), so
"red red red" gives a red picture; a guidance scale below the default lets colours derived from the
digest in as accents. Without colour words the palette comes from the input images (edits) or from a
colour scheme chosen by the digest, steered away from the hues of colours the negative prompt names.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from limner.engines.sketch.words import RGB

#: The guidance scale used when a job gives none (diffusers' common default).
DEFAULT_GUIDANCE = 7.5

#: Colours shapes have when the prompt names no colour: a sun is yellow unless told otherwise.
NATURAL_COLOURS: dict[str, RGB] = {
    "sun": (0.98, 0.80, 0.16),
    "moon": (0.96, 0.93, 0.76),
    "tree": (0.20, 0.56, 0.24),
    "trunk": (0.42, 0.27, 0.14),
    "cloud": (0.96, 0.96, 0.98),
    "wave": (0.14, 0.42, 0.78),
    "heart": (0.88, 0.12, 0.25),
    "flower": (0.94, 0.42, 0.62),
    "mountain": (0.42, 0.46, 0.56),
    "star": (0.99, 0.86, 0.30),
    "lighthouse": (0.82, 0.12, 0.12),  # its bands; the tower between them is white
    "cat": (0.88, 0.52, 0.20),  # ginger: seen on a light ground and a night one alike
}

#: The sky of a night scene, and how far a night pulls the palette's sky and ground towards it.
NIGHT_SKY: RGB = (0.04, 0.06, 0.18)
NIGHT_PULL = 0.82


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def shade(c: RGB, t: float) -> RGB:
    """Lighter (t > 0, towards white) or darker (t < 0, towards black) by |t|."""
    return mix(c, (1.0, 1.0, 1.0), t) if t >= 0 else mix(c, (0.0, 0.0, 0.0), -t)


def rotate_hue(c: RGB, degrees: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*c)
    return colorsys.hsv_to_rgb((h + degrees / 360.0) % 1.0, s, v)


def luminance(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _hue(c: RGB) -> float | None:
    """Hue in degrees, or None for a grey (whose hue means nothing)."""
    h, s, v = colorsys.rgb_to_hsv(*c)
    return h * 360.0 if s > 0.2 and v > 0.15 else None


@dataclass(frozen=True)
class Palette:
    sky: RGB  # the background gradient's two ends
    sky2: RGB
    ground: RGB
    inks: tuple[RGB, ...]  # shape colours, drawn from at random
    light: RGB  # highlights and small marks
    dark: RGB  # outlines, doors, trunks
    #: True when the colours came from the prompt or the inputs: shapes then use no natural colours.
    named: bool


def at_night(pal: Palette) -> Palette:
    """The same palette after dark: sky and ground pulled towards a deep blue, the shapes' colours kept
    (a lit window, a lighthouse's bands and the moon stay readable against the dark)."""
    return Palette(
        sky=mix(pal.sky, NIGHT_SKY, NIGHT_PULL),
        sky2=mix(pal.sky2, shade(NIGHT_SKY, -0.5), NIGHT_PULL),
        ground=mix(pal.ground, shade(NIGHT_SKY, -0.6), NIGHT_PULL),
        inks=pal.inks,
        light=pal.light,
        dark=pal.dark,
        named=pal.named,
    )


def guidance_strength(guidance: float | None) -> float:
    """0..1: how strongly the prompt's colours dominate; about 0.75 at the default guidance."""
    g = DEFAULT_GUIDANCE if guidance is None else max(0.0, float(guidance))
    return g / (g + 2.5)


def _scheme(rng: np.random.Generator, avoid: tuple[RGB, ...]) -> list[RGB]:
    """Four colours of a colour scheme picked by the digest, away from the hues in `avoid`."""
    avoid_hues = [h for c in avoid if (h := _hue(c)) is not None]
    base = float(rng.uniform(0, 360))
    for _ in range(12):  # a few turns of the wheel find a base hue clear of the avoided ones
        if all(min(abs(base - a) % 360, 360 - abs(base - a) % 360) > 40 for a in avoid_hues):
            break
        base = (base + 47.0) % 360
    offsets = [(0, 30, -30, 60), (0, 180, 30, 210), (0, 120, 240, 60), (0, 150, 210, 20)][
        int(rng.integers(0, 4))
    ]
    out: list[RGB] = []
    for off in offsets:
        hue = (base + off) % 360
        if any(min(abs(hue - a) % 360, 360 - abs(hue - a) % 360) < 35 for a in avoid_hues):
            hue = (hue + 90) % 360
        s = float(rng.uniform(0.45, 0.85))
        v = float(rng.uniform(0.45, 0.95))
        out.append(colorsys.hsv_to_rgb(hue / 360.0, s, v))
    return out


def build_palette(
    colours: tuple[tuple[RGB, int], ...],
    avoid: tuple[RGB, ...],
    guidance: float | None,
    rng: np.random.Generator,
    *,
    from_inputs: bool = False,
) -> Palette:
    """A palette from weighted colours (named by the prompt, or taken from inputs), else from the digest."""
    strength = guidance_strength(guidance)
    derived = _scheme(rng, avoid)
    if not colours:
        c0, c1, c2, c3 = derived
        sky = shade(c0, float(rng.uniform(0.25, 0.55)))
        return Palette(
            sky=sky,
            sky2=shade(rotate_hue(c0, float(rng.uniform(-25, 25))), float(rng.uniform(-0.3, 0.2))),
            ground=shade(c3, -0.3),
            inks=(c1, c2, c3, shade(c1, -0.25), shade(c2, 0.25)),
            light=shade(c0, 0.8),
            dark=shade(c2, -0.7),
            named=False,
        )

    jitter = 3.0 + 18.0 * (1.0 - strength)  # degrees of hue drift; small when guidance is strong

    def variant(c: RGB, lo: float, hi: float) -> RGB:
        return shade(rotate_hue(c, float(rng.uniform(-jitter, jitter))), float(rng.uniform(lo, hi)))

    ranked = sorted(colours, key=lambda cw: -cw[1])  # stable: ties keep the order of mention
    primary = ranked[0][0]
    secondary = ranked[1][0] if len(ranked) > 1 else primary
    # The background takes the darker or lighter side of the primary colour, and shapes the other side,
    # so that even a one-colour prompt gives shapes that stand out from their background.
    dark_bg = luminance(primary) > 0.25 and not (from_inputs and luminance(primary) > 0.6)
    bg_lo, bg_hi = (
        ((-0.45, -0.15) if dark_bg else (0.0, 0.25)) if luminance(primary) < 0.85 else (-0.2, -0.05)
    )
    ink_lo, ink_hi = (0.05, 0.45) if dark_bg else (-0.35, 0.1)
    if luminance(primary) < 0.12:  # black: shapes in greys well above the background
        ink_lo, ink_hi = (0.15, 0.4)

    inks: list[RGB] = []
    for c, weight in ranked:
        inks.extend(variant(c, ink_lo, ink_hi) for _ in range(min(6, 1 + weight)))
    # Below the default guidance the digest's scheme joins as accents; at 7.5 and above none do.
    accents = int(len(inks) * max(0.0, 0.7 - strength) * 1.5)
    inks.extend(derived[1 + i % 3] for i in range(accents))
    return Palette(
        sky=variant(primary, bg_lo, bg_hi),
        sky2=variant(secondary, bg_lo, bg_hi),
        ground=variant(secondary, bg_lo - 0.15, bg_hi - 0.1),
        inks=tuple(inks),
        light=variant(primary, 0.45, 0.65) if luminance(primary) < 0.85 else variant(primary, -0.3, -0.15),
        dark=variant(primary, -0.75, -0.55) if luminance(primary) > 0.12 else variant(primary, 0.2, 0.3),
        named=True,
    )


def image_colours(images: list[Image.Image], k: int = 5) -> tuple[tuple[RGB, int], ...]:
    """The k dominant colours of some images with their pixel counts (median cut on thumbnails)."""
    thumbs = [im.convert("RGB").resize((48, 48), Image.Resampling.BOX) for im in images]
    sheet = Image.new("RGB", (48 * len(thumbs), 48))
    for i, t in enumerate(thumbs):
        sheet.paste(t, (48 * i, 0))
    q = sheet.quantize(colors=k, method=Image.Quantize.MEDIANCUT)
    pal = q.getpalette() or []
    out = []
    for n, index in sorted(q.getcolors() or [], key=lambda ci: -ci[0]):
        i = 3 * int(index)  # type: ignore[call-overload]  # a "P" image's colours are palette indices
        out.append(((pal[i] / 255.0, pal[i + 1] / 255.0, pal[i + 2] / 255.0), int(n)))
    return tuple(out)
