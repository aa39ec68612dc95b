"""Scenes for the sketch engine: planned once from (prompt, seed, detail), rendered at any resolution.

`plan_scene` makes every random choice (palette, layout, shapes, texture grids) in layout units
(fractions of the width and height, sizes as fractions of the shorter side), so `render` can draw the
same picture at any size: partial images are the same scene rendered small. A prompt that names a
landscape shape (mountain, wave, tree, house, flower, lighthouse, cat) gets a horizon; others get an
abstract layout. A night word darkens the palette and adds a moon and stars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from limner.engines.sketch.draw import (
    F32,
    Canvas,
    Field,
    rotate,
    sd_box,
    sd_circle,
    sd_heart,
    sd_polygon,
    sd_segment,
    sd_star,
    smooth_noise,
    upscale,
)
from limner.engines.sketch.palette import (
    NATURAL_COLOURS,
    Palette,
    at_night,
    build_palette,
    mix,
    rotate_hue,
    shade,
)
from limner.engines.sketch.words import RGB, PromptPlan

Check = Callable[[], None]

LANDSCAPE_KINDS = frozenset({"mountain", "wave", "tree", "house", "flower", "lighthouse", "cat"})
SKY_KINDS = frozenset({"sun", "moon", "cloud", "star", "twinkle"})
GROUND_KINDS = frozenset({"tree", "house", "flower", "lighthouse", "cat"})
ABSTRACT_KINDS = ("circle", "square", "triangle", "ring", "blob", "stripe", "diamond", "hexagon")
#: At most this many of one shape, however often the prompt names it.
MAX_COPIES = {"sun": 1, "moon": 1, "mountain": 1, "wave": 1, "stripe": 3, "lighthouse": 1}
#: What a night dims (lit things, the moon and the stars keep their colours).
NIGHT_DIMMED = frozenset({"mountain", "wave", "tree", "flower", "house", "cloud"})
#: The colour of a night's stars.
STARLIGHT: RGB = (1.0, 0.97, 0.84)
#: The steps a job without num_inference_steps is taken to have.
DEFAULT_STEPS = 20


@dataclass(frozen=True)
class Level:
    """What a detail level adds: copies of each named shape, abstract shapes when none is named,
    texture octaves, small marks per inference step, shading and outlines."""

    extra_copies: int
    abstract: tuple[int, int]
    octaves: int
    marks_per_step: float
    shading: bool
    outline: bool


LEVELS: dict[str, Level] = {
    "low": Level(0, (2, 3), 0, 0.0, False, False),
    "medium": Level(1, (4, 6), 2, 0.6, True, False),
    "high": Level(3, (8, 11), 4, 1.6, True, True),
}
_OCTAVE_CELLS = (5, 14, 40, 110)
_OCTAVE_AMPS = (0.07, 0.05, 0.045, 0.04)


@dataclass(frozen=True)
class Item:
    kind: str
    x: float  # fraction of the width (centre, or the base for ground objects)
    y: float  # fraction of the height
    size: float  # fraction of the shorter side
    colour: RGB
    colour2: RGB
    angle: float = 0.0
    opacity: float = 1.0
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Scene:
    palette: Palette
    horizon: float | None  # fraction of the height; None for an abstract layout
    gradient_angle: float
    items: tuple[Item, ...]
    drift: F32  # (1, gy, gx) in -1..1: moves the sky's gradient about, so the sky is not a plain ramp
    texture: F32 | None  # (1, gy, gx): brightness texture over everything, or None
    level: Level


def make_rng(seed: int, digest: bytes) -> np.random.Generator:
    """The generator for one image: keyed by the seed and the digest of the prompt (or the inputs)."""
    s = seed % (1 << 64)
    words = np.frombuffer(digest[:32].ljust(32, b"\0"), dtype="<u4").tolist()
    return np.random.default_rng([s & 0xFFFFFFFF, s >> 32, *words])


def _grid_dims(cells: int, aspect: float) -> tuple[int, int]:
    r = math.sqrt(aspect)
    return max(2, round(cells * r)), max(2, round(cells / r))


def plan_scene(
    plan: PromptPlan,
    seed: int,
    *,
    aspect: float,
    detail: str = "medium",
    steps: int | None = None,
    guidance: float | None = None,
    palette: Palette | None = None,
    digest: bytes | None = None,
    shape_scale: float = 1.0,
    extra_copies: bool = True,
) -> Scene:
    """Every random choice of one picture. `palette` overrides the prompt's (edits pass the inputs')."""
    rng = make_rng(seed, plan.digest if digest is None else digest)
    level = LEVELS[detail]
    pal = palette if palette is not None else build_palette(plan.colours, plan.avoid_colours, guidance, rng)
    shapes = list(plan.shapes)
    kinds = [k for k, _ in shapes]
    if "lighthouse" in kinds and "wave" not in kinds and "wave" not in plan.avoid_shapes:
        shapes.append(("wave", 1))  # a lighthouse stands by the sea
        kinds.append("wave")
    if plan.night and not {"moon", "sun"} & set(kinds) and "moon" not in plan.avoid_shapes:
        shapes.append(("moon", 1))
        kinds.append("moon")
    landscape = any(k in LANDSCAPE_KINDS for k in kinds)
    horizon = float(rng.uniform(0.55, 0.72)) if landscape else None
    angle = math.pi / 2 + float(rng.uniform(-0.15, 0.15)) if landscape else float(rng.uniform(0, 2 * math.pi))

    natural_ok = not pal.named
    bound = dict(plan.shape_colours)

    def ink(kind: str) -> RGB:
        if kind in bound:  # the prompt said which colour this shape is
            return bound[kind]
        if natural_ok and kind in NATURAL_COLOURS:
            return rotate_hue(NATURAL_COLOURS[kind], float(rng.uniform(-8, 8)))
        return pal.inks[int(rng.integers(0, len(pal.inks)))]

    bonus = level.extra_copies if extra_copies else 0
    if not shapes:  # no shape words: the digest picks abstract shapes, as many as the detail level says
        allowed = [k for k in ABSTRACT_KINDS if k not in plan.avoid_shapes] or ["circle"]
        lo, hi = level.abstract
        picks = rng.choice(len(allowed), size=int(rng.integers(lo, hi + 1)))
        shapes = [(allowed[int(i)], 1) for i in picks]
        bonus = 0

    items: list[Item] = []
    first = True
    for kind, count in shapes:
        copies = min(MAX_COPIES.get(kind, 6), count + bonus)
        for _ in range(copies):
            item = _place(kind, rng, horizon, first, level, ink(kind), pal, natural_ok)
            items.append(item if shape_scale == 1.0 else replace(item, size=item.size * shape_scale))
            first = False

    steps_n = DEFAULT_STEPS if steps is None else max(1, int(steps))
    for _ in range(round(steps_n * level.marks_per_step)):
        kind = ("dot", "sparkle", "dash")[int(rng.integers(0, 3))]
        col = pal.light if rng.random() < 0.5 else pal.inks[int(rng.integers(0, len(pal.inks)))]
        items.append(
            Item(
                kind,
                float(rng.uniform(0, 1)),
                float(rng.uniform(0, 1)),
                float(rng.uniform(0.006, 0.02)),
                col,
                col,
                angle=float(rng.uniform(0, math.pi)),
                opacity=float(rng.uniform(0.6, 1.0)),
            )
        )

    if plan.night:
        # After every other choice, so a prompt without a night word keeps its picture.
        pal = at_night(pal)
        # The land and the sea dim with the sky; lights, the moon and what the prompt coloured do not.
        items = [
            replace(
                it,
                colour=shade(it.colour, -0.45),
                colour2=it.colour2 if it.kind == "house" else shade(it.colour2, -0.45),  # lit windows
            )
            if it.kind in NIGHT_DIMMED and it.kind not in bound
            else it
            for it in items
        ]
        top = (horizon if horizon is not None else 1.0) - 0.08
        for _ in range(10 + 6 * level.octaves):
            items.append(
                Item(
                    "twinkle",
                    float(rng.uniform(0, 1)),
                    float(rng.uniform(0.01, top)),
                    float(rng.uniform(0.005, 0.012)),
                    STARLIGHT,
                    STARLIGHT,
                    angle=float(rng.uniform(0, math.pi)),
                    opacity=float(rng.uniform(0.5, 1.0)),
                )
            )

    # Drawing order: sky, then mountains and water, then ground objects far to near, then the rest.
    def depth(it: Item) -> tuple[int, float]:
        if it.kind in SKY_KINDS and horizon is not None:
            return (0, 0.0)
        if it.kind == "mountain":
            return (1, 0.0)
        if it.kind == "wave":
            return (2, 0.0)
        if it.kind in GROUND_KINDS:
            return (3, it.y)
        if it.kind in ("dot", "sparkle", "dash"):
            return (5, 0.0)
        return (4, 0.0)

    items.sort(key=depth)
    gx, gy = _grid_dims(3, aspect)
    drift = smooth_noise(rng, gx, gy)
    texture = None
    if level.octaves:
        # Octaves are summed on their small grids (each upscaled to the next): one full-size upscale.
        acc = np.zeros((1, 1, 1), np.float32)
        for cells, amp in zip(_OCTAVE_CELLS[: level.octaves], _OCTAVE_AMPS, strict=False):
            ox, oy = _grid_dims(cells, aspect)
            acc = upscale(acc, ox, oy) + smooth_noise(rng, ox, oy) * np.float32(amp)
        texture = acc
    return Scene(pal, horizon, angle, tuple(items), drift, texture, level)


def _place(
    kind: str,
    rng: np.random.Generator,
    horizon: float | None,
    first: bool,
    level: Level,
    colour: RGB,
    pal: Palette,
    natural: bool,
) -> Item:
    u = rng.uniform
    angle = float(u(-0.5, 0.5))
    second = pal.dark
    if kind == "mountain":
        assert horizon is not None
        n = int(rng.integers(1, 3)) + level.octaves // 2
        xs = np.sort(u(0.05, 0.95, size=n))
        heights = u(0.18, min(0.45, horizon - 0.08), size=n)
        params = tuple(float(v) for pair in zip(xs, heights, strict=True) for v in pair)
        return Item(kind, 0.5, horizon, 1.0, colour, shade(colour, 0.75), params=params)
    if kind == "wave":
        assert horizon is not None
        layers = 2 + level.octaves // 2 + (1 if level.outline else 0)
        params = tuple(
            float(v) for _ in range(layers) for v in (u(0.01, 0.035), u(1.5, 5.0), u(0, 2 * math.pi))
        )
        return Item(kind, 0.5, horizon, 1.0, colour, shade(colour, -0.45), params=params)
    if kind == "lighthouse" and horizon is not None:
        # Tall (its tower is 1.6 sizes high): near the horizon, where the whole tower fits.
        y = horizon + float(u(0.08, 0.3)) * (1.0 - horizon)
        colours = ((0.96, 0.95, 0.92), colour) if natural else (colour, pal.light)
        return Item(
            kind, float(u(0.2, 0.8)), y, float(u(0.26, 0.32)), colours[0], colours[1], params=(float(u()),)
        )
    if kind in GROUND_KINDS and horizon is not None:
        y = horizon + float(u(0.0, (1.0 - horizon) * 0.75))
        far = (y - horizon) / max(1e-6, 1.0 - horizon)  # 0 at the horizon, 1 at the bottom
        size = float(u(0.24, 0.38)) * (0.6 + 0.8 * far) * (1.4 if first else 1.0)
        if kind == "cat":
            second = (0.62, 0.86, 0.30) if natural else pal.light  # its eyes
        elif kind == "tree":
            second = NATURAL_COLOURS["trunk"] if natural else pal.dark
        elif kind == "flower":
            second = NATURAL_COLOURS["tree"] if natural else pal.dark
        else:
            second = pal.light
        return Item(kind, float(u(0.08, 0.92)), y, size, colour, second, params=(float(u()), float(u())))
    if kind in SKY_KINDS and horizon is not None:
        x, y = float(u(0.1, 0.9)), float(u(0.08, max(0.12, horizon - 0.18)))
    elif first:
        x, y = float(u(0.35, 0.65)), float(u(0.35, 0.65))
    else:
        x, y = float(u(0.05, 0.95)), float(u(0.05, 0.95))
    size = float(u(0.2, 0.3)) if first else float(u(0.07, 0.18))
    if kind == "cloud":
        size *= 1.3
        second = shade(colour, -0.15)
    elif kind == "sun":
        second = shade(colour, 0.35)
    elif kind == "flower":
        second = NATURAL_COLOURS["tree"] if natural else pal.dark
    elif kind == "stripe":
        size *= 0.35
        angle = float(u(0, math.pi))
    params = tuple(float(v) for v in u(0, 1, size=6))
    return Item(kind, x, y, size, colour, second, angle=angle, params=params)


# ----------------------------------------------------------------------------------------------- render


def background(scene: Scene, width: int, height: int) -> F32:
    """The procedural background, planar RGB (3, h, w): a gradient between the palette's two sky colours
    along the scene's angle, drifted by smooth noise, and the ground below the horizon if any."""
    pal = scene.palette
    xs = (np.arange(width, dtype=np.float32) + 0.5) / np.float32(width) - 0.5
    ys = (np.arange(height, dtype=np.float32) + 0.5) / np.float32(height) - 0.5
    c, s = np.float32(math.cos(scene.gradient_angle)), np.float32(math.sin(scene.gradient_angle))
    t = upscale(scene.drift, width, height)[0]
    t *= np.float32(0.22)
    t += xs[None, :] * c
    t += ys[:, None] * s + np.float32(0.5)
    np.clip(t, 0.0, 1.0, out=t)
    out = np.empty((3, height, width), np.float32)
    for k in range(3):
        np.multiply(t, np.float32(pal.sky2[k] - pal.sky[k]), out=out[k])
        out[k] += np.float32(pal.sky[k])
    if scene.horizon is not None:
        hy = scene.horizon * height
        row = min(height - 1, int(hy))
        depth = np.clip((np.arange(height, dtype=np.float32) - hy) / max(1.0, height - hy), 0.0, 1.0)
        f = np.float32(row + 1 - hy)  # the horizon row is covered by this fraction of ground
        for k in range(3):
            ground = np.float32(pal.ground[k]) * (1.0 - 0.25 * depth)
            out[k, row + 1 :] = ground[row + 1 :, None]
            out[k, row] = out[k, row] * (1.0 - f) + ground[row] * f
    return out


