"""The sketch engine: determinism, prompt steering, sizes, detail, alpha, edits, variations, partials.

Pictures are measured, not compared with stored files: colour fractions, edge energy, correlations of
downscaled images, exact pixel equality where the contract demands it. Sizes are small to stay fast.
"""

from __future__ import annotations

import colorsys
import itertools
import threading
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from limner.engines.base import Engine
from limner.engines.jobs import Detail, EditJob, GenerateJob, JobContext, VaryJob
from limner.engines.sketch import SketchEngine, preview_sizes
from limner.engines.sketch.scene import plan_scene
from limner.engines.sketch.words import COLOURS, read_prompt
from limner.errors import InvalidRequest, JobCancelled

ENGINE = SketchEngine()
W, H = 128, 96


def generate(prompt: str, **kw: Any) -> list[Image.Image]:
    args: dict[str, Any] = {"width": W, "height": H, "prompt": prompt}
    args.update(kw)
    return ENGINE.generate(GenerateJob(**args), JobContext())


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(arr(a) - arr(b)).mean())


def dominant_fraction(img: Image.Image, channel: int, margin: float = 30.0) -> float:
    """Fraction of pixels whose `channel` exceeds both other channels by `margin`."""
    rgb = arr(img.convert("RGB"))
    others = np.delete(rgb, channel, axis=2).max(axis=2)
    return float((rgb[..., channel] > others + margin).mean())


def edge_energy(img: Image.Image) -> float:
    g = arr(img.convert("L"))
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def small_grey(img: Image.Image, side: int = 12) -> np.ndarray:
    return arr(img.convert("RGB").resize((side, side), Image.Resampling.BOX).convert("L")).ravel()


def correlation(a: Image.Image, b: Image.Image) -> float:
    return float(np.corrcoef(small_grey(a), small_grey(b))[0, 1])


def photo(
    w: int = 160,
    h: int = 120,
    left: tuple[int, int, int] = (30, 110, 210),
    right: tuple[int, int, int] = (240, 200, 60),
) -> Image.Image:
    """A test input with structure at every scale: a horizontal gradient, a disc and a box."""
    t = np.linspace(0.0, 1.0, w)[None, :, None]
    grad = np.asarray(left) * (1 - t) + np.asarray(right) * t
    im = Image.fromarray(np.repeat(grad, h, axis=0).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse((w * 0.1, h * 0.15, w * 0.45, h * 0.65), fill=(200, 30, 40))
    d.rectangle((w * 0.55, h * 0.5, w * 0.9, h * 0.92), fill=(20, 150, 60))
    return im


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def round_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """An ellipse: its bounding box holds kept pixels too, which a rectangle would not test."""
    m = Image.new("L", size, 0)
    ImageDraw.Draw(m).ellipse(box, fill=255)
    return m


# -------------------------------------------------------------------------------------------- protocol


def test_engine_protocol_and_info() -> None:
    assert isinstance(ENGINE, Engine)
    info = ENGINE.info
    assert (info.name, info.sizes, info.size_multiple) == ("sketch", None, 1)
    assert info.operations == frozenset({"generate", "edit", "vary"})
    ENGINE.load()
    assert ENGINE.loaded is True


# ------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize(
    ("prompt", "detail", "transparent"),
    [
        ("a red sun over the sea", "low", False),
        ("house tree flower mountain", "medium", True),
        ("hello world", "high", False),
        ("", "medium", False),
    ],
)
def test_same_inputs_give_identical_bytes(prompt: str, detail: str, transparent: bool) -> None:
    a = generate(prompt, seed=7, detail=detail, transparent=transparent)[0]
    b = generate(prompt, seed=7, detail=detail, transparent=transparent)[0]
    assert a.mode == b.mode and a.tobytes() == b.tobytes()
    c = generate(prompt, seed=8, detail=detail, transparent=transparent)[0]
    assert a.tobytes() != c.tobytes()  # and the seed matters


