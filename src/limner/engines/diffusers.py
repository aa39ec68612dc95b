"""The diffusers engine: any Hugging Face diffusers text-to-image model behind the Engine protocol.

    create_engine("sd15", {"source": "/models/sd15", "device": "auto"}) -> DiffusersEngine

What it does, and the decisions behind it:

* **Loading.** `AutoPipelineForText2Image.from_pretrained(source)` (`local_files_only` when the source is
  a folder), falling back to `DiffusionPipeline` for pipelines the AutoPipeline tables do not know (they
  then only generate). Lazily on the first job, or at server start with `load = "startup"`. `load()`
  is idempotent and thread-safe. torch and diffusers are imported inside functions, never when this
  module is imported, so a server without the [diffusers] extra still starts and says what to install.
* **One set of weights.** Image-to-image and inpainting use `AutoPipelineFor*.from_pipe(base)`, which
  builds a pipeline object around the *same* modules (no copy, no dtype conversion). An
  `inpaint_source` (a dedicated inpainting checkpoint) is the one exception: a second set of weights,
  used for masked edits only.
* **Schedulers are stateful** (timesteps, step index), so every pipeline call gets a fresh scheduler
  built from the configured one's config, inside a per-call pipeline view (`from_pipe(base,
  scheduler=fresh)`, ~2 ms); the loaded pipeline's own scheduler is never stepped.
* **Sizes** are never changed: a size the model cannot make is a 400 (param `size`). Without a `sizes`
  list, any width and height that are multiples of `size_multiple` (64 by default: the VAE's factor 8
  times the UNet's downsampling, so every SD-family UNet works without padding) up to `max_size`.
* **Seeds.** Image i of a job uses `seed + i`, through its own CPU `torch.Generator` (CPU generators give
  the same noise on every device). With `max_batch = 1` images run one per pipeline call, so image i
  of a request is bit-identical to image 0 of a request with `seed + i`; `max_batch > 1` batches a
  request's images and those of concurrent requests with the same batch key (one prompt, input and
  generator per image; faster, but batched kernels may differ from unbatched ones by a level in a
  pixel).
* **Edits.** With a mask (255 = repaint): the inpaint pipeline, then the result is composed back onto
  the input through the mask, so every pixel outside the mask is bit-identical to the input (at the
  output size; identical to the upload when the sizes match), in partial previews as well. Without a mask: image-to-image with a
  strength that follows `input_fidelity`. Edits use the first image only; more images are a 400 (param
  `image`): SD-family pipelines take no reference images.
* **Variations**: image-to-image from the input with an empty prompt at a moderate strength (`vary`),
  one seed per image.
* **background=transparent** is refused with a 400 (param `background`): diffusion VAEs decode RGB, and
  a matte guessed from the borders would claim an alpha channel the model never produced.
* **Fields the model cannot honour** (`negative_prompt` or `guidance_scale` for a pipeline without them,
  a negative prompt with guidance <= 1 where classifier-free guidance is off) are a 400 naming the
  field, never silently dropped.
* **Long prompts** are cut by the pipeline to its text encoder's window (77 CLIP tokens for the SD
  family; diffusers logs what it dropped) rather than refused: OpenAI's prompt limits are far longer,
  and clients written for them send long prompts.
* **Partial images and cancellation** go through `callback_on_step_end`: previews at steps spread over
  the run (see diffusers_previews), and, when the job is cancelled, the pipeline's `_interrupt` flag is
  set and JobCancelled is raised from the callback, which also skips the final VAE decode.

Options (the model's table in the config, minus `engine`): source, inpaint_source, device, dtype,
scheduler, steps, guidance, sizes, size_multiple, max_size, max_pixels, strength, preview, max_batch,
load.
Unknown options are a ValueError, so typos in the config fail at start instead of being ignored.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from PIL import Image

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.diffusers_previews import PreviewDecoder, PreviewMode, preview_steps
from limner.engines.jobs import Detail, EditJob, GenerateJob, Job, JobContext, VaryJob, _JobBase
from limner.errors import EngineUnavailable, InvalidValue, JobCancelled

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'limner[diffusers]'"
#: dall-e-3's `style`, in OpenAI's own words for it, appended to the prompt (a text-to-image model's
#: only handle on look): vivid "hyper-real and dramatic", natural "more natural, less hyper-real".
STYLE_SUFFIX = {"vivid": ", vivid, hyper-real, dramatic", "natural": ", natural, realistic, understated"}

Task = Literal["text2image", "image2image", "inpaint"]

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = ("auto", "float32", "float16", "bfloat16")
_DETAILS: tuple[Detail, ...] = ("low", "medium", "high")
_DEFAULT_STEPS: dict[Detail, int] = {"low": 15, "medium": 25, "high": 40}
_DEFAULT_STRENGTH = {
    "edit": 0.8,  # unmasked edit, input_fidelity low: the prompt may move the picture far
    "edit_high_fidelity": 0.5,  # unmasked edit, input_fidelity high: keeps the input's look
    "inpaint": 1.0,  # masked edit: the masked area is redrawn from noise
    "inpaint_high_fidelity": 0.75,  # masked edit, input_fidelity high: the masked area keeps a trace
    "vary": 0.6,
}
_KNOWN_OPTIONS = frozenset(
    {
        "source",
        "inpaint_source",
        "device",
        "dtype",
        "scheduler",
        "steps",
        "guidance",
        "sizes",
        "size_multiple",
        "max_size",
        "max_pixels",
        "strength",
        "preview",
        "max_batch",
        "load",
    }
)


def _module(name: str) -> Any:
    """Import a heavy module lazily, typed as Any (diffusers builds its namespace dynamically)."""
    return importlib.import_module(name)


def _require_extra(model_name: str) -> None:
    """Raise EngineUnavailable naming the extra when torch or diffusers cannot be imported."""
    for name in ("torch", "diffusers"):
        try:
            _module(name)
        except ImportError as exc:
            raise EngineUnavailable(
                f"Model '{model_name}' uses the diffusers engine, which needs the [diffusers] extra: "
                f"{EXTRA_HINT} ({name} could not be imported: {exc})"
            ) from exc


# --------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class DiffusersOptions:
    """The validated options of one diffusers model."""

    source: str
    inpaint_source: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    scheduler: str | None = None
    steps: dict[Detail, int] = field(default_factory=lambda: dict(_DEFAULT_STEPS))
    #: None: the pipeline's own default guidance scale.
    guidance: dict[Detail, float | None] = field(default_factory=lambda: dict.fromkeys(_DETAILS))
    sizes: tuple[tuple[int, int], ...] | None = None
    size_multiple: int = 64
    max_size: int = 2048
    #: Width times height at most; None: max_size squared.
    max_pixels: int | None = None
    strength: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_STRENGTH))
    preview: PreviewMode = "auto"
    max_batch: int = 1
    load_at_startup: bool = False


def _fail(option: str, message: str) -> ValueError:
    return ValueError(f"diffusers option '{option}': {message}")


def _int(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(option, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _float(option: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _fail(option, f"expected a number from {low} to {high}, got {value!r}")
    return float(value)


def _per_detail(option: str, value: Any, parse: Callable[[str, Any], Any]) -> dict[Detail, Any]:
    """A number for every quality, or a table {low, medium, high} (missing keys keep the default)."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(_DETAILS)
        if unknown:
            raise _fail(option, f"unknown keys {sorted(unknown)}; expected low, medium, high")
        return {d: parse(f"{option}.{d}", value[d]) for d in _DETAILS if d in value}
    return {d: parse(option, value) for d in _DETAILS}