def render(
    scene: Scene,
    width: int,
    height: int,
    *,
    transparent: bool,
    check: Check | None = None,
    underlay: tuple[F32, F32 | None] | None = None,
    shape_opacity: float = 1.0,
) -> Canvas:
    """Draws the scene. `underlay` (RGB premultiplied by alpha, and alpha or None for opaque) replaces
    the procedural background."""
    canvas = Canvas(width, height)
    if underlay is not None:
        canvas.fill(*underlay)
    elif not transparent:
        canvas.fill(background(scene, width, height))
    for i, item in enumerate(scene.items):
        if check is not None and i % 8 == 0:
            check()
        _DRAW[item.kind](canvas, item, scene, shape_opacity * item.opacity)
    if scene.texture is not None:
        tex = upscale(scene.texture, width, height)
        tex += np.float32(1.0)
        canvas.rgb *= tex  # (1, h, w) against (3, h, w): broadcast over the leading axis, fast
    return canvas


def _paint(
    canvas: Canvas,
    scene: Scene,
    cx: float,
    cy: float,
    reach: float,
    field: Field,
    colour: RGB,
    opacity: float,
    r: float,
    *,
    reach_y: float | None = None,
    solid: bool = False,
) -> None:
    """One part of a shape, shaded and outlined as the detail level says (`solid`: neither)."""
    level = scene.level
    light = 0.18 / max(r, 1.0) if level.shading and not solid else 0.0
    outline = (scene.palette.dark, max(0.6, r * 0.025), 0.55) if level.outline and not solid else None
    canvas.draw(
        cx,
        cy,
        reach,
        reach if reach_y is None else reach_y,
        field,
        colour,
        opacity,
        light=light,
        outline=outline,
    )


