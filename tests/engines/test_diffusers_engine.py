"""The diffusers engine on tiny random-weight pipelines, on the CPU, loaded from save_pretrained folders.

Random weights draw noise, so the tests check what the engine promises rather than what a picture
shows: sizes, counts, seeds, which pixels change, how many denoising steps ran, which modules ran.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from limner.engines.base import Engine
from limner.engines.diffusers import EXTRA_HINT, create_engine, parse_options
from limner.engines.diffusers.previews import preview_steps
from limner.engines.jobs import EditJob, GenerateJob, JobContext, VaryJob
from limner.errors import EngineUnavailable, InvalidValue, JobCancelled
from tests.support.tiny_pipeline import TINY_STEPS

SIZE = 64  # one latent shape for most tests: the CPU kernels warm up once per shape


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.array_equal(_px(a), _px(b)))


def _gen(engine: Any, ctx: JobContext | None = None, **fields: Any) -> list[Image.Image]:
    job = GenerateJob(**{"width": SIZE, "height": SIZE, "prompt": "a red cat", "seed": 7, **fields})
    return list(engine.generate(job, ctx or JobContext()))


class _ForwardCounter:
    """Counts forward calls of a module (the shared UNet, the VAE decoder) while installed."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def __enter__(self) -> _ForwardCounter:
        return self

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()


def _parts(engine: Any) -> Any:
    """The engine's loaded pipelines (private: the tests look inside to count module calls)."""
    engine.load()
    return engine._loaded