def test_image_i_uses_seed_plus_i() -> None:
    batch = generate("blue stars over hills", seed=40, n=3)
    for i, img in enumerate(batch):
        alone = generate("blue stars over hills", seed=40 + i, n=1)[0]
        assert img.tobytes() == alone.tobytes()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a cat on a mat", "a dog on a log"),
        ("quiet morning", "quiet evening"),
        ("red circle", "circle red"),
        ("a red circle", "a red circle, oil painting"),
    ],
)
def test_different_prompts_give_different_pictures(a: str, b: str) -> None:
    for seed in (0, 1):
        assert mean_abs_diff(generate(a, seed=seed)[0], generate(b, seed=seed)[0]) > 5.0


@pytest.mark.parametrize(
    ("prompt", "channel"),
    [
        ("red red red", 0),
        ("green green green", 1),
        ("blue blue blue", 2),
        ("a red house", 0),
        ("blue ocean waves", 2),
    ],
)
@pytest.mark.parametrize("detail", ["low", "medium", "high"])
def test_colour_words_dominate_the_picture(prompt: str, channel: int, detail: str) -> None:
    fractions = [dominant_fraction(generate(prompt, seed=s, detail=detail)[0], channel) for s in range(3)]
    assert min(fractions) > 0.6, fractions


def mean_hue(img: Image.Image) -> float:
    """The saturation-and-value weighted circular mean hue of an image, in degrees."""
    hsv = np.asarray(img.convert("RGB").convert("HSV"), np.float32)
    h = hsv[..., 0] / 256.0 * 2 * np.pi
    w = hsv[..., 1] / 255.0 * hsv[..., 2] / 255.0
    return float(np.degrees(np.arctan2((np.sin(h) * w).sum(), (np.cos(h) * w).sum())) % 360)


@pytest.mark.parametrize(
    "colour",
    [
        "red",
        "orange",
        "yellow",
        "green",
        "cyan",
        "teal",
        "blue",
        "navy",
        "purple",
        "violet",
        "magenta",
        "pink",
        "brown",
        "gold",
    ],
)
def test_colour_words_set_the_hue(colour: str) -> None:
    target = colorsys.rgb_to_hsv(*COLOURS[colour])[0] * 360
    for detail in ("low", "high"):
        for seed in (0, 1):
            hue = mean_hue(
                generate(f"{colour} {colour} {colour}", detail=detail, seed=seed, width=96, height=96)[0]
            )
            assert min(abs(hue - target), 360 - abs(hue - target)) < 20, (hue, target)


@pytest.mark.parametrize(
    ("colour", "lo", "hi"), [("black", 0, 70), ("white", 180, 256), ("gray", 60, 190), ("silver", 120, 230)]
)
def test_colour_words_without_hue_set_lightness_and_greyness(colour: str, lo: float, hi: float) -> None:
    for seed in (0, 1):
        img = generate(f"{colour} {colour} {colour}", seed=seed)[0]
        assert lo <= arr(img.convert("L")).mean() < hi
        assert arr(img.convert("HSV"))[..., 1].mean() < 40  # nearly grey


def test_prompt_without_colour_words_gets_varied_palettes() -> None:
    means = [arr(generate(f"an idea number {k}", detail="low")[0]).mean(axis=(0, 1)) for k in range(6)]
    spread = np.ptp(np.stack(means), axis=0)
    assert spread.max() > 40.0  # the digest picks the colours: different prompts, different palettes


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("circle", "circle"),
        ("square", "square"),
        ("triangle", "triangle"),
        ("star", "star"),
        ("sun", "sun"),
        ("moon", "moon"),
        ("tree", "tree"),
        ("trees", "tree"),
        ("house", "house"),
        ("mountains", "mountain"),
        ("wave", "wave"),
        ("heart", "heart"),
        ("clouds", "cloud"),
        ("flower", "flower"),
        ("boxes", "square"),
    ],
)
def test_shape_words_choose_what_is_drawn(word: str, kind: str) -> None:
    plan = read_prompt(f"a {word} today")
    assert kind in dict(plan.shapes)
    scene = plan_scene(plan, 0, aspect=1.0, detail="low")
    assert kind in {item.kind for item in scene.items}
    assert mean_abs_diff(generate(f"green {word}")[0], generate("green")[0]) > 3.0