def _centre(canvas: Canvas, item: Item) -> tuple[float, float, float]:
    return item.x * canvas.width, item.y * canvas.height, item.size * canvas.unit


def _simple_field(item: Item, r: float) -> Field:
    """The distance field of a one-part shape of radius r."""
    p, a, kind = item.params, item.angle, item.kind
    f32 = np.float32
    if kind == "circle":
        return lambda x, y: sd_circle(x, y, r)
    if kind == "square":
        return lambda x, y: sd_box(*rotate(x, y, a), r * 0.85, r * 0.85, r * 0.12 * p[0])
    if kind == "triangle":
        return lambda x, y: sd_star(x, y - f32(r * 0.25), r, 3, 2.0, a * 0.5)
    if kind == "hexagon":
        return lambda x, y: sd_star(x, y, r, 6, 2.0, a)
    if kind == "star":
        return lambda x, y: sd_star(x, y, r, 5, 3.0 + 0.6 * p[0], a * 0.6)
    if kind == "diamond":
        return lambda x, y: sd_box(*rotate(x, y, math.pi / 4 + a * 0.3), r * 0.6, r * 0.6)
    if kind == "ring":
        return lambda x, y: np.abs(sd_circle(x, y, r * 0.78)) - f32(r * 0.2)
    if kind == "heart":
        return lambda x, y: sd_heart(x, y, r * 1.6)
    if kind == "blob":

        def blob(x: F32, y: F32) -> F32:
            theta = np.arctan2(y, x)
            wobble = 1.0 + 0.14 * np.sin(3 * theta + 6.28 * p[0]) + 0.08 * np.sin(5 * theta + 6.28 * p[1])
            return (np.sqrt(x * x + y * y) - f32(r * 0.88) * wobble).astype(np.float32)

        return blob
    if kind == "moon":
        dx, dy, rb = r * (0.35 + 0.2 * p[0]), r * 0.2, r * 0.9
        return lambda x, y: np.maximum(sd_circle(x, y, r), -sd_circle(x - f32(dx), y + f32(dy), rb))
    if kind == "cloud":
        puffs = []
        for k in range(4):
            ox = (-0.6 + 0.4 * k + 0.1 * (p[k] - 0.5)) * r
            rr = r * (0.3 + 0.22 * math.sin(math.pi * (k + 0.5) / 4) + 0.08 * p[k + 1])
            puffs.append((ox, -rr * 0.4, rr))

        def cloud(x: F32, y: F32) -> F32:
            d = sd_box(x, y - f32(r * 0.25), r * 0.9, r * 0.22, r * 0.2)
            for ox, oy, rr in puffs:
                d = np.minimum(d, sd_circle(x - f32(ox), y - f32(oy), rr))
            return d

        return cloud
    raise ValueError(f"unknown shape {kind!r}")