def _picture(seed: int = 0) -> Image.Image:
    """An input with structure (not noise), so a changed pixel is a real change."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize((SIZE, SIZE), Image.Resampling.NEAREST)


def _left_half_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    return mask


# -- without torch: import cost, the missing extra, option checks, preview spacing -------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_importing_the_engine_module_imports_neither_torch_nor_diffusers() -> None:
    result = _run_python(
        """
        import sys
        import limner.engines.diffusers
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print("HEAVY", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("missing", ["torch", "diffusers"])
def test_missing_extra_names_the_extra_to_install(missing: str) -> None:
    result = _run_python(
        f"""
        import sys
        sys.modules[{missing!r}] = None  # what an environment without the package looks like
        from limner.engines.diffusers import create_engine
        from limner.errors import EngineUnavailable
        try:
            create_engine("sd", {{"source": "some/model"}})
        except EngineUnavailable as exc:
            print("STATUS", exc.status_code)
            print("MESSAGE", exc.message)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "STATUS 503" in result.stdout
    assert EXTRA_HINT in result.stdout
    assert f"{missing} could not be imported" in result.stdout


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "source"),
        ({"source": ""}, "source"),
        ({"source": "m", "device": "gpu"}, "device"),
        ({"source": "m", "dtype": "float8"}, "dtype"),
        ({"source": "m", "steps": {"low": 0}}, "steps.low"),
        ({"source": "m", "steps": {"ultra": 3}}, "steps"),
        ({"source": "m", "guidance": "high"}, "guidance"),
        ({"source": "m", "sizes": ["500x500"]}, "sizes"),
        ({"source": "m", "sizes": ["big"]}, "sizes"),
        ({"source": "m", "size_multiple": 60}, "size_multiple"),
        ({"source": "m", "strength": {"vary": 1.5}}, "strength.vary"),
        ({"source": "m", "strength": {"remix": 0.5}}, "strength.remix"),
        ({"source": "m", "load": "eager"}, "load"),
        ({"source": "m", "max_pixels": 100}, "max_pixels"),
        ({"source": "m", "preview": "taesd"}, "preview"),
        ({"source": "m", "stepz": 3}, "stepz"),
    ],
)
def test_bad_options_are_value_errors_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"option '{named}'"):
        parse_options(options)


def test_options_fill_defaults_and_merge_partial_tables() -> None:
    opts = parse_options(
        {"source": "m", "steps": {"high": 60}, "guidance": 3, "sizes": ["512x768", [768, 512]]}
    )
    assert opts.steps == {"low": 15, "medium": 25, "high": 60}
    assert opts.guidance == {"low": 3.0, "medium": 3.0, "high": 3.0}
    assert opts.sizes == ((512, 768), (768, 512))
    assert not opts.load_at_startup
    assert parse_options({"source": "m", "load": "startup"}).load_at_startup


@pytest.mark.parametrize(
    ("total", "count", "expected"),
    [
        (4, 3, [0, 1, 2]),
        (4, 1, [1]),
        (10, 2, [3, 6]),
        (2, 3, [0]),
        (1, 2, []),
        (25, 0, []),
        (25, 3, [6, 12, 18]),
    ],
)
def test_previews_are_spread_over_all_steps_but_the_last(total: int, count: int, expected: list[int]) -> None:
    assert preview_steps(total, count) == expected


# -- with torch: the engine on tiny pipelines ---------------------------------------------------------


@pytest.mark.diffusers
def test_engine_satisfies_the_protocol_and_describes_itself(tiny_engine: Any) -> None:
    assert isinstance(tiny_engine, Engine)
    info = tiny_engine.info
    assert info.name == "tiny"
    assert info.operations == frozenset({"generate", "edit", "vary"})
    assert info.sizes is None and info.size_multiple == 64
    assert info.max_images == 1 and info.mask and info.negative_prompt and info.guidance_scale
    assert not info.transparency
    assert info.extras["pipeline"] == "StableDiffusionPipeline"
    assert info.extras["background"] == "opaque"


@pytest.mark.diffusers
def test_load_is_lazy_idempotent_and_thread_safe(tiny_text2image_dir: Path) -> None:
    engine = create_engine("lazy", {"source": str(tiny_text2image_dir), "device": "cpu"})
    assert not engine.loaded
    threads = [threading.Thread(target=engine.load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.loaded
    loaded = engine._loaded
    engine.load()
    assert engine._loaded is loaded  # a second load() changes nothing


@pytest.mark.diffusers
def test_a_folder_that_is_not_a_model_is_engine_unavailable_at_load(tmp_path: Path) -> None:
    engine = create_engine("broken", {"source": str(tmp_path), "device": "cpu"})
    with pytest.raises(EngineUnavailable, match="could not be loaded"):
        engine.load()
    assert not engine.loaded


@pytest.mark.diffusers
@pytest.mark.parametrize(
    "option,source,hint",
    [
        ("source", "limner-tests/no-such-model", "hf download limner-tests/no-such-model"),
        ("source", "/no/such/folder", "no such folder"),
        ("inpaint_source", "/no/such/inpaint", "no such folder"),
    ],
)
def test_a_source_that_is_not_here_is_refused_at_creation(
    tiny_text2image_dir: Path, option: str, source: str, hint: str
) -> None:
    options = {"source": str(tiny_text2image_dir), "device": "cpu", option: source}
    with pytest.raises(ValueError) as info:
        create_engine("remote", options)
    message = str(info.value)
    assert f"model 'remote': {option} '{source}'" in message and hint in message


@pytest.mark.diffusers
def test_a_device_the_machine_lacks_is_a_value_error(tiny_text2image_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=r"option 'device'.*no CUDA device"):
        create_engine("gpu", {"source": str(tiny_text2image_dir), "device": "cuda:0"})


@pytest.mark.diffusers
def test_unknown_scheduler_class_is_a_value_error(tiny_text2image_dir: Path) -> None:
    with pytest.raises(ValueError, match="option 'scheduler'"):
        create_engine("x", {"source": str(tiny_text2image_dir), "scheduler": "UNet2DConditionModel"})


@pytest.mark.diffusers
def test_sizes_are_honoured_exactly(tiny_engine: Any) -> None:
    for width, height in [(SIZE, SIZE), (2 * SIZE, SIZE)]:
        (image,) = _gen(tiny_engine, width=width, height=height, detail="low")
        assert image.size == (width, height)
        assert image.mode == "RGB"


@pytest.mark.diffusers
@pytest.mark.parametrize(("width", "height"), [(100, 100), (64, 96), (4096, 64), (0, 64)])
def test_sizes_the_model_cannot_make_are_refused(tiny_engine: Any, width: int, height: int) -> None:
    with pytest.raises(InvalidValue) as caught:
        _gen(tiny_engine, width=width, height=height)
    assert caught.value.param == "size"
    assert "multiples of 64" in caught.value.message


@pytest.mark.diffusers
def test_max_pixels_bounds_the_area(tiny_text2image_dir: Path) -> None:
    engine = create_engine(
        "small", {"source": str(tiny_text2image_dir), "device": "cpu", "max_pixels": 64 * 128}
    )
    assert engine.info.max_pixels == 64 * 128
    with pytest.raises(InvalidValue, match="at most 8192 pixels") as caught:
        _gen(engine, width=128, height=128)
    assert caught.value.param == "size"


@pytest.mark.diffusers
def test_a_configured_size_list_is_the_only_thing_accepted(tiny_text2image_dir: Path) -> None:
    engine = create_engine(
        "listed", {"source": str(tiny_text2image_dir), "device": "cpu", "sizes": ["64x128"], "steps": 2}
    )
    assert engine.info.sizes == ((64, 128),)
    (image,) = _gen(engine, width=64, height=128)
    assert image.size == (64, 128)
    with pytest.raises(InvalidValue, match="supported sizes: 64x128") as caught:
        _gen(engine, width=SIZE, height=SIZE)
    assert caught.value.param == "size"


@pytest.mark.diffusers
def test_n_images_with_seed_plus_i_each(tiny_engine: Any) -> None:
    images = _gen(tiny_engine, n=3, seed=40)
    assert len(images) == 3
    assert not _same(images[0], images[1]) and not _same(images[1], images[2])
    # Image i of a request is image 0 of a request with seed + i, bit for bit.
    assert _same(images[2], _gen(tiny_engine, seed=42)[0])


@pytest.mark.diffusers
def test_same_seed_same_image_other_seed_other_image(tiny_engine: Any) -> None:
    first, again, other = _gen(tiny_engine, seed=3), _gen(tiny_engine, seed=3), _gen(tiny_engine, seed=4)
    assert _same(first[0], again[0])
    assert not _same(first[0], other[0])


@pytest.mark.diffusers
@pytest.mark.parametrize(
    "change",
    [
        {"negative_prompt": "blurry"},
        {"num_inference_steps": 3},
        {"guidance_scale": 2.0},
        {"prompt": "a blue dog"},
    ],
)
def test_request_fields_reach_the_pipeline(tiny_engine: Any, change: dict[str, Any]) -> None:
    assert not _same(_gen(tiny_engine)[0], _gen(tiny_engine, **change)[0])


@pytest.mark.diffusers
def test_quality_picks_the_step_preset(tiny_engine: Any) -> None:
    unet = _parts(tiny_engine).base.unet
    for detail, steps in TINY_STEPS.items():
        with _ForwardCounter(unet) as counter:
            _gen(tiny_engine, detail=detail)
        assert counter.calls == steps  # one batched (guided + unguided) UNet call per step


@pytest.mark.diffusers
def test_negative_prompt_without_guidance_is_refused_not_ignored(tiny_engine: Any) -> None:
    with pytest.raises(InvalidValue) as caught:
        _gen(tiny_engine, negative_prompt="blurry", guidance_scale=1.0)
    assert caught.value.param == "negative_prompt"


@pytest.mark.diffusers
def test_transparent_background_is_refused_not_faked(tiny_engine: Any) -> None:
    with pytest.raises(InvalidValue) as caught:
        _gen(tiny_engine, transparent=True)
    assert caught.value.param == "background"


@pytest.mark.diffusers
def test_masked_edit_keeps_unmasked_pixels_and_redraws_masked_ones(tiny_engine: Any) -> None:
    picture, mask = _picture(), _left_half_mask()
    job = EditJob(width=SIZE, height=SIZE, n=2, seed=5, prompt="a hat", images=[picture], mask=mask)
    unet = _parts(tiny_engine).base.unet
    previews: list[Image.Image] = []
    ctx = JobContext(partial_images=1, on_partial=lambda i, k, im: previews.append(im))
    with _ForwardCounter(unet) as counter:
        edited = tiny_engine.edit(job, ctx)
    assert counter.calls > 0  # the inpaint pipeline ran on the text-to-image weights
    assert len(previews) == 2
    redraw = np.asarray(mask) == 255
    for image in edited + previews:  # outside the mask is the server's run path to keep (test_run.py)
        assert image.size == picture.size
        assert np.mean(np.any(_px(image)[redraw] != _px(picture)[redraw], axis=-1)) > 0.9
    assert not _same(edited[0], edited[1])


@pytest.mark.diffusers
def test_masked_edit_with_a_dedicated_inpainting_checkpoint(
    tiny_text2image_dir: Path, tiny_inpaint_dir: Path
) -> None:
    engine = create_engine(
        "inpaint",
        {
            "source": str(tiny_text2image_dir),
            "inpaint_source": str(tiny_inpaint_dir),
            "device": "cpu",
            "steps": 2,
        },
    )
    engine.load()
    inpaint_unet = _parts(engine).inpaint_base.unet
    assert inpaint_unet.config.in_channels == 9
    picture, mask = _picture(1), _left_half_mask()
    with (
        _ForwardCounter(inpaint_unet) as inpaint_calls,
        _ForwardCounter(_parts(engine).base.unet) as base_calls,
    ):
        (edited,) = engine.edit(
            EditJob(width=SIZE, height=SIZE, prompt="x", images=[picture], mask=mask), JobContext()
        )
    assert inpaint_calls.calls == 2 and base_calls.calls == 0
    assert not _same(edited, picture)  # outside the mask is the server's run path to keep (test_run.py)


@pytest.mark.diffusers
def test_unmasked_edit_strength_follows_input_fidelity(tiny_engine: Any) -> None:
    picture, unet = _picture(2), _parts(tiny_engine).base.unet
    results, steps_run = {}, {}
    for fidelity in ("low", "high"):
        job = EditJob(width=SIZE, height=SIZE, prompt="a hat", images=[picture], input_fidelity=fidelity)
        with _ForwardCounter(unet) as counter:
            (results[fidelity],) = tiny_engine.edit(job, JobContext())
        steps_run[fidelity] = counter.calls
    # Image-to-image runs int(steps * strength) steps: 4 * 0.8 -> 3 at low fidelity, 4 * 0.5 -> 2 at high.
    assert steps_run == {"low": 3, "high": 2}
    assert results["low"].size == (SIZE, SIZE)
    assert not _same(results["low"], results["high"])
    assert not _same(results["low"], picture)


@pytest.mark.diffusers
def test_edit_with_several_images_is_refused(tiny_engine: Any) -> None:
    job = EditJob(width=SIZE, height=SIZE, prompt="x", images=[_picture(0), _picture(1)])
    with pytest.raises(InvalidValue, match="one image") as caught:
        tiny_engine.edit(job, JobContext())
    assert caught.value.param == "image"


@pytest.mark.diffusers
def test_variations_are_distinct_and_reproducible(tiny_engine: Any) -> None:
    job = VaryJob(width=SIZE, height=SIZE, n=2, seed=11, image=_picture(3))
    first = tiny_engine.vary(job, JobContext())
    assert [im.size for im in first] == [(SIZE, SIZE)] * 2
    assert not _same(first[0], first[1])
    assert all(_same(a, b) for a, b in zip(first, tiny_engine.vary(job, JobContext()), strict=True))


@pytest.mark.diffusers
def test_partial_previews_come_in_order_image_after_image(tiny_engine: Any) -> None:
    seen: list[tuple[int, int, tuple[int, int]]] = []
    ctx = JobContext(partial_images=2, on_partial=lambda i, k, im: seen.append((i, k, im.size)))
    images = _gen(tiny_engine, ctx, n=2)
    assert len(images) == 2
    assert seen == [(0, 0, (SIZE, SIZE)), (0, 1, (SIZE, SIZE)), (1, 0, (SIZE, SIZE)), (1, 1, (SIZE, SIZE))]


@pytest.mark.diffusers
def test_partial_previews_in_vae_mode_too(tiny_text2image_dir: Path) -> None:
    engine = create_engine(
        "vae", {"source": str(tiny_text2image_dir), "device": "cpu", "steps": 4, "preview": "vae"}
    )
    seen: list[Image.Image] = []
    ctx = JobContext(partial_images=3, on_partial=lambda i, k, im: seen.append(im))
    _gen(engine, ctx)
    assert [im.size for im in seen] == [(SIZE, SIZE)] * 3
    assert not _same(seen[0], seen[2])


@pytest.mark.diffusers
def test_cancellation_stops_the_pipeline_mid_run(tiny_engine: Any) -> None:
    seen: list[int] = []

    def cancel_from_elsewhere(image: int, partial: int, preview: Image.Image) -> None:
        seen.append(partial)
        # The server cancels from the event loop's thread when the client leaves.
        canceller = threading.Thread(target=ctx.cancel)
        canceller.start()
        canceller.join()

    ctx = JobContext(partial_images=3, on_partial=cancel_from_elsewhere)
    loaded = _parts(tiny_engine)
    with (
        _ForwardCounter(loaded.base.unet) as unet,
        _ForwardCounter(loaded.base.vae.decoder) as decoder,
        pytest.raises(JobCancelled),
    ):
        _gen(tiny_engine, ctx, detail="medium")  # 4 steps, previews after steps 0, 1, 2
    assert seen == [0]
    assert unet.calls == 2  # step 0, then step 1 whose callback saw the cancellation
    assert decoder.calls == 0  # and no final decode


@pytest.mark.diffusers
def test_a_job_cancelled_before_it_starts_runs_nothing(tiny_engine: Any) -> None:
    ctx = JobContext()
    ctx.cancel()
    with _ForwardCounter(_parts(tiny_engine).base.unet) as unet, pytest.raises(JobCancelled):
        _gen(tiny_engine, ctx)
    assert unet.calls == 0


@pytest.mark.diffusers
def test_one_set_of_weights_and_a_fresh_scheduler_per_call(tiny_engine: Any) -> None:
    loaded = _parts(tiny_engine)
    base = loaded.base
    views = [tiny_engine.calls._view(loaded, task) for task in ("text2image", "image2image", "inpaint")]
    assert [type(v).__name__ for v in views] == [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ]
    for view in views:
        assert view.unet is base.unet and view.vae is base.vae and view.text_encoder is base.text_encoder
        assert view.scheduler is not base.scheduler
    assert views[0].scheduler is not views[1].scheduler
    _gen(tiny_engine)
    assert base.scheduler.num_inference_steps is None  # the loaded pipeline's scheduler never stepped


@pytest.mark.diffusers
def test_configured_scheduler_is_used(tiny_text2image_dir: Path, tiny_engine: Any) -> None:
    euler = create_engine(
        "euler",
        {
            "source": str(tiny_text2image_dir),
            "device": "cpu",
            "steps": TINY_STEPS,
            "scheduler": "EulerDiscreteScheduler",
        },
    )
    euler.load()
    view = euler.calls._view(_parts(euler), "text2image")
    assert type(view.scheduler).__name__ == "EulerDiscreteScheduler"
    assert view.scheduler.config.beta_schedule == "scaled_linear"  # the model's schedule, kept
    assert not _same(_gen(euler)[0], _gen(tiny_engine)[0])


@pytest.mark.diffusers
def test_style_reaches_the_prompt(tiny_engine: Any) -> None:
    """dall-e-3's style is honoured by wording the prompt, so each style gives another picture."""

    def draw(style: Any) -> bytes:
        job = GenerateJob(prompt="a cat", width=64, height=64, seed=2, num_inference_steps=2, style=style)
        return tiny_engine.generate(job, JobContext())[0].tobytes()

    plain, vivid, natural = draw(None), draw("vivid"), draw("natural")
    assert len({plain, vivid, natural}) == 3