def _fill_ratio(img: Image.Image) -> float:
    """Opaque pixels over the area of their bounding box: about pi/4 for a disc, far less for a star."""
    a = np.asarray(img)[..., 3] > 127
    ys, xs = np.nonzero(a)
    return float(a.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))


def test_shape_words_change_the_silhouette() -> None:
    size = {"width": 160, "height": 160}
    for seed in range(4):
        disc = generate("circle", seed=seed, detail="low", transparent=True, **size)[0]
        star = generate("star", seed=seed, detail="low", transparent=True, **size)[0]
        assert 0.72 < _fill_ratio(disc) < 0.84
        assert _fill_ratio(star) < 0.55


def test_negative_prompt_removes_colours_and_shapes() -> None:
    for seed in range(3):
        no_red = generate("red and blue", negative_prompt="red", seed=seed)[0]
        no_blue = generate("red and blue", negative_prompt="blue", seed=seed)[0]
        assert dominant_fraction(no_red, 2) > 0.6 and dominant_fraction(no_red, 0) < 0.05
        assert dominant_fraction(no_blue, 0) > 0.6 and dominant_fraction(no_blue, 2) < 0.05
    plan = read_prompt("stars and circles", negative_prompt="a star")
    assert dict(plan.shapes) == {"circle": 1}
    scene = plan_scene(
        read_prompt("nothing named", negative_prompt="circle square"), 3, aspect=1.0, detail="high"
    )
    assert not {"circle", "square"} & {item.kind for item in scene.items}


def test_guidance_sets_how_strongly_the_named_colours_dominate() -> None:
    weak = [
        dominant_fraction(generate("red red red", seed=s, detail="high", guidance_scale=0.0)[0], 0)
        for s in range(4)
    ]
    strong = [
        dominant_fraction(generate("red red red", seed=s, detail="high", guidance_scale=20.0)[0], 0)
        for s in range(4)
    ]
    assert sum(strong) > sum(weak) + 0.1


@pytest.mark.parametrize("size", [(64, 64), (200, 100), (100, 200), (37, 91), (1, 1), (333, 20)])
def test_exact_sizes(size: tuple[int, int]) -> None:
    for transparent in (False, True):
        img = generate("a tree by a house", width=size[0], height=size[1], transparent=transparent)[0]
        assert img.size == size
        assert img.mode == ("RGBA" if transparent else "RGB")


@pytest.mark.parametrize("size", [(240, 120), (120, 240)])
def test_orientation_width_is_x(size: tuple[int, int]) -> None:
    # A landscape has a horizontal horizon: brightness changes down the picture more than across it.
    for seed in range(3):
        g = arr(generate("mountains", width=size[0], height=size[1], seed=seed, detail="low")[0].convert("L"))
        assert g.mean(axis=1).std() > g.mean(axis=0).std()


def test_n_images_all_different() -> None:
    images = generate("clouds", n=4, seed=3)
    assert len(images) == 4
    for a, b in itertools.combinations(images, 2):
        assert a.tobytes() != b.tobytes()


@pytest.mark.parametrize(
    "prompt", ["a red sun over the sea", "hello world", "green tree house", "purple star"]
)
def test_higher_detail_has_more_edges(prompt: str) -> None:
    energy = {
        d: np.mean(
            [edge_energy(generate(prompt, seed=s, detail=d, width=160, height=160)[0]) for s in range(3)]
        )
        for d in ("low", "medium", "high")
    }
    assert energy["low"] < energy["medium"] < energy["high"], energy


def test_more_steps_add_detail() -> None:
    few = [edge_energy(generate("blue", seed=s, detail="high", num_inference_steps=1)[0]) for s in range(3)]
    many = [
        edge_energy(generate("blue", seed=s, detail="high", num_inference_steps=120)[0]) for s in range(3)
    ]
    assert sum(many) > sum(few) * 1.1