def _draw_simple(canvas: Canvas, item: Item, scene: Scene, opacity: float) -> None:
    cx, cy, r = _centre(canvas, item)
    if item.kind == "sun":
        n, turn = 12 + int(item.params[0] * 6), item.params[1]
        rays: Field = lambda x, y: sd_star(x, y, r * 1.5, n, 7.0, turn)  # noqa: E731
        _paint(canvas, scene, cx, cy, r * 1.55, rays, item.colour2, opacity, r, solid=True)
        _paint(canvas, scene, cx, cy, r * 1.05, lambda x, y: sd_circle(x, y, r), item.colour, opacity, r)
        return
    _paint(canvas, scene, cx, cy, r * 1.3, _simple_field(item, r), item.colour, opacity, r)


def _draw_stripe(canvas: Canvas, item: Item, scene: Scene, opacity: float) -> None:
    cx, cy, r = _centre(canvas, item)
    c, s = np.float32(math.cos(item.angle)), np.float32(math.sin(item.angle))
    band: Field = lambda x, y: np.abs(x * s - y * c) - np.float32(r)  # noqa: E731
    canvas.draw(cx, cy, canvas.width * 2.0, canvas.height * 2.0, band, item.colour, opacity)


def _draw_ridge(canvas: Canvas, item: Item, scene: Scene, opacity: float) -> None:
    """Mountains and waves: a height field per column, filled below; distance is the vertical gap
    scaled by the slope, which is exact enough for antialiasing."""
    w, h = canvas.width, canvas.height
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    base = item.y * h
    p = item.params
    if item.kind == "mountain":
        ridge = np.full(w, base + 2.0, np.float32)
        for i in range(0, len(p), 2):
            px, height = p[i], p[i + 1]
            halfwidth = 0.18 + 0.6 * height
            peak = (base - height * h) + np.abs(xs - np.float32(px)) / np.float32(halfwidth) * np.float32(
                height * h
            )
            ridge = np.minimum(ridge, peak)
        layers = [(ridge, item.colour), (ridge, item.colour2)]  # the second is the snow on the peaks
        snow_line: float | None = base - min(p[1::2]) * h * 0.55
    else:
        layers = []
        n = len(p) // 3
        for k in range(n):
            amp, freq, phase = p[3 * k], p[3 * k + 1], p[3 * k + 2]
            y0 = base + (h - base) * k / (n + 0.5)
            ridge = np.float32(y0) + np.float32(amp * h) * np.sin(
                np.float32(2 * math.pi * freq) * xs + np.float32(phase)
            ).astype(np.float32)
            layers.append((ridge, shade(item.colour, -0.5 * k / max(1, n))))
        snow_line = None
    for idx, (ridge, colour) in enumerate(layers):
        snow = snow_line is not None and idx == 1
        if snow and not scene.level.shading:
            continue
        # Only the band the ridge crosses needs a distance field; rows below it are simply filled.
        top = max(0, math.floor(float(ridge.min())) - 1)
        bottom = min(h, math.ceil(float(ridge.max())) + 2)
        if snow:
            bottom = min(bottom, math.ceil(snow_line or 0.0) + 2)
        if top >= bottom:
            continue
        ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
        slope = np.gradient(ridge) if w > 1 else np.zeros_like(ridge)
        norm = np.sqrt(1.0 + slope * slope)
        sdf = ((ridge[None, :] - ys) / norm[None, :]).astype(np.float32)
        if snow:
            sdf = np.maximum(sdf, ys - np.float32(snow_line or 0.0))
        canvas.over(0, top, sdf, colour, opacity)
        if not snow:
            canvas.fill_rows(bottom, h, colour, opacity)
        if scene.level.outline and item.kind == "wave":
            canvas.over(0, top, np.abs(sdf) - np.float32(0.8), shade(colour, 0.5), opacity * 0.7)