def _parse_size(option: str, value: Any) -> tuple[int, int]:
    if isinstance(value, str) and "x" in value:
        w, _, h = value.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise _fail(option, f"expected sizes like '512x512' or [512, 512], got {value!r}")


def parse_options(options: Mapping[str, Any]) -> DiffusersOptions:
    """Validate a model's config table; every problem is a ValueError that names the option."""
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise _fail(unknown[0], f"unknown option; known options are {', '.join(sorted(_KNOWN_OPTIONS))}")
    source = options.get("source")
    if not isinstance(source, str) or not source.strip():
        raise _fail("source", "required: a local folder or a Hugging Face hub id")
    inpaint_source = options.get("inpaint_source")
    if inpaint_source is not None and (not isinstance(inpaint_source, str) or not inpaint_source.strip()):
        raise _fail("inpaint_source", f"expected a local folder or a hub id, got {inpaint_source!r}")
    device = options.get("device", "auto")
    if not isinstance(device, str) or not (
        device in _DEVICES or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise _fail("device", f"expected one of auto, cpu, cuda, cuda:N, mps; got {device!r}")
    dtype = options.get("dtype", "auto")
    if dtype not in _DTYPES:
        raise _fail("dtype", f"expected one of {', '.join(_DTYPES)}; got {dtype!r}")
    scheduler = options.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.isidentifier()):
        raise _fail("scheduler", f"expected a diffusers scheduler class name, got {scheduler!r}")

    steps = dict(_DEFAULT_STEPS)
    if "steps" in options:
        steps.update(_per_detail("steps", options["steps"], lambda o, v: _int(o, v, 1, 500)))
    guidance: dict[Detail, float | None] = dict.fromkeys(_DETAILS)
    if "guidance" in options:
        guidance.update(_per_detail("guidance", options["guidance"], lambda o, v: _float(o, v, 0.0, 100.0)))

    size_multiple = _int("size_multiple", options.get("size_multiple", 64), 8, 4096)
    if size_multiple % 8:
        raise _fail("size_multiple", f"must be a multiple of 8 (the VAE's scale), got {size_multiple}")
    max_size = _int("max_size", options.get("max_size", 2048), size_multiple, 16384)
    max_pixels = options.get("max_pixels")
    if max_pixels is not None:
        max_pixels = _int("max_pixels", max_pixels, size_multiple * size_multiple, 16384 * 16384)
    sizes: tuple[tuple[int, int], ...] | None = None
    if "sizes" in options:
        raw = options["sizes"]
        if not isinstance(raw, list | tuple) or not raw:
            raise _fail("sizes", f"expected a non-empty list of sizes, got {raw!r}")
        sizes = tuple(_parse_size("sizes", s) for s in raw)
        for w, h in sizes:
            if w <= 0 or h <= 0 or w % 8 or h % 8:
                raise _fail("sizes", f"{w}x{h}: width and height must be positive multiples of 8")

    strength = dict(_DEFAULT_STRENGTH)
    raw_strength = options.get("strength", {})
    if not isinstance(raw_strength, Mapping):
        raise _fail("strength", f"expected a table with keys {', '.join(_DEFAULT_STRENGTH)}")
    for key, value in raw_strength.items():
        if key not in _DEFAULT_STRENGTH:
            raise _fail(f"strength.{key}", f"unknown key; expected one of {', '.join(_DEFAULT_STRENGTH)}")
        strength[key] = _float(f"strength.{key}", value, 0.01, 1.0)

    preview = options.get("preview", "auto")
    if preview not in ("auto", "linear", "vae"):
        raise _fail("preview", f"expected auto, linear or vae; got {preview!r}")
    load = options.get("load", "lazy")
    if load not in ("lazy", "startup"):
        raise _fail("load", f"expected lazy or startup; got {load!r}")
    return DiffusersOptions(
        source=source,
        inpaint_source=inpaint_source,
        device=device,
        dtype=dtype,
        scheduler=scheduler,
        steps=steps,
        guidance=guidance,
        sizes=sizes,
        size_multiple=size_multiple,
        max_size=max_size,
        max_pixels=max_pixels,
        strength=strength,
        preview=cast(PreviewMode, preview),
        max_batch=_int("max_batch", options.get("max_batch", 1), 1, 64),
        load_at_startup=load == "startup",
    )