def test_transparent_background_has_real_alpha() -> None:
    img = generate("a red heart", transparent=True, detail="medium")[0]
    alpha = np.asarray(img)[..., 3]
    assert img.mode == "RGBA"
    assert (alpha == 0).mean() > 0.2  # the background
    assert (alpha == 255).any()  # the shapes
    assert ((alpha > 0) & (alpha < 255)).any()  # antialiased edges
    opaque = generate("a red heart", transparent=False, detail="medium")[0]
    assert opaque.mode == "RGB"


# ----------------------------------------------------------------------------------------------- edit


def edit(prompt: str, images: list[Image.Image], mask: Image.Image | None, **kw: Any) -> list[Image.Image]:
    size = images[0].size
    args: dict[str, Any] = {
        "width": size[0],
        "height": size[1],
        "prompt": prompt,
        "images": images,
        "mask": mask,
    }
    args.update(kw)
    return ENGINE.edit(EditJob(**args), JobContext())


@pytest.mark.parametrize("transparent", [False, True])
@pytest.mark.parametrize("fidelity", ["low", "high"])
def test_masked_edit_keeps_unmasked_pixels_exactly(transparent: bool, fidelity: str) -> None:
    src = photo()
    mask = round_mask(src.size, (40, 10, 150, 110))
    out = edit("a yellow star", [src], mask, seed=2, transparent=transparent, input_fidelity=fidelity)[0]
    assert out.size == src.size and out.mode == ("RGBA" if transparent else "RGB")
    keep = np.asarray(mask) == 0
    expected = np.asarray(src.convert(out.mode))
    got = np.asarray(out)
    assert np.array_equal(got[keep], expected[keep])
    changed = np.abs(got[~keep].astype(int) - expected[~keep].astype(int)).mean()
    assert changed > 10


def test_masked_edit_draws_the_prompt_in_the_mask() -> None:
    src = Image.new("RGB", (120, 120), (20, 20, 200))
    mask = box_mask(src.size, (30, 30, 90, 90))
    out = edit("red red red", [src], mask, seed=1, input_fidelity="low")[0]
    inside = out.crop((30, 30, 91, 91))
    assert dominant_fraction(inside, 0) > 0.5


def test_masked_edit_resizes_input_and_mask_to_the_output_size() -> None:
    src = photo(200, 150)
    mask = round_mask(src.size, (100, 0, 199, 149))  # an ellipse in the right half
    out = edit("a moon", [src], mask, width=100, height=75)[0]
    assert out.size == (100, 75)
    small_src = np.asarray(src.resize((100, 75), Image.Resampling.LANCZOS))
    small_mask = np.asarray(mask.resize((100, 75), Image.Resampling.NEAREST))
    keep = small_mask == 0
    assert np.array_equal(np.asarray(out)[keep], small_src[keep])


@pytest.mark.parametrize("prompt", ["a yellow star", "red red red", "hello", "a cloud over a house"])
def test_edit_without_mask_is_guided_by_the_input(prompt: str) -> None:
    src = photo()
    for seed in (4, 5):
        low = edit(prompt, [src], None, seed=seed, input_fidelity="low")[0]
        high = edit(prompt, [src], None, seed=seed, input_fidelity="high")[0]
        for out, min_corr in ((low, 0.5), (high, 0.85)):
            assert mean_abs_diff(out, src) > 5.0  # redrawn...
            assert correlation(out, src) > min_corr  # ...yet the input's composition shows through
        assert mean_abs_diff(high, src) < mean_abs_diff(low, src)


@pytest.mark.parametrize("masked", [True, False])
def test_edit_uses_the_other_input_images(masked: bool) -> None:
    src = photo()
    mask = box_mask(src.size, (40, 10, 150, 110)) if masked else None
    a = edit("a flower", [src, photo(left=(250, 250, 250), right=(120, 0, 160))], mask, seed=5)[0]
    b = edit("a flower", [src, photo(left=(0, 0, 0), right=(255, 140, 0))], mask, seed=5)[0]
    assert mean_abs_diff(a, b) > 1.0


# ----------------------------------------------------------------------------------------------- vary