def _draw_ground_object(canvas: Canvas, item: Item, scene: Scene, opacity: float) -> None:
    """Trees, houses and flowers stand on their base point (bx, by) and are s pixels tall."""
    bx, by, s = _centre(canvas, item)
    p = item.params
    f32 = np.float32

    def at(
        dx: float,
        dy: float,
        reach: float,
        field: Field,
        colour: RGB,
        r: float,
        *,
        reach_y: float | None = None,
        solid: bool = False,
    ) -> None:
        _paint(
            canvas,
            scene,
            bx + dx * s,
            by + dy * s,
            reach * s,
            field,
            colour,
            opacity,
            r * s,
            reach_y=None if reach_y is None else reach_y * s,
            solid=solid,
        )

    if item.kind == "tree":
        at(
            0.0,
            -0.2,
            0.08,
            lambda x, y: sd_box(x, y, s * 0.06, s * 0.2),
            item.colour2,
            0.1,
            reach_y=0.22,
            solid=True,
        )
        if p[0] < 0.5:  # a pine: three stacked triangles

            def pine(x: F32, y: F32) -> F32:
                d = sd_star(x, y, s * 0.3, 3, 2.0)
                for k in (1, 2):
                    d = np.minimum(d, sd_star(x, y + f32(s * 0.17 * k), s * (0.3 - 0.06 * k), 3, 2.0))
                return d

            at(0.0, -0.45, 0.34, pine, item.colour, 0.3, reach_y=0.55)
        else:  # a round crown

            def crown(x: F32, y: F32) -> F32:
                d = sd_circle(x, y, s * 0.3)
                for ox in (-0.17, 0.17):
                    d = np.minimum(d, sd_circle(x - f32(ox * s), y - f32(0.12 * s), s * 0.2))
                return d

            at(0.0, -0.62, 0.4, crown, item.colour, 0.3, reach_y=0.34)
    elif item.kind == "house":
        at(0.0, -0.25, 0.34, lambda x, y: sd_box(x, y, s * 0.32, s * 0.25), item.colour, 0.3, reach_y=0.27)
        roof = [(-s * 0.42, s * 0.21), (s * 0.42, s * 0.21), (0.0, -s * 0.21)]
        at(0.0, -0.69, 0.44, lambda x, y: sd_polygon(x, y, roof), shade(item.colour, -0.4), 0.3, reach_y=0.23)
        door_x = -0.12 * (p[0] - 0.5)
        at(
            door_x,
            -0.11,
            0.08,
            lambda x, y: sd_box(x, y, s * 0.07, s * 0.11),
            scene.palette.dark,
            0.1,
            reach_y=0.12,
            solid=True,
        )
        win_x = -0.17 if p[1] < 0.5 else 0.17
        at(win_x, -0.3, 0.08, lambda x, y: sd_box(x, y, s * 0.07, s * 0.06), item.colour2, 0.1, solid=True)
    elif item.kind == "lighthouse":
        _draw_lighthouse(at, item, scene, s)
    elif item.kind == "cat":
        _draw_cat(at, item, scene, s)
    else:  # flower
        lean = s * 0.05 * (p[0] - 0.5)
        stem_w = max(0.7, s * 0.025)
        at(
            0.0,
            -0.33,
            0.06,
            lambda x, y: sd_segment(x, y, 0.0, s * 0.33, lean, -s * 0.32, stem_w),
            item.colour2,
            0.1,
            reach_y=0.36,
            solid=True,
        )
        petals = 5 + int(p[1] * 3)
        spots = [
            (math.cos(2 * math.pi * k / petals) * s * 0.12, math.sin(2 * math.pi * k / petals) * s * 0.12)
            for k in range(petals)
        ]

        def head(x: F32, y: F32) -> F32:
            d = sd_circle(x, y, s * 0.01)
            for ox, oy in spots:
                d = np.minimum(d, sd_circle(x - f32(ox), y - f32(oy), s * 0.09))
            return d

        hx = lean / s
        at(hx, -0.72, 0.23, head, item.colour, 0.2)
        at(hx, -0.72, 0.08, lambda x, y: sd_circle(x, y, s * 0.07), scene.palette.light, 0.07, solid=True)