def _resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise _fail("device", f"{device!r} asked for, but torch sees no CUDA device")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise _fail(
                "device", f"{device!r} asked for, but torch sees {torch.cuda.device_count()} device(s)"
            )
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise _fail("device", "'mps' asked for, but torch sees no MPS device")
    return device


def _resolve_dtype(torch: Any, dtype: str, device: str) -> Any:
    if dtype == "auto":
        # Half precision is the norm for these models on accelerators; the CPU wants float32.
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, dtype)


def _dtype_keyword() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns); older releases know only it."""
    utils = _module("diffusers.utils.deprecation_utils")
    return "dtype" if hasattr(utils, "_resolve_dtype") else "torch_dtype"


def _check_source(model_name: str, option: str, source: str | None) -> None:
    """A source must be a folder here or a hub id already in the local cache: found at start-up, not
    by the first request after a network time-out."""
    if source is None or os.path.isdir(source):
        return
    looks_like_id = not source.startswith((".", "/", "~")) and source.count("/") == 1
    if looks_like_id:
        try:
            cached = _module("huggingface_hub").try_to_load_from_cache(source, "model_index.json")
        except Exception:  # a malformed id: reported below like any other unknown source
            cached = None
        if isinstance(cached, str):
            return
        hint = f"download it first (hf download {source}) or give a folder made with save_pretrained"
    else:
        hint = "no such folder"
    raise ValueError(
        f"model '{model_name}': {option} '{source}' is neither a folder nor a hub id in the local "
        f"Hugging Face cache ({hint})"
    )


def _pipeline_class_name(source: str) -> str | None:
    """The pipeline class from model_index.json, without loading anything (None when unknown)."""
    index: str | None = None
    if os.path.isdir(source):
        index = os.path.join(source, "model_index.json")
    else:
        try:  # a hub id already in the local cache; never a network call here
            cached = _module("huggingface_hub").try_to_load_from_cache(source, "model_index.json")
            index = cached if isinstance(cached, str) else None
        except Exception:
            index = None
    if index is None or not os.path.isfile(index):
        return None
    try:
        name = json.loads(Path(index).read_text()).get("_class_name")
    except (OSError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _task_class(task: Task, pipeline_class_name: str) -> Any:
    """The diffusers pipeline class for `task` that pairs with a text-to-image class, or None."""
    auto = _module("diffusers.pipelines.auto_pipeline")
    mapping = {
        "text2image": auto.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        "image2image": auto.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        "inpaint": auto.AUTO_INPAINT_PIPELINES_MAPPING,
    }[task]
    return auto._get_task_class(mapping, pipeline_class_name, throw_error_if_not_exist=False)


def create_engine(model_name: str, options: Mapping[str, Any]) -> DiffusersEngine:
    """Validate the options, check that the extra is installed, and return an engine (not loaded yet).

    Raises ValueError for a bad option (the message names it) and EngineUnavailable when torch or
    diffusers cannot be imported (the message names the extra). Imports torch and diffusers (seconds).
    """
    parsed = parse_options(options)
    _require_extra(model_name)
    for option in ("source", "inpaint_source"):
        _check_source(model_name, option, getattr(parsed, option))
    torch, diffusers = _module("torch"), _module("diffusers")
    if parsed.scheduler is not None:
        cls = getattr(diffusers, parsed.scheduler, None)
        if not (inspect.isclass(cls) and issubclass(cls, diffusers.SchedulerMixin)):
            raise _fail("scheduler", f"{parsed.scheduler!r} is not a diffusers scheduler class")
    device = _resolve_device(torch, parsed.device)
    return DiffusersEngine(
        model_name, parsed, device=device, dtype=_resolve_dtype(torch, parsed.dtype, device)
    )


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Loaded:
    """What load() produces; replaced as a whole, so readers never see a half-loaded engine."""

    base: Any  # the text-to-image pipeline that owns the weights
    scheduler_cls: Any
    scheduler_config: Any
    inpaint_base: Any | None  # a dedicated inpainting checkpoint, when configured


class DiffusersEngine(EngineBase):
    """Draws with one diffusers model. Synchronous; the scheduler runs `concurrency` batches at once."""

    def __init__(self, model_name: str, options: DiffusersOptions, *, device: str, dtype: Any) -> None:
        self.model_name = model_name
        self.options = options
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        class_name = _pipeline_class_name(options.source)
        self._info = self._make_info(class_name)

    # -- Engine protocol ---------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_at_startup(self) -> bool:
        """True when the config says `load = "startup"`: the server calls load() before serving."""
        return self.options.load_at_startup

    def load(self) -> None:
        if self._loaded is not None:
            return
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
                # The real class is known now; a hub id not in the cache could not tell us before.
                self._info = self._make_info(type(self._loaded.base).__name__)

    def close(self) -> None:
        """Drop the pipelines (and the device memory they hold)."""
        with self._lock:
            self._loaded = None
        torch = _module("torch")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def check(self, job: Job) -> None:
        """Everything that can be refused before the pipeline runs: operation, size, background,
        the inputs of edits and variations, and (once loaded) the fields this pipeline cannot honour."""
        self._check_inputs(job)
        loaded = self._loaded
        if loaded is not None:
            self._plan(job, loaded, inputs=False)

    def _check_inputs(self, job: Job) -> None:
        operation = (
            "generate" if isinstance(job, GenerateJob) else "edit" if isinstance(job, EditJob) else "vary"
        )
        self._check_job(job, operation)
        if isinstance(job, EditJob):
            if not job.images:
                raise InvalidValue("An edit needs an image.", param="image")
            if len(job.images) > 1:
                raise InvalidValue(
                    f"Model '{self.model_name}' edits one image and takes no reference images; "
                    f"{len(job.images)} were sent. Send a single image.",
                    param="image",
                )
            source = job.images[0]
            if job.mask is not None and job.mask.size != source.size:
                raise InvalidValue(
                    f"The mask is {job.mask.size[0]}x{job.mask.size[1]} but the image is "
                    f"{source.size[0]}x{source.size[1]}; they must be the same size.",
                    param="mask",
                )
        if isinstance(job, VaryJob) and job.image is None:
            raise InvalidValue("A variation needs an image.", param="image")
        self._steps(job, self._strength(job))

    def batch_key(self, job: Job) -> Hashable:
        """Jobs that one pipeline call can run together: the same task, size, steps, guidance,
        strength (the scheduler is fixed per model) and whether there is a negative prompt. Prompts,
        inputs and seeds differ per image."""
        strength = self._strength(job)
        return (
            self._task(job),
            job.width,
            job.height,
            self._steps(job, strength),
            self._guidance(job),
            strength,
            bool(job.negative_prompt),
        )

    def generate(self, job: GenerateJob, ctx: JobContext) -> list[Image.Image]:
        return self.run_batch([job], [ctx])[0]

    def edit(self, job: EditJob, ctx: JobContext) -> list[Image.Image]:
        return self.run_batch([job], [ctx])[0]

    def vary(self, job: VaryJob, ctx: JobContext) -> list[Image.Image]:
        return self.run_batch([job], [ctx])[0]

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        """Every image of every job, in pipeline calls of up to `max_batch` images: one prompt, one
        input and one CPU generator (seed + i of its own job) per image, so each request gets exactly
        its own images. A job whose client left is dropped (an empty list); a call whose jobs have all
        left is interrupted; when every job has left, JobCancelled."""
        for job in jobs:
            self._check_inputs(job)
        loaded = self._ready(next((c for c in contexts if not c.cancelled), contexts[0]))
        plans = [self._plan(job, loaded) for job in jobs]
        entries = [
            _Entry(index, image, ctx, plan)
            for index, (plan, ctx) in enumerate(zip(plans, contexts, strict=True))
            for image in range(plan.job.n)
        ]
        # Previews stream image after image: a job that wants them and has several images runs one
        # image per call (streams send one-image jobs, which batch freely).
        single = any(c.partial_images > 0 and p.job.n > 1 for p, c in zip(plans, contexts, strict=True))
        size = 1 if single else self.options.max_batch
        results: list[list[Image.Image]] = [[] for _ in jobs]
        for first in range(0, len(entries), size):
            chunk = [e for e in entries[first : first + size] if not e.ctx.cancelled]
            if not chunk:
                continue
            try:
                images = self._call(loaded, chunk)
            except JobCancelled:
                continue  # everyone in this call left; later calls may still have someone waiting
            for entry, image in zip(chunk, images, strict=True):
                if not entry.ctx.cancelled:
                    results[entry.job_index].append(image)
        if all(c.cancelled for c in contexts):
            raise JobCancelled()
        return results

    # -- loading -----------------------------------------------------------------------------------

    def _load(self) -> _Loaded:
        diffusers = _module("diffusers")
        base = self._from_pretrained(diffusers, self.options.source, diffusers.AutoPipelineForText2Image)
        scheduler_cls = type(base.scheduler)
        if self.options.scheduler is not None:
            scheduler_cls = getattr(diffusers, self.options.scheduler)
        # from_config keeps the model's beta schedule and prediction type while changing the sampler.
        scheduler_config = scheduler_cls.from_config(base.scheduler.config).config
        self._check_vae_scale(base)
        inpaint_base = None
        if self.options.inpaint_source is not None:
            inpaint_base = self._from_pretrained(
                diffusers, self.options.inpaint_source, diffusers.AutoPipelineForInpainting
            )
        logger.info(
            "diffusers model %r loaded from %s on %s", self.model_name, self.options.source, self.device
        )
        return _Loaded(base, scheduler_cls, scheduler_config, inpaint_base)

    def _from_pretrained(self, diffusers: Any, source: str, auto_cls: Any) -> Any:
        kwargs: dict[str, Any] = {_dtype_keyword(): self.dtype}
        if os.path.isdir(source):
            kwargs["local_files_only"] = True
        try:
            try:
                pipe = auto_cls.from_pretrained(source, **kwargs)
            except ValueError as exc:
                if "AutoPipeline can't find" not in str(exc):
                    raise
                # A pipeline outside the AutoPipeline tables: load it as it is (text-to-image only).
                pipe = diffusers.DiffusionPipeline.from_pretrained(source, **kwargs)
            pipe = pipe.to(self.device)
        except Exception as exc:
            # The operator reads the cause in the log; the client learns only that the model is not
            # available (no paths or library messages in a response).
            logger.error("model '%s' could not be loaded from %r: %s", self.model_name, source, exc)
            raise EngineUnavailable(
                f"Model '{self.model_name}' could not be loaded on this server; the server log says why."
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _check_vae_scale(self, base: Any) -> None:
        factor = int(getattr(base, "vae_scale_factor", 8) or 8)
        bad = [f"{w}x{h}" for w, h in self.options.sizes or () if w % factor or h % factor]
        if self.options.size_multiple % factor:
            bad.append(f"size_multiple {self.options.size_multiple}")
        if bad:
            raise EngineUnavailable(
                f"Model '{self.model_name}': {', '.join(bad)} not a multiple of the VAE scale factor "
                f"{factor}; fix 'sizes' or 'size_multiple' in the config."
            )

    def _ready(self, ctx: JobContext) -> _Loaded:
        ctx.check()
        self.load()
        assert self._loaded is not None
        return self._loaded

    # -- info and checks ---------------------------------------------------------------------------

    def _make_info(self, class_name: str | None) -> EngineInfo:
        operations = {"generate", "edit", "vary"}
        if class_name is not None:
            try:
                can_i2i = _task_class("image2image", class_name) is not None
                can_inpaint = self.options.inpaint_source is not None or (
                    _task_class("inpaint", class_name) is not None
                )
            except (ImportError, AttributeError):  # diffusers moved its tables: assume everything
                can_i2i = can_inpaint = True
            operations = {"generate"} | ({"vary"} if can_i2i else set())
            operations |= {"edit"} if can_i2i or can_inpaint else set()
        opts = self.options
        sizes = opts.sizes
        return EngineInfo(
            name=self.model_name,
            operations=frozenset(operations),
            sizes=sizes,
            size_multiple=opts.size_multiple if sizes is None else 8,
            max_pixels=max(w * h for w, h in sizes) if sizes else self._max_pixels,
            extra_reference_images=False,
            max_batch=opts.max_batch,
            extras={
                "engine": "diffusers",
                "source": opts.source,
                "pipeline": class_name or "unknown",
                "background": "opaque",
                "max_size": str(opts.max_size),
            },
        )

    def _check_job(self, job: _JobBase, operation: str) -> None:
        if operation not in self._info.operations:
            raise InvalidValue(
                f"Model '{self.model_name}' ({self._info.extras['pipeline']}) does not support {operation}.",
                param="model",
            )
        if job.transparent:
            raise InvalidValue(
                f"Model '{self.model_name}' draws opaque images only: a diffusers VAE decodes RGB, and "
                "limner does not fake an alpha channel. Use background 'opaque' or 'auto'.",
                param="background",
            )
        self._check_size(job.width, job.height)
        if job.n < 1:
            raise InvalidValue(f"n must be at least 1, got {job.n}.", param="n")

    def _check_size(self, width: int, height: int) -> None:
        opts = self.options
        if opts.sizes is not None:
            if (width, height) not in opts.sizes:
                allowed = ", ".join(f"{w}x{h}" for w, h in opts.sizes)
                raise InvalidValue(
                    f"Size {width}x{height} is not supported by model '{self.model_name}'; "
                    f"supported sizes: {allowed}.",
                    param="size",
                )
            return
        m = opts.size_multiple
        if not (m <= width <= opts.max_size and m <= height <= opts.max_size) or width % m or height % m:
            raise InvalidValue(
                f"Size {width}x{height} is not supported by model '{self.model_name}': width and height "
                f"must be multiples of {m} from {m} to {opts.max_size}.",
                param="size",
            )
        if width * height > self._max_pixels:
            raise InvalidValue(
                f"Size {width}x{height} is not supported by model '{self.model_name}': at most "
                f"{self._max_pixels} pixels (width x height).",
                param="size",
            )

    @property
    def _max_pixels(self) -> int:
        return self.options.max_pixels or self.options.max_size * self.options.max_size

    def _require_task(self, loaded: _Loaded, task: Task, what: str, param: str) -> None:
        if _task_class(task, type(loaded.base).__name__) is None:
            raise InvalidValue(
                f"{what} is not supported by model '{self.model_name}' ({type(loaded.base).__name__} "
                f"has no {task} pipeline in diffusers).",
                param=param,
            )

    # -- running -----------------------------------------------------------------------------------

    def _text_kwargs(self, job: _JobBase, prompt: str, pipe: Any) -> dict[str, Any]:
        """prompt, negative_prompt and guidance_scale, refusing what this pipeline cannot honour."""
        params = inspect.signature(pipe.__call__).parameters
        kwargs: dict[str, Any] = {"prompt": prompt}
        guidance = job.guidance_scale if job.guidance_scale is not None else self.options.guidance[job.detail]
        if guidance is not None:
            if "guidance_scale" not in params:
                raise InvalidValue(
                    f"Model '{self.model_name}' takes no guidance_scale.", param="guidance_scale"
                )
            kwargs["guidance_scale"] = guidance
        if job.negative_prompt:
            if "negative_prompt" not in params:
                raise InvalidValue(
                    f"Model '{self.model_name}' takes no negative_prompt.", param="negative_prompt"
                )
            effective = guidance
            if effective is None and "guidance_scale" in params:
                default = params["guidance_scale"].default
                effective = default if isinstance(default, int | float) else None
            if effective is not None and effective <= 1.0:
                raise InvalidValue(
                    f"negative_prompt has no effect on model '{self.model_name}' at guidance_scale "
                    f"{effective} (classifier-free guidance is off at 1 or below); raise guidance_scale.",
                    param="negative_prompt",
                )
            kwargs["negative_prompt"] = job.negative_prompt
        return kwargs

    def _steps(self, job: _JobBase, strength: float | None) -> int:
        steps = job.num_inference_steps or self.options.steps[job.detail]
        if strength is None or int(steps * strength) >= 1:
            return steps
        # Image-to-image runs int(steps * strength) steps; zero would be a pipeline error.
        if job.num_inference_steps is not None:
            raise InvalidValue(
                f"num_inference_steps={steps} at strength {strength} runs no denoising step; "
                f"use at least {math.ceil(1 / strength)}.",
                param="num_inference_steps",
            )
        return math.ceil(1 / strength)

    def _view(self, loaded: _Loaded, task: Task) -> Any:
        """A pipeline object for one call: the loaded modules plus a scheduler of its own."""
        diffusers = _module("diffusers")
        scheduler = loaded.scheduler_cls.from_config(loaded.scheduler_config)
        if task == "inpaint" and loaded.inpaint_base is not None:
            base, auto_cls = loaded.inpaint_base, diffusers.AutoPipelineForInpainting
        else:
            base = loaded.base
            auto_cls = {
                "text2image": diffusers.AutoPipelineForText2Image,
                "image2image": diffusers.AutoPipelineForImage2Image,
                "inpaint": diffusers.AutoPipelineForInpainting,
            }[task]
        extra: dict[str, Any] = {}
        if getattr(base, "safety_checker", None) is None and "requires_safety_checker" in base.config:
            extra["requires_safety_checker"] = False  # or every call logs the no-checker warning again
        if _task_class(task, type(base).__name__) is None:
            # Not in the AutoPipeline tables (text-to-image only, checked before): the class's own
            # from_pipe. Its dtype default would convert the shared modules to float32.
            extra[_dtype_keyword()] = self.dtype
            view = type(base).from_pipe(base, scheduler=scheduler, **extra)
        else:
            view = auto_cls.from_pipe(base, scheduler=scheduler, **extra)
        view.set_progress_bar_config(disable=True)
        return view

    def _task(self, job: Job) -> Task:
        if isinstance(job, GenerateJob):
            return "text2image"
        if isinstance(job, EditJob) and job.mask is not None:
            return "inpaint"
        return "image2image"

    def _strength(self, job: Job) -> float | None:
        high = getattr(job, "input_fidelity", "low") == "high"
        task = self._task(job)
        if task == "text2image":
            return None
        if isinstance(job, VaryJob):
            return self.options.strength["vary"]
        if task == "inpaint":
            return self.options.strength["inpaint_high_fidelity" if high else "inpaint"]
        return self.options.strength["edit_high_fidelity" if high else "edit"]

    def _guidance(self, job: Job) -> float | None:
        return job.guidance_scale if job.guidance_scale is not None else self.options.guidance[job.detail]

    def _plan(self, job: Job, loaded: _Loaded, *, inputs: bool = True) -> _Plan:
        """What one job asks of a pipeline call, per image and shared, checked against the pipeline.
        `inputs=False` only checks (check() runs on the event loop: no image is resized there)."""
        task = self._task(job)
        strength = self._strength(job)
        plan = _Plan(job=job, task=task, strength=strength, steps=self._steps(job, strength))
        if isinstance(job, GenerateJob):
            plan.text = self._text_kwargs(
                job, job.prompt + STYLE_SUFFIX.get(job.style or "", ""), loaded.base
            )
            return plan
        if isinstance(job, VaryJob):
            assert job.image is not None  # check() refused a variation without one
            self._require_task(loaded, "image2image", "A variation", "model")
            plan.text = self._text_kwargs(job, "", loaded.base)
            if inputs:
                plan.image = _fit(job.image.convert("RGB"), job.width, job.height, Image.Resampling.LANCZOS)
            return plan
        assert isinstance(job, EditJob)
        if job.mask is None:
            self._require_task(loaded, "image2image", "An edit without a mask", "mask")
            plan.text = self._text_kwargs(job, job.prompt, loaded.base)
        else:
            if loaded.inpaint_base is None:
                self._require_task(loaded, "inpaint", "A masked edit", "mask")
            plan.text = self._text_kwargs(job, job.prompt, loaded.inpaint_base or loaded.base)
        if not inputs:
            return plan
        image = _fit(job.images[0].convert("RGB"), job.width, job.height, Image.Resampling.LANCZOS)
        plan.image = image
        if job.mask is None:
            return plan
        mask = _fit(job.mask.convert("L"), job.width, job.height, Image.Resampling.NEAREST)
        plan.mask = mask

        def compose(drawn: Image.Image) -> Image.Image:
            # The pipeline redraws the whole frame (its VAE round trip alters every pixel); composing
            # through the mask keeps every pixel outside it exactly as it came in, previews included.
            return Image.composite(drawn, image, mask)

        plan.compose = compose
        return plan

    def _call(self, loaded: _Loaded, chunk: list[_Entry]) -> list[Image.Image]:
        """One pipeline call for the images of `chunk` (one batch key: same task, size, steps...)."""
        torch = _module("torch")
        head = chunk[0].plan
        job = head.job
        view = self._view(loaded, head.task)
        params = inspect.signature(view.__call__).parameters
        call: dict[str, Any] = {
            "prompt": [e.plan.text["prompt"] for e in chunk],
            "num_inference_steps": head.steps,
            "num_images_per_prompt": 1,
            "output_type": "pil",
            "generator": [torch.Generator("cpu").manual_seed(e.plan.job.seed + e.image) for e in chunk],
        }
        if "guidance_scale" in head.text:
            call["guidance_scale"] = head.text["guidance_scale"]
        if "negative_prompt" in head.text:
            call["negative_prompt"] = [e.plan.text["negative_prompt"] for e in chunk]
        if head.strength is not None:
            call["strength"] = head.strength
        if head.task != "image2image":
            call.update(height=job.height, width=job.width)
        if head.image is not None:
            call["image"] = [e.plan.image for e in chunk]
        if head.mask is not None:
            call["mask_image"] = [e.plan.mask for e in chunk]
        if "callback_on_step_end" in params:
            call["callback_on_step_end"] = _StepCallback(
                chunk, PreviewDecoder(view, self.options.preview, job.width, job.height)
            )
        out = view(**call).images
        images = []
        for entry, image in zip(chunk, out, strict=True):
            if image.size != (job.width, job.height):
                # Some pipelines round sizes silently; limner never hands back another size.
                raise InvalidValue(
                    f"Model '{self.model_name}' produced {image.size[0]}x{image.size[1]} instead of "
                    f"{job.width}x{job.height}; configure the sizes it supports.",
                    param="size",
                )
            image = image.convert("RGB")
            images.append(entry.plan.compose(image) if entry.plan.compose is not None else image)
        return images


@dataclass
class _Plan:
    """One job, ready for a pipeline call: its task and shared settings, its text and inputs."""

    job: Job
    task: Task
    strength: float | None
    steps: int
    text: dict[str, Any] = field(default_factory=dict)  # prompt, negative_prompt, guidance_scale
    image: Image.Image | None = None
    mask: Image.Image | None = None
    compose: Callable[[Image.Image], Image.Image] | None = None


@dataclass
class _Entry:
    """One image of a batch: which job it belongs to, its index there, and that job's context."""

    job_index: int
    image: int
    ctx: JobContext
    plan: _Plan