@pytest.mark.parametrize("detail", ["low", "medium", "high"])
def test_variations_keep_composition_and_palette_yet_differ(detail: Detail) -> None:
    src = photo()
    outs = ENGINE.vary(VaryJob(width=160, height=120, n=3, seed=9, detail=detail, image=src), JobContext())
    assert len(outs) == 3
    src_mean = arr(src).mean(axis=(0, 1))
    for out in outs:
        assert out.size == src.size and out.mode == "RGB"
        assert correlation(out, src) > 0.8
        assert np.abs(arr(out).mean(axis=(0, 1)) - src_mean).max() < 8.0
        assert mean_abs_diff(out, src) > 4.0
    for a, b in itertools.combinations(outs, 2):
        assert mean_abs_diff(a, b) > 3.0


def test_variation_honours_size_and_keeps_the_input_alpha() -> None:
    src = photo().convert("RGBA")
    alpha = Image.new("L", src.size, 255)
    alpha.paste(0, (0, 0, src.width // 3, src.height))  # the left third is transparent
    src.putalpha(alpha)
    out = ENGINE.vary(VaryJob(width=90, height=140, image=src, transparent=True), JobContext())[0]
    assert out.size == (90, 140) and out.mode == "RGBA"
    a = np.asarray(out)[..., 3]
    assert (a[:, :20] == 0).mean() > 0.8 and (a[:, 40:] == 255).mean() > 0.8
    opaque = ENGINE.vary(VaryJob(width=90, height=140, image=src), JobContext())[0]
    assert opaque.mode == "RGB"


def test_edit_accepts_other_image_modes() -> None:
    src = photo().convert("L")
    mask = round_mask(src.size, (10, 10, 60, 60))
    out = edit("a sun", [src], mask)[0]
    keep = np.asarray(mask) == 0
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out)[keep], np.asarray(src.convert("RGB"))[keep])


# ------------------------------------------------------------------------------------------- partials


def _collect(k: int) -> tuple[JobContext, list[tuple[int, int, Image.Image]]]:
    seen: list[tuple[int, int, Image.Image]] = []
    ctx = JobContext(partial_images=k, on_partial=lambda i, p, img: seen.append((i, p, img)))
    return ctx, seen


def _run(op: str, ctx: JobContext, n: int) -> list[Image.Image]:
    src = photo()
    if op == "generate":
        return ENGINE.generate(
            GenerateJob(width=160, height=120, n=n, prompt="sun over the sea", seed=1), ctx
        )
    if op == "edit":
        return ENGINE.edit(
            EditJob(
                width=160,
                height=120,
                n=n,
                prompt="a star",
                images=[src],
                mask=box_mask(src.size, (50, 10, 150, 110)),
                seed=1,
            ),
            ctx,
        )
    return ENGINE.vary(VaryJob(width=160, height=120, n=n, image=src, seed=1), ctx)