class _At(Protocol):
    """Paints one part of a ground object at (dx, dy) sizes from its base (see _draw_ground_object)."""

    def __call__(
        self,
        dx: float,
        dy: float,
        reach: float,
        field: Field,
        colour: RGB,
        r: float,
        *,
        reach_y: float | None = None,
        solid: bool = False,
    ) -> None: ...


def _polygon(points: list[tuple[float, float]]) -> Field:
    return lambda x, y: sd_polygon(x, y, points)


def _draw_lighthouse(at: _At, item: Item, scene: Scene, s: float) -> None:
    """A tapered white tower with two bands on a rock, a lit lantern, a roof and its beams."""
    rock = shade(scene.palette.ground, -0.35)
    at(0.0, -0.02, 0.36, lambda x, y: sd_box(x, y, s * 0.34, s * 0.07, s * 0.06), rock, 0.3, reach_y=0.08)
    bottom, top, half_bottom, half_top = 0.0, -1.3, 0.17, 0.1

    def band(y0: float, y1: float) -> Field:
        def half(y: float) -> float:
            return half_bottom + (half_top - half_bottom) * (y - bottom) / (top - bottom)

        return _polygon(
            [(-half(y0) * s, y0 * s), (half(y0) * s, y0 * s), (half(y1) * s, y1 * s), (-half(y1) * s, y1 * s)]
        )

    at(0.0, 0.0, 0.2, band(bottom, top), item.colour, 0.2, reach_y=1.35)
    for y0, y1 in ((-0.3, -0.55), (-0.8, -1.05)):
        at(0.0, 0.0, 0.2, band(y0, y1), item.colour2, 0.2, reach_y=1.35, solid=True)
    glow = (1.0, 0.88, 0.45)
    beam = mix(glow, scene.palette.sky, 0.45)  # pale: light thrown across the sky
    for side in (1.0, -1.0):
        ray = [(0.0, -s * 0.04), (side * s * 1.4, -s * 0.16), (side * s * 1.4, s * 0.1)]
        at(0.0, -1.42, 1.45, _polygon(ray), beam, 0.1, reach_y=0.25, solid=True)
    gallery: Field = lambda x, y: sd_box(x, y, s * 0.15, s * 0.03)  # noqa: E731
    at(0.0, -1.33, 0.16, gallery, scene.palette.dark, 0.1, reach_y=0.04, solid=True)
    at(0.0, -1.43, 0.1, lambda x, y: sd_box(x, y, s * 0.08, s * 0.08), glow, 0.1, solid=True)
    roof = [(-s * 0.12, s * 0.05), (s * 0.12, s * 0.05), (0.0, -s * 0.12)]
    at(0.0, -1.56, 0.14, _polygon(roof), item.colour2, 0.1, reach_y=0.14)


