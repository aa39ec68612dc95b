"""sketch: limner's built-in procedural engine. A stand-in, not a learned model.

sketch draws pictures from the words of a prompt with Pillow and NumPy: no weights, no network, no
GPU. It exists for development, demos and the tests of apps that call the Images API: it is fast,
free, offline and deterministic, and its pictures visibly follow the request, but it understands
nothing. It is not a learned model, and what it draws is a sketch, not a rendering of the prompt.

How a request steers it:

* **Prompt.** Colour words (red, orange, yellow, green, blue, purple, violet, pink, brown, black,
  white, gray/grey, cyan, teal, magenta, gold, silver, navy and more: `words.COLOURS`) choose
  the palette, weighted by how often each is named. Shape words (circle, square, triangle, star, sun,
  moon, tree, house, mountain, wave, heart, cloud, flower, ring, diamond, hexagon, stripe and their
  synonyms: `words.SHAPES`) choose what is drawn. The SHA-256 of all the words seeds the
  layout, so different prompts give different pictures; a prompt with no colour word gets a colour
  scheme chosen by that digest, and then suns are yellow and trees green.
* **negative_prompt.** Its colour and shape words are removed from the prompt's choices; shapes it
  names are never drawn, and derived colour schemes keep away from the hues of colours it names.
* **seed.** Image i of a job uses seed + i, so image i of seed s is image 0 of seed s + i. The same
  (prompt, negative prompt, width, height, seed, detail, transparent, steps, guidance) gives the same
  bytes on the same platform (NumPy's float rounding may differ between CPU architectures).
* **detail** (from quality): low draws the named shapes on a smooth gradient; medium adds copies,
  shading, small marks and two octaves of texture; high adds more copies, outlines and four octaves.
* **num_inference_steps** is the number of detail iterations: each step adds small marks (dots,
  sparkles, dashes), scaled by the detail level (default 20 steps).
* **guidance_scale** is how strongly the prompt's colours dominate: at 0 their hues drift and colours
  of the digest's scheme join as accents; at the default 7.5 and above the picture keeps to the
  named colours.
* **transparent**: RGBA with the background at alpha 0, shapes opaque, antialiased edges partial.
* **Partial images** are the same picture rendered at 1/8, 1/4 and 1/2 of the size (for three;
  fewer use the finer ones) and scaled back up: coarse to fine, each closer to the final.

Edits and variations are described in `sketch_inputs`.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageEnhance

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext, VaryJob
from limner.engines.sketch.inputs import Drawer, edit_drawer, fit, vary_drawer
from limner.engines.sketch.scene import LEVELS, Check, plan_scene, render
from limner.engines.sketch.words import read_prompt
from limner.errors import InvalidRequest, InvalidValue

_INFO = EngineInfo(
    name="sketch",
    sizes=None,
    size_multiple=1,
    extras={
        "kind": "procedural",
        "description": "Procedural stand-in for development, demos and tests; not a learned model.",
    },
)

#: The smallest side a preview is rendered at, so that even tiny images get a recognisable preview.
_MIN_PREVIEW_SIDE = 4


def preview_sizes(width: int, height: int, count: int) -> list[tuple[int, int]]:
    """Sizes of `count` previews, coarse to fine: 1/2**count ... 1/2 of (width, height)."""
    out = []
    for p in range(count):
        f = 0.5 ** (count - p)
        out.append((max(_MIN_PREVIEW_SIDE, round(width * f)), max(_MIN_PREVIEW_SIDE, round(height * f))))
    return out


def _normalise(img: Image.Image) -> Image.Image:
    """RGB or RGBA (when the input has any transparency), so that resizing and compositing are exact."""
    if img.mode in ("RGB", "RGBA"):
        return img
    has_alpha = img.mode in ("LA", "PA", "La", "RGBa") or "transparency" in img.info
    return img.convert("RGBA" if has_alpha else "RGB")


class SketchEngine(EngineBase):
    """The built-in procedural engine (see the module docstring). Stateless and thread-safe.

    It does not batch (`batch_key` is None): batching pays where one engine call has a fixed cost to
    share (a GPU kernel launch, a pipeline's set-up), and sketch has none. Its cost is NumPy work per
    pixel, already spread over the cores by running `sketch_concurrency` jobs at once.
    """

    @property
    def info(self) -> EngineInfo:
        return _INFO

    def load(self) -> None:
        """Nothing to load: sketch has no weights."""

    def check(self, job: Job) -> None:
        self._check_job(job)

    @property
    def loaded(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------ operations

    def generate(self, job: GenerateJob, ctx: JobContext) -> list[Image.Image]:
        self._check_job(job)
        plan = read_prompt(job.prompt, job.negative_prompt)

        def drawer(seed: int) -> Drawer:
            scene = plan_scene(
                plan,
                seed,
                aspect=job.width / job.height,
                detail=job.detail,
                steps=job.num_inference_steps,
                guidance=job.guidance_scale,
            )

            def draw(w: int, h: int, check: Check) -> Image.Image:
                image = render(scene, w, h, transparent=job.transparent, check=check).to_image(
                    job.transparent
                )
                return apply_style(image, job.style)

            return draw

        return self._run(job, ctx, drawer)

    def edit(self, job: EditJob, ctx: JobContext) -> list[Image.Image]:
        self._check_job(job)
        if not job.images:
            raise InvalidRequest("An edit needs at least one image.", param="image")
        if job.mask is not None and job.mask.size != job.images[0].size:
            raise InvalidValue(
                f"The mask is {job.mask.width}x{job.mask.height} but the image is "
                f"{job.images[0].width}x{job.images[0].height}; they must be the same size.",
                param="mask",
            )
        if job.input_fidelity not in ("low", "high"):
            raise InvalidValue("input_fidelity must be 'low' or 'high'.", param="input_fidelity")
        size = (job.width, job.height)
        # The edited image is resized to the output size first; the mask follows with NEAREST so that
        # it stays a clean 0 / 255 map. Other inputs are only guides: they keep their own sizes.
        images = [
            fit(_normalise(job.images[0]), *size, Image.Resampling.LANCZOS),
            *map(_normalise, job.images[1:]),
        ]
        mask = None if job.mask is None else fit(job.mask.convert("L"), *size, Image.Resampling.NEAREST)

        def drawer(seed: int) -> Drawer:
            return edit_drawer(
                prompt=job.prompt,
                negative_prompt=job.negative_prompt,
                images=images,
                mask=mask,
                width=job.width,
                height=job.height,
                seed=seed,
                detail=job.detail,
                transparent=job.transparent,
                fidelity=job.input_fidelity,
                steps=job.num_inference_steps,
                guidance=job.guidance_scale,
            )

        # Pixels outside the mask are the server's to keep (limner.server.serving.run); the drawer
        # paints only inside it, as this engine draws an edit.
        return self._run(job, ctx, drawer)

    def vary(self, job: VaryJob, ctx: JobContext) -> list[Image.Image]:
        self._check_job(job)
        if job.image is None:
            raise InvalidRequest("A variation needs an image.", param="image")
        image = fit(_normalise(job.image), job.width, job.height, Image.Resampling.LANCZOS)

        def drawer(seed: int) -> Drawer:
            return vary_drawer(
                image=image,
                width=job.width,
                height=job.height,
                seed=seed,
                detail=job.detail,
                transparent=job.transparent,
                steps=job.num_inference_steps,
                guidance=job.guidance_scale,
            )

        return self._run(job, ctx, drawer)

    # ------------------------------------------------------------------------------------ internals

    def _check_job(self, job: Job) -> None:
        if job.width < 1 or job.height < 1:
            raise InvalidValue(f"Invalid size {job.width}x{job.height}.", param="size")
        if job.width * job.height > _INFO.max_pixels:
            raise InvalidValue(
                f"{job.width}x{job.height} is over the sketch engine's {_INFO.max_pixels} pixels.",
                param="size",
            )
        if job.n < 1:
            raise InvalidValue("n must be at least 1.", param="n")
        if job.detail not in LEVELS:
            raise InvalidValue(f"Unknown detail {job.detail!r}.", param="quality")

    def _run(
        self,
        job: Job,
        ctx: JobContext,
        make: Callable[[int], Drawer],
    ) -> list[Image.Image]:
        """Draws job.n images, image i with seed + i, with ctx.partial_images previews each."""
        want = ctx.partial_images if ctx.on_partial is not None else 0
        out: list[Image.Image] = []
        for i in range(job.n):
            ctx.check()
            draw = make(job.seed + i)
            for p, (pw, ph) in enumerate(preview_sizes(job.width, job.height, want)):
                small = draw(pw, ph, ctx.check)
                preview = small.resize((job.width, job.height), Image.Resampling.BILINEAR)
                ctx.report_partial(i, p, preview)
            out.append(draw(job.width, job.height, ctx.check))
            ctx.report_progress(i + 1, job.n)
        ctx.check()
        return out


#: dall-e-3's style as (colour, contrast) factors: vivid is saturated and punchy, natural muted.
STYLE_ENHANCE = {"vivid": (1.35, 1.12), "natural": (0.7, 0.92)}


def apply_style(image: Image.Image, style: str | None) -> Image.Image:
    """Honour dall-e-3's `style` on a drawn picture; the alpha channel is left as it was."""
    if style is None:
        return image
    colour, contrast = STYLE_ENHANCE[style]
    rgb = image.convert("RGB")
    rgb = ImageEnhance.Contrast(ImageEnhance.Color(rgb).enhance(colour)).enhance(contrast)
    if image.mode == "RGBA":
        rgb.putalpha(image.getchannel("A"))
    return rgb