@pytest.mark.parametrize("op", ["generate", "edit", "vary"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_partials_come_in_order_coarse_to_fine(op: str, k: int) -> None:
    ctx, seen = _collect(k)
    finals = _run(op, ctx, n=2)
    assert [(i, p) for i, p, _ in seen] == [(i, p) for i in range(2) for p in range(k)]
    for i, final in enumerate(finals):
        previews = [img for j, _, img in seen if j == i]
        assert all(p.size == final.size and p.mode == final.mode for p in previews)
        distances = [mean_abs_diff(p, final) for p in previews]
        assert all(a > b for a, b in itertools.pairwise(distances)), distances
        assert distances[-1] > 0.0
    # Partials do not change the finals.
    assert [f.tobytes() for f in finals] == [f.tobytes() for f in _run(op, JobContext(), n=2)]


def test_masked_edit_previews_paint_inside_the_mask() -> None:
    """Previews of a masked edit change the masked box (keeping what is outside exactly is the server's
    run path's work, tested in tests/server/test_run.py)."""
    ctx, seen = _collect(3)
    _run("edit", ctx, n=1)
    src = np.asarray(photo())
    redraw = np.asarray(box_mask((160, 120), (50, 10, 150, 110))) == 255
    for _, _, img in seen:
        assert not np.array_equal(np.asarray(img)[redraw], src[redraw])


def test_preview_sizes_grow() -> None:
    assert preview_sizes(1024, 512, 3) == [(128, 64), (256, 128), (512, 256)]
    assert preview_sizes(1024, 1024, 1) == [(512, 512)]
    assert preview_sizes(8, 8, 3) == [(4, 4), (4, 4), (4, 4)]


# --------------------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("op", ["generate", "edit", "vary"])
def test_cancelled_job_raises(op: str) -> None:
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(JobCancelled):
        _run(op, ctx, n=1)


@pytest.mark.parametrize("op", ["generate", "edit", "vary"])
def test_cancel_during_partials_stops_the_work(op: str) -> None:
    seen: list[tuple[int, int]] = []
    cancel = threading.Event()

    def on_partial(i: int, p: int, img: Image.Image) -> None:
        seen.append((i, p))
        cancel.set()  # the client leaves after the first preview

    ctx = JobContext(partial_images=3, on_partial=on_partial, cancel_event=cancel)
    with pytest.raises(JobCancelled):
        _run(op, ctx, n=2)
    assert seen == [(0, 0)]


# ------------------------------------------------------------------------------------------- failures


def test_inputs_it_cannot_honour_are_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        ENGINE.edit(EditJob(width=32, height=32, prompt="x", images=[]), JobContext())
    assert err.value.param == "image"
    with pytest.raises(InvalidRequest) as err:
        ENGINE.edit(
            EditJob(width=32, height=32, prompt="x", images=[photo()], mask=Image.new("L", (5, 5))),
            JobContext(),
        )
    assert err.value.param == "mask"
    with pytest.raises(InvalidRequest) as err:
        ENGINE.vary(VaryJob(width=32, height=32, image=None), JobContext())
    assert err.value.param == "image"
    with pytest.raises(InvalidRequest) as err:
        ENGINE.generate(GenerateJob(width=0, height=32, prompt="x"), JobContext())
    assert err.value.param == "size"


@pytest.mark.parametrize("fidelity", ["low", "high"])
def test_transparent_edit_without_mask_is_a_real_cut_out(fidelity: str) -> None:
    """background=transparent on an unmasked edit: alpha really drawn (0 around, 255 on the shapes),
    never an opaque copy of the input labelled transparent."""
    src = Image.new("RGB", (128, 128), (30, 160, 40))
    job = EditJob(
        prompt="a star sticker",
        width=128,
        height=128,
        seed=3,
        transparent=True,
        images=[src],
        input_fidelity=fidelity,
    )  # type: ignore[arg-type]
    (out,) = SketchEngine().edit(job, JobContext())
    alpha = np.asarray(out.getchannel("A"))
    assert out.mode == "RGBA" and alpha.min() == 0 and alpha.max() == 255
    assert 0.02 < (alpha == 255).mean() < 0.9


def _saturation(image: Image.Image) -> float:
    return float(np.asarray(image.convert("HSV"), dtype=np.float64)[..., 1].mean())


@pytest.mark.parametrize("transparent", [False, True])
def test_style_vivid_and_natural(transparent: bool) -> None:
    """dall-e-3's style: vivid is more saturated than no style, natural less; alpha untouched."""

    def draw(style: Any) -> Image.Image:
        job = GenerateJob(
            prompt="a sun over a green hill by the sea",
            width=128,
            height=128,
            seed=4,
            transparent=transparent,
            style=style,
        )
        return SketchEngine().generate(job, JobContext())[0]

    plain, vivid, natural = draw(None), draw("vivid"), draw("natural")
    assert _saturation(natural) < _saturation(plain) < _saturation(vivid)
    if transparent:
        assert np.array_equal(np.asarray(vivid.getchannel("A")), np.asarray(plain.getchannel("A")))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red sun over blue mountains", {"sun": "red", "mountain": "blue"}),
        ("a yellow round sun", {"sun": "yellow"}),  # up to two words apart
        ("red red red", {}),  # no shape: the colours are the palette's alone
        ("a red sky with a big old tree", {}),  # too far apart to bind
        ("blue waves and a white cloud", {"wave": "blue", "cloud": "white"}),
    ],
)
def test_colour_words_bind_to_the_shape_they_describe(prompt: str, expected: dict[str, str]) -> None:
    plan = read_prompt(prompt)
    assert dict(plan.shape_colours) == {kind: COLOURS[c] for kind, c in expected.items()}
    scene = plan_scene(plan, 0, aspect=1.0)
    for item in scene.items:
        if item.kind in expected:
            assert item.colour == COLOURS[expected[item.kind]]
    assert {COLOURS[c] for c in expected.values()} <= {c for c, _ in plan.colours}  # still in the palette