def _draw_cat(at: _At, item: Item, scene: Scene, s: float) -> None:
    """A sitting cat seen from the front: body, head, two ears and a curled tail, with two eyes."""
    f32 = np.float32
    flip = 1.0 if item.params[0] < 0.5 else -1.0
    ears = [
        [(side * s * 0.15, -s * 0.58), (side * s * 0.03, -s * 0.68), (side * s * 0.14, -s * 0.84)]
        for side in (-1.0, 1.0)
    ]

    def cat(x: F32, y: F32) -> F32:
        d = sd_box(x, y + f32(s * 0.22), s * 0.19, s * 0.22, s * 0.17)  # the body
        d = np.minimum(d, sd_circle(x, y + f32(s * 0.58), s * 0.16))  # the head
        for ear in ears:
            d = np.minimum(d, sd_polygon(x, y, ear))
        tail = sd_segment(x, y, flip * s * 0.12, -s * 0.04, flip * s * 0.36, -s * 0.3, s * 0.04)
        return np.minimum(d, tail)

    at(0.0, 0.0, 0.42, cat, item.colour, 0.3, reach_y=0.9)
    for side in (-1.0, 1.0):
        at(side * 0.06, -0.6, 0.04, lambda x, y: sd_circle(x, y, s * 0.028), item.colour2, 0.03, solid=True)