class _StepCallback:
    """`callback_on_step_end`: cancellation at every step, previews at the steps chosen for them.

    The call holds images of several jobs: it is interrupted only once every one of them has gone,
    and each job gets the previews of its own images, split from the batch's latents."""

    def __init__(self, chunk: list[_Entry], decoder: PreviewDecoder) -> None:
        self._chunk = chunk
        self._decoder = decoder
        self._schedules: list[dict[int, int]] | None = None  # per entry: step index -> partial index

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if all(entry.ctx.cancelled for entry in self._chunk):
            # The flag makes diffusers skip the remaining steps in pipelines that check it; raising
            # as well stops right here, before the final VAE decode that the flag alone would still run.
            pipe._interrupt = True
            raise JobCancelled()
        total = int(getattr(pipe, "_num_timesteps", 0) or 0)
        for entry in self._chunk:
            entry.ctx.report_progress(step + 1, total)
        if self._schedules is None:
            self._schedules = [
                {s: k for k, s in enumerate(preview_steps(total, e.ctx.partial_images))}
                if e.ctx.partial_images > 0
                else {}
                for e in self._chunk
            ]
        wanted = [schedule.get(step) for schedule in self._schedules]
        latents = tensors.get("latents")
        if latents is None or all(w is None for w in wanted):
            return {}
        previews = self._decoder.decode(latents) or []
        for entry, partial_index, preview in zip(self._chunk, wanted, previews, strict=False):
            if partial_index is None or entry.ctx.cancelled:
                continue
            shown = entry.plan.compose(preview) if entry.plan.compose is not None else preview
            if entry.ctx.on_partial is not None and partial_index < entry.ctx.partial_images:
                # Not report_partial: it raises for a client that just left, which would stop the
                # whole call, other clients' images included.
                entry.ctx.on_partial(entry.image, partial_index, shown)
        return {}


def _fit(image: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    """The input at the output size (unchanged when it already is)."""
    return image if image.size == (width, height) else image.resize((width, height), resample)


__all__ = ["EXTRA_HINT", "DiffusersEngine", "DiffusersOptions", "create_engine", "parse_options"]