# -- the words of the README's examples draw something recognisable ---------------------------------


def luminance(img: Image.Image) -> np.ndarray:
    a = arr(img)[..., :3]
    return a[..., 0] * 0.2126 + a[..., 1] * 0.7152 + a[..., 2] * 0.0722


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_night_darkens_the_sky_and_brings_a_moon_and_stars(seed: int) -> None:
    day = generate("a lighthouse", seed=seed)[0]
    night = generate("a lighthouse at night", seed=seed)[0]
    sky = slice(0, day.height // 3)
    assert luminance(night)[sky].mean() < 0.6 * luminance(day)[sky].mean()
    assert luminance(night)[sky].mean() < 90  # a dark sky, whatever the digest's palette
    scene = plan_scene(read_prompt("a lighthouse at night"), seed, aspect=1.0)
    kinds = [item.kind for item in scene.items]
    assert "moon" in kinds and kinds.count("twinkle") >= 10
    # A negative prompt can say no to the night.
    assert not read_prompt("a lighthouse at night", "night").night


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_a_lighthouse_is_a_banded_tower_by_the_sea(seed: int) -> None:
    plan = read_prompt("a lighthouse")
    scene = plan_scene(plan, seed, aspect=1.0)
    (tower,) = [item for item in scene.items if item.kind == "lighthouse"]
    assert "wave" in [item.kind for item in scene.items]  # the sea comes with it
    image = arr(generate("a lighthouse", seed=seed)[0])
    h, w = image.shape[:2]
    unit = min(w, h)
    # Up the tower's axis from its base: white and red bands alternate.
    x = int(tower.x * w)
    column = [image[int(tower.y * h - f * tower.size * unit), x, :3] for f in np.linspace(0.15, 1.2, 30)]
    reds = [c[0] > 150 and c[1] < 80 for c in column]
    whites = [min(c) > 200 for c in column]
    assert sum(reds) >= 5 and sum(whites) >= 5


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_a_cat_is_drawn_with_ears_and_eyes(seed: int) -> None:
    scene = plan_scene(read_prompt("a cat"), seed, aspect=1.0)
    cats = [item for item in scene.items if item.kind == "cat"]
    assert cats
    image = arr(generate("a cat", seed=seed)[0])
    h, w = image.shape[:2]
    cat = max(cats, key=lambda item: item.y)  # the nearest: drawn last, nothing covers it
    unit = min(w, h)
    head = image[int(cat.y * h - 0.58 * cat.size * unit), int(cat.x * w), :3]
    ground = image[min(h - 1, int(cat.y * h + 0.05 * unit)), int(cat.x * w), :3]
    ginger = np.array([224, 133, 51])
    assert np.abs(head - ginger).max() < 60 and np.abs(ground - ginger).max() > 60


def test_a_forest_is_many_trees() -> None:
    for prompt, kind, least in (
        ("a forest", "tree", 5),
        ("a village", "house", 3),
        ("a garden", "flower", 4),
    ):
        scene = plan_scene(read_prompt(prompt), 3, aspect=1.0, detail="low")
        assert sum(item.kind == kind for item in scene.items) >= least, prompt


def test_prompts_without_the_new_words_keep_their_pictures() -> None:
    """Night handling draws its randomness last: a day prompt's plan is untouched by it."""
    scene = plan_scene(read_prompt("a red sun over blue mountains"), 5, aspect=1.0)
    assert "twinkle" not in [item.kind for item in scene.items] and scene.palette.named