def _draw_mark(canvas: Canvas, item: Item, scene: Scene, opacity: float) -> None:
    cx, cy, r = _centre(canvas, item)
    if item.kind == "dot":
        field: Field = lambda x, y: sd_circle(x, y, r * 0.6)  # noqa: E731
    elif item.kind in ("sparkle", "twinkle"):
        field = lambda x, y: sd_star(x, y, r * 1.5, 4, 3.5, item.angle)  # noqa: E731
    else:
        dx, dy = math.cos(item.angle) * r, math.sin(item.angle) * r
        field = lambda x, y: sd_segment(x, y, -dx, -dy, dx, dy, max(0.5, r * 0.18))  # noqa: E731
    canvas.draw(cx, cy, r * 1.6, r * 1.6, field, item.colour, opacity)


_DRAW: dict[str, Callable[[Canvas, Item, Scene, float], None]] = {
    **dict.fromkeys(
        (
            "circle",
            "square",
            "triangle",
            "hexagon",
            "star",
            "diamond",
            "ring",
            "heart",
            "blob",
            "moon",
            "sun",
            "cloud",
        ),
        _draw_simple,
    ),
    "stripe": _draw_stripe,
    "mountain": _draw_ridge,
    "wave": _draw_ridge,
    **dict.fromkeys(("tree", "house", "flower", "lighthouse", "cat"), _draw_ground_object),
    **dict.fromkeys(("dot", "sparkle", "dash", "twinkle"), _draw_mark),
}
