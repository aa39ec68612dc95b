"""The diffusers engine: Hugging Face diffusers models of every current family behind the Engine protocol.

    create_engine("sd15", {"source": "/models/sd15", "device": "auto"}) -> DiffusersEngine

What it does, and the decisions behind it:

* **Capabilities before weights.** The pipeline class in `model_index.json` picks a row of the family
  table (diffusers_families), and the checkpoint's configs add the rest (VAE factor, distillation,
  RGBA VAE, authored sigmas). `check()` refuses from that `Capabilities` object alone, before loading
  anything, and the engine's info (so /v1/models) shows the same object.
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
  list, any width and height that are multiples of `size_multiple` up to `max_size`; by default the
  multiple the pipeline needs (the VAE's factor times the family's latent multiple: 64 for the SD
  UNets, 16 for the packed or patched transformers, 32 for SANA). Every pipeline is told the size.
* **Seeds.** Image i of a job uses `seed + i`, through its own CPU `torch.Generator` (CPU generators give
  the same noise on every device). With `max_batch = 1` images run one per pipeline call, so image i
  of a request is bit-identical to image 0 of a request with `seed + i`; `max_batch > 1` batches a
  request's images and those of concurrent requests with the same batch key (one prompt, input and
  generator per image; faster, but batched kernels may differ from unbatched ones by a level in a
  pixel).
* **Edits.** With a mask (255 = repaint): the inpaint pipeline, then the result is composed back onto
  the input through the mask, so every pixel outside the mask is bit-identical to the input (at the
  output size; identical to the upload when the sizes match), in partial previews as well. Without a
  mask: image-to-image with a strength that follows `input_fidelity`, one image. Reference-image
  editors (FLUX.2, Kontext, Qwen-Image-Edit, Qwen-Image 2.1) take all of an edit's images as
  references of one call instead, up to the model's limit, and have no strength.
* **Variations**: image-to-image from the input with an empty prompt at a moderate strength (`vary`),
  or, for reference editors, an edit with an empty instruction; one seed per image.
* **background=transparent** is honoured only by a model whose VAE decodes RGBA (Qwen-Image 2.1), with
  that alpha; elsewhere a 400 (param `background`): a matte guessed from the borders would claim an
  alpha channel the model never produced.
* **Guidance and negative prompts** mean one thing per family (CFG, a distilled guidance input, or
  Qwen's true CFG); what a model cannot honour (guidance on a step-distilled model, a negative prompt
  where guidance is off or the pipeline takes none) is a 400 naming the field, never silently dropped.
* **Long prompts** are cut by the pipeline to its text encoder's window (77 CLIP tokens for the SD
  family; diffusers logs what it dropped) rather than refused: OpenAI's prompt limits are far longer,
  and clients written for them send long prompts.
* **Partial images and cancellation** go through `callback_on_step_end`: previews at steps spread over
  the run (see diffusers_previews), and, when the job is cancelled, the pipeline's `_interrupt` flag is
  set and JobCancelled is raised from the callback, which also skips the final VAE decode.

Options (the model's table in the config, minus `engine`): source, inpaint_source, device, dtype,
scheduler, steps, guidance, sizes, size_multiple, max_size, max_pixels, strength, preview, max_batch,
load, max_images, true_cfg_scale, resolution_binning.
Unknown options are a ValueError, so typos in the config fail at start instead of being ignored.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from limner.engines import diffusers_families as families
from limner.engines.base import EngineBase, EngineInfo
from limner.engines.diffusers_options import DiffusersOptions, option_error, parse_options
from limner.engines.diffusers_previews import PreviewDecoder, preview_steps
from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext, JobSettings, VaryJob
from limner.errors import EngineUnavailable, InvalidValue, JobCancelled
from limner.extras import install_hint
from limner.rules import MAX_IMAGES_PER_EDIT

logger = logging.getLogger(__name__)

EXTRA_HINT = install_hint("diffusers")
#: dall-e-3's `style`, in OpenAI's own words for it, appended to the prompt (a text-to-image model's
#: only handle on look): vivid "hyper-real and dramatic", natural "more natural, less hyper-real".
STYLE_SUFFIX = {"vivid": ", vivid, hyper-real, dramatic", "natural": ", natural, realistic, understated"}

Task = Literal["text2image", "image2image", "inpaint", "reference"]

#: The smallest side a reference image is given to a pipeline with (FLUX.2 refuses smaller ones).
MIN_REFERENCE_SIDE = 64


class _NoEmptyFloat32Warning(logging.Filter):
    """`from_pipe` casts the shared modules to their own dtype on every call (a no-op), and diffusers
    warns each time about the modules that must stay in float32, even when there are none. Only that
    empty warning is dropped; one that names modules still reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


_QUIET_CASTS = _NoEmptyFloat32Warning()


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


def _resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise option_error("device", f"{device!r} asked for, but torch sees no CUDA device")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise option_error(
                "device", f"{device!r} asked for, but torch sees {torch.cuda.device_count()} device(s)"
            )
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise option_error("device", "'mps' asked for, but torch sees no MPS device")
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


def _local_folder(source: str) -> str | None:
    """The folder holding the checkpoint: the source itself, or a hub id's snapshot in the local
    cache (never a network call here); None when neither."""
    if os.path.isdir(source):
        return source
    try:
        cached = _module("huggingface_hub").try_to_load_from_cache(source, "model_index.json")
    except Exception:
        return None
    return os.path.dirname(cached) if isinstance(cached, str) else None


def _task_class(task: Task, pipeline_class_name: str) -> Any:
    """The diffusers pipeline class for `task` that pairs with a text-to-image class, or None."""
    if task == "reference":
        return None
    auto = _module("diffusers.pipelines.auto_pipeline")
    mapping = {
        "text2image": auto.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
        "image2image": auto.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        "inpaint": auto.AUTO_INPAINT_PIPELINES_MAPPING,
    }[task]
    found = auto._get_task_class(mapping, pipeline_class_name, throw_error_if_not_exist=False)
    # The image-to-image table lists reference editors (FLUX.2, Kontext, Qwen-Image-Edit) as their
    # own image-to-image pipeline: that is the reference task, not an image-to-image one.
    if task == "image2image" and found is not None and found.__name__ == pipeline_class_name:
        return None
    return found


def create_engine(model_name: str, options: Mapping[str, Any]) -> DiffusersEngine:
    """Validate the options, check that the extra and the checkpoint's own needs are installed, and
    return an engine (not loaded yet).

    Raises ValueError for a bad option (the message names it) and EngineUnavailable when a package is
    missing (the message names it). Imports torch and diffusers (seconds).
    """
    parsed = parse_options(options)
    _require_extra(model_name)
    for option in ("source", "inpaint_source"):
        _check_source(model_name, option, getattr(parsed, option))
    folder = _local_folder(parsed.source)
    if folder is not None:
        missing = families.missing_packages(folder, families.read_config(folder, "model_index.json"))
        if missing:
            raise EngineUnavailable(
                f"Model '{model_name}' needs packages that are not installed: {'; '.join(missing)}. "
                "Install them (pip install <package>) and start the server again."
            )
    torch, diffusers = _module("torch"), _module("diffusers")
    if parsed.scheduler is not None:
        cls = getattr(diffusers, parsed.scheduler, None)
        if not (inspect.isclass(cls) and issubclass(cls, diffusers.SchedulerMixin)):
            raise option_error("scheduler", f"{parsed.scheduler!r} is not a diffusers scheduler class")
    device = _resolve_device(torch, parsed.device)
    engine = DiffusersEngine(
        model_name, parsed, device=device, dtype=_resolve_dtype(torch, parsed.dtype, device)
    )
    need = engine.caps.required_multiple
    if parsed.size_multiple is not None and parsed.size_multiple % need:
        raise option_error(
            "size_multiple", f"must be a multiple of {need} for this pipeline, got {parsed.size_multiple}"
        )
    if engine.caps.pipeline != "unknown":
        _check_options_apply(options, engine.caps)
    bad = [f"{w}x{h}" for w, h in parsed.sizes or () if w % need or h % need]
    if bad:
        raise option_error("sizes", f"{', '.join(bad)}: this pipeline needs multiples of {need}")
    return engine


def _check_options_apply(options: Mapping[str, Any], caps: Capabilities) -> None:
    """Options this model's family would ignore are a ValueError at start-up, as typos are."""
    family = caps.family
    name = family.name
    if options.get("preview") == "linear" and family.latent_multiple != 8:
        # The linear projection is fitted to the SD VAEs' 4-channel latents.
        raise option_error(
            "preview", f"linear previews exist for SD and SDXL latents only; {name} has vae or auto"
        )
    if "true_cfg_scale" in options and family.negative != "true_cfg":
        raise option_error(
            "true_cfg_scale", f"only for FLUX.1-style negative prompts; {name} does not use it"
        )
    if "max_images" in options and not caps.references:
        raise option_error("max_images", f"only for reference-image editors; {name} edits one image")
    if options.get("resolution_binning"):
        cls = getattr(_module("diffusers"), caps.pipeline, None)
        if cls is None or "use_resolution_binning" not in inspect.signature(cls.__call__).parameters:
            raise option_error("resolution_binning", f"{caps.pipeline} has no resolution binning")
    unused = set() if caps.image2image else {"edit", "edit_high_fidelity", "vary"}
    unused |= set() if caps.mask else {"inpaint", "inpaint_high_fidelity"}
    for key in sorted(set(options.get("strength") or {}) & unused):
        raise option_error(
            f"strength.{key}", f"{name} ({caps.pipeline}) has no strength for this; it would be ignored"
        )


# --------------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class Capabilities:
    """What one model can do, from its family and configs: the engine refuses exactly what this
    says it cannot do, and its EngineInfo (so /v1/models) shows the same."""

    pipeline: str
    family: families.Family
    guidance: families.GuidanceKind
    #: The multiple the pipeline needs (VAE factor x latent multiple) and the one served.
    required_multiple: int
    size_multiple: int
    operations: frozenset[str]
    image2image: bool  # an unmasked edit or a variation with an image-to-image pipeline
    mask: bool
    max_images: int
    #: A masked edit takes the edit's other images as references (`image_reference`).
    mask_references: bool = False
    #: The VAE decodes RGBA: background=transparent is honoured with the model's own alpha.
    transparency: bool = False
    #: The sigmas the checkpoint's authors configured (Qwen-Image 2.1's `sample_sigmas`): their count
    #: is the default number of steps; a request's num_inference_steps replaces them.
    sample_sigmas: tuple[float, ...] = ()

    @property
    def references(self) -> bool:
        return self.family.edits == "reference"


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
        self._folder = _local_folder(options.source)
        self.caps = self._capabilities()
        self._info = self._make_info()

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
                # The real class is known now (a folder without model_index.json could not tell).
                self.caps = self._capabilities(type(self._loaded.base).__name__)
                self._info = self._make_info()

    def close(self) -> None:
        """Drop the pipelines (and the device memory they hold)."""
        with self._lock:
            self._loaded = None
        torch = _module("torch")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def check(self, job: Job) -> None:
        """Everything that can be refused before the pipeline runs, from the capabilities alone (no
        weights needed): operation, size, background, the images and mask of edits, input_fidelity,
        negative_prompt, guidance_scale and steps. No image is resized here (this runs on the event
        loop); the run resizes them once."""
        self._plan(job, inputs=False)

    def batch_key(self, job: Job) -> Hashable | None:
        """Jobs that one pipeline call can run together: the same task, size, steps, guidance,
        strength (the scheduler is fixed per model) and whether there is a negative prompt. Prompts,
        inputs and seeds differ per image. Reference edits run alone: their references are shared by
        every image of the call."""
        task = self._task(job)
        if task == "reference" or (isinstance(job, EditJob) and len(job.images) > 1):
            return None  # references are shared by every image of a call: one job per call
        strength = self._strength(job)
        return (
            task,
            job.width,
            job.height,
            self._steps(job, strength),
            self._guidance(job),
            strength,
            bool(job.negative_prompt),
        )

    # One job at a time, for direct use (tests, benchmarks): these load the model themselves. The server
    # calls run_batch only, once limner.scheduler.residency has loaded it.

    def generate(self, job: GenerateJob, ctx: JobContext) -> list[Image.Image]:
        self.load()
        return self.run_batch([job], [ctx])[0]

    def edit(self, job: EditJob, ctx: JobContext) -> list[Image.Image]:
        self.load()
        return self.run_batch([job], [ctx])[0]

    def vary(self, job: VaryJob, ctx: JobContext) -> list[Image.Image]:
        self.load()
        return self.run_batch([job], [ctx])[0]

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        """Every image of every job, in pipeline calls of up to `max_batch` images: one prompt, one
        input and one CPU generator (seed + i of its own job) per image, so each request gets exactly
        its own images. A job whose client left is dropped (an empty list); a call whose jobs have all
        left is interrupted; when every job has left, JobCancelled."""
        for job in jobs:
            self._plan(job, inputs=False)
        loaded = self._ready(next((c for c in contexts if not c.cancelled), contexts[0]))
        plans = [self._plan(job) for job in jobs]
        entries = [
            _Entry(index, image, ctx, plan)
            for index, (plan, ctx) in enumerate(zip(plans, contexts, strict=True))
            for image in range(plan.job.n)
        ]
        # Previews stream image after image: a job that wants them and has several images runs one
        # image per call (streams send one-image jobs, which batch freely).
        single = any(c.partial_images > 0 and p.job.n > 1 for p, c in zip(plans, contexts, strict=True))
        size = 1 if single else self._info.max_batch  # 1 for families that refuse batches
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
        logging.getLogger("diffusers.models.modeling_utils").addFilter(_QUIET_CASTS)  # once: a set
        base = self._from_pretrained(diffusers, self.options.source, diffusers.AutoPipelineForText2Image)
        scheduler_cls = type(base.scheduler)
        if self.options.scheduler is not None:
            scheduler_cls = getattr(diffusers, self.options.scheduler)
        # from_config keeps the model's beta schedule and prediction type while changing the sampler.
        scheduler_config = scheduler_cls.from_config(base.scheduler.config).config
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
                # A pipeline outside the AutoPipeline tables (an edit-only checkpoint, a newer
                # family): load it as it is; its capabilities say what it can do.
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

    def _ready(self, ctx: JobContext) -> _Loaded:
        ctx.check()
        if self._loaded is None:  # the server's residency loads first; direct use goes through generate...
            raise EngineUnavailable(f"Model '{self.model_name}' is not loaded on this server.")
        return self._loaded

    # -- capabilities and checks -------------------------------------------------------------------

    def _capabilities(self, class_name: str | None = None) -> Capabilities:
        """From the checkpoint's configs; `class_name` is the loaded pipeline's, once there is one
        (else the one model_index.json names)."""
        folder = self._folder
        index = families.read_config(folder, "model_index.json") if folder else {}
        if class_name is None and isinstance(index.get("_class_name"), str):
            class_name = index["_class_name"]
        family = families.family_for(class_name)
        transformer = families.read_config(folder, "transformer/config.json") if folder else {}
        vae = families.read_config(folder, "vae/config.json") if folder else {}
        required = families.vae_scale_factor(vae) * family.latent_multiple
        opts = self.options
        operations = {"generate"} if family.generates else set()
        image2image = mask = mask_references = False
        max_images = 1
        if class_name is None:  # nothing to read yet (load() tells): assume the SD family's tasks
            image2image = mask = True
        elif family.edits == "img2img":
            try:
                image2image = _task_class("image2image", class_name) is not None
                mask = opts.inpaint_source is not None or _task_class("inpaint", class_name) is not None
            except (ImportError, AttributeError):  # diffusers moved its tables: assume everything
                image2image = mask = True
        elif family.edits == "reference":
            image2image = False
            inpaint = _task_class("inpaint", class_name)
            if family.inpaint is not None:
                inpaint = getattr(_module("diffusers"), family.inpaint, None)
            mask = family.masks and inpaint is not None
            mask_references = mask and "image_reference" in inspect.signature(inpaint.__call__).parameters
            limit = family.max_references or MAX_IMAGES_PER_EDIT
            max_images = min(limit, opts.max_images or limit)
        if image2image or family.edits == "reference":
            operations |= {"edit", "vary"}
        elif mask:
            operations.add("edit")
        return Capabilities(
            pipeline=class_name or "unknown",
            family=family,
            guidance=families.resolve_guidance(family, index, transformer),
            required_multiple=required,
            size_multiple=opts.size_multiple or required,
            operations=frozenset(operations),
            image2image=image2image,
            mask=mask,
            max_images=max_images,
            mask_references=mask_references,
            transparency=families.has_alpha(vae),
            sample_sigmas=families.sample_sigmas(index),
        )

    def _make_info(self) -> EngineInfo:
        opts, caps = self.options, self.caps
        sizes = opts.sizes
        return EngineInfo(
            name=self.model_name,
            operations=caps.operations,
            sizes=sizes,
            size_multiple=caps.size_multiple if sizes is None else caps.required_multiple,
            max_pixels=max(w * h for w, h in sizes) if sizes else self._max_pixels,
            max_batch=opts.max_batch if caps.family.batches else 1,
            max_images=caps.max_images,
            mask=caps.mask,
            input_fidelity=not caps.references,
            negative_prompt=caps.family.negative != "none",
            guidance_scale=caps.guidance != "none",
            transparency=caps.transparency,
            extras={
                "engine": "diffusers",
                "source": opts.source,
                "pipeline": caps.pipeline,
                "family": caps.family.name,
                "edits": "reference images"
                if caps.references
                else "image-to-image"
                if caps.image2image
                else "none",
                "guidance": caps.guidance,
                "background": "transparent" if caps.transparency else "opaque",
                "max_size": str(opts.max_size),
            },
        )

    def _check_job(self, job: Job) -> None:
        operation = (
            "generate" if isinstance(job, GenerateJob) else "edit" if isinstance(job, EditJob) else "vary"
        )
        caps = self.caps
        if operation not in caps.operations:
            does = " and ".join(sorted(caps.operations)) or "nothing"
            raise InvalidValue(
                f"Model '{self.model_name}' ({caps.pipeline}) does not support {operation}; it does {does}.",
                param="model",
            )
        if job.transparent and not caps.transparency:
            raise InvalidValue(
                f"Model '{self.model_name}' draws opaque images only: its VAE decodes RGB, and "
                "limner does not fake an alpha channel. Use background 'opaque' or 'auto'.",
                param="background",
            )
        self._check_size(job.width, job.height)
        if job.n < 1:
            raise InvalidValue(f"n must be at least 1, got {job.n}.", param="n")
        if isinstance(job, VaryJob) and job.image is None:
            raise InvalidValue("A variation needs an image.", param="image")
        if not isinstance(job, EditJob):
            return
        if not job.images:
            raise InvalidValue("An edit needs an image.", param="image")
        if len(job.images) > caps.max_images:
            what = (
                f"takes at most {caps.max_images} reference images"
                if caps.references
                else "edits one image and takes no reference images"
            )
            raise InvalidValue(
                f"Model '{self.model_name}' {what}; {len(job.images)} were sent.", param="image"
            )
        if caps.references and job.input_fidelity == "high":
            raise InvalidValue(
                f"Model '{self.model_name}' ({caps.pipeline}) edits from reference images, with no "
                "strength to keep more of them; send input_fidelity 'low' or leave it out.",
                param="input_fidelity",
            )
        if job.mask is not None:
            if not caps.mask:
                raise InvalidValue(
                    f"Model '{self.model_name}' ({caps.pipeline}) cannot edit inside a mask; send the "
                    "edit without one.",
                    param="mask",
                )
            if len(job.images) > 1 and not caps.mask_references:
                raise InvalidValue(
                    f"Model '{self.model_name}' ({caps.pipeline}) edits one image inside a mask and takes "
                    f"no reference images with it; {len(job.images)} were sent.",
                    param="image",
                )
            source = job.images[0]
            if job.mask.size != source.size:
                raise InvalidValue(
                    f"The mask is {job.mask.size[0]}x{job.mask.size[1]} but the image is "
                    f"{source.size[0]}x{source.size[1]}; they must be the same size.",
                    param="mask",
                )
            return
        if not caps.references and not caps.image2image:
            raise InvalidValue(
                f"Model '{self.model_name}' ({caps.pipeline}) edits inside a mask only; send a mask.",
                param="mask",
            )

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
        m = self.caps.size_multiple
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

    # -- running -----------------------------------------------------------------------------------

    def _call_defaults(self) -> dict[str, Any]:
        """The defaults of the text-to-image call, from the class (no weights needed)."""
        cls = getattr(_module("diffusers"), self.caps.pipeline, None)
        if cls is None:
            return {}
        return {
            name: p.default
            for name, p in inspect.signature(cls.__call__).parameters.items()
            if isinstance(p.default, int | float) and not isinstance(p.default, bool)
        }

    def _text_kwargs(self, job: JobSettings, prompt: str) -> dict[str, Any]:
        """prompt, negative_prompt and the guidance arguments, as this family takes them; refuses
        what it cannot honour."""
        caps = self.caps
        family = caps.family
        kwargs: dict[str, Any] = {"prompt": prompt}
        guidance = self._guidance(job)
        argument = "true_cfg_scale" if caps.guidance == "true_cfg" else "guidance_scale"
        if guidance is not None:
            if caps.guidance == "none":
                raise InvalidValue(
                    f"Model '{self.model_name}' ({caps.pipeline}) is distilled to run without guidance "
                    "and takes no guidance_scale.",
                    param="guidance_scale",
                )
            kwargs[argument] = guidance
        if not job.negative_prompt:
            if family.default_negative is not None:
                kwargs["negative_prompt"] = family.default_negative
            return kwargs
        if family.negative == "none":
            raise InvalidValue(
                f"Model '{self.model_name}' ({caps.pipeline}) takes no negative_prompt.",
                param="negative_prompt",
            )
        if family.negative == "true_cfg":
            # The guidance input of a guidance-distilled model is no CFG; the negative prompt gets a
            # second pass of its own at the configured true-CFG scale.
            kwargs["true_cfg_scale"] = self.options.true_cfg_scale
        else:
            effective = guidance if guidance is not None else self._call_defaults().get(argument)
            if effective is None or effective <= 1.0:
                raise InvalidValue(
                    f"negative_prompt has no effect on model '{self.model_name}' at guidance_scale "
                    f"{effective} (classifier-free guidance is off at 1 or below); raise guidance_scale.",
                    param="negative_prompt",
                )
        kwargs["negative_prompt"] = job.negative_prompt
        return kwargs

    def _steps(self, job: JobSettings, strength: float | None) -> int:
        authored = len(self.caps.sample_sigmas) if job.num_inference_steps is None else 0
        steps = job.num_inference_steps or authored or self.options.steps[job.detail]
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
        elif task == "inpaint" and self.caps.family.inpaint is not None:
            # A family whose inpainting pipeline the AutoPipeline tables do not list (Kontext).
            cls = getattr(diffusers, self.caps.family.inpaint)
            view = cls.from_pipe(loaded.base, scheduler=scheduler, **{_dtype_keyword(): self.dtype})
            view.set_progress_bar_config(disable=True)
            return view
        else:
            base = loaded.base
            auto_cls = {
                "text2image": diffusers.AutoPipelineForText2Image,
                "image2image": diffusers.AutoPipelineForImage2Image,
                "inpaint": diffusers.AutoPipelineForInpainting,
                "reference": None,
            }[task]
        extra: dict[str, Any] = {}
        if getattr(base, "safety_checker", None) is None and "requires_safety_checker" in base.config:
            extra["requires_safety_checker"] = False  # or every call logs the no-checker warning again
        if auto_cls is None or _task_class(task, type(base).__name__) is None:
            # The class itself (reference editors; pipelines outside the AutoPipeline tables, which
            # only generate). Its dtype default would convert the shared modules to float32.
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
        return "reference" if self.caps.references else "image2image"

    def _strength(self, job: Job) -> float | None:
        high = getattr(job, "input_fidelity", "low") == "high"
        task = self._task(job)
        if task in ("text2image", "reference"):
            return None
        if isinstance(job, VaryJob):
            return self.options.strength["vary"]
        if task == "inpaint":
            return self.options.strength["inpaint_high_fidelity" if high else "inpaint"]
        return self.options.strength["edit_high_fidelity" if high else "edit"]

    def _guidance(self, job: Job | JobSettings) -> float | None:
        return job.guidance_scale if job.guidance_scale is not None else self.options.guidance[job.detail]

    def _plan(self, job: Job, *, inputs: bool = True) -> _Plan:
        """What one job asks of a pipeline call, per image and shared, checked against the
        capabilities. `inputs=False` only checks (no image is resized)."""
        self._check_job(job)
        task = self._task(job)
        strength = self._strength(job)
        plan = _Plan(job=job, task=task, strength=strength, steps=self._steps(job, strength))
        if self.caps.transparency and not job.transparent:
            plan.finish = _flatten  # an RGBA model asked for an opaque picture
        if isinstance(job, GenerateJob):
            plan.text = self._text_kwargs(job, job.prompt + STYLE_SUFFIX.get(job.style or "", ""))
            return plan
        if isinstance(job, VaryJob):
            assert job.image is not None  # _check_job refused a variation without one
            # A variation is an edit with an empty instruction: image-to-image from the input, or
            # the input as the only reference image.
            plan.text = self._text_kwargs(job, "")
            if inputs:
                plan.image = self._input(job.image, job, task, self.caps.transparency)
                plan.references = [plan.image] if task == "reference" else []
            return plan
        assert isinstance(job, EditJob)
        plan.text = self._text_kwargs(job, job.prompt)
        if not inputs:
            return plan
        if task == "reference":
            plan.references = [self._input(image, job, task, self.caps.transparency) for image in job.images]
            return plan
        image = self._input(job.images[0], job, task)
        plan.image = image
        if job.mask is None:
            return plan
        mask = _fit(job.mask.convert("L"), job.width, job.height, Image.Resampling.NEAREST)
        plan.mask = mask
        # The other images guide what is drawn in the mask (FLUX.2-klein's `image_reference`).
        plan.references = [self._input(i, job, "reference", self.caps.transparency) for i in job.images[1:]]

        def compose(drawn: Image.Image) -> Image.Image:
            # The pipeline redraws the whole frame (its VAE round trip alters every pixel); composing
            # through the mask keeps every pixel outside it exactly as it came in, previews included.
            return Image.composite(drawn, image, mask)

        plan.compose = compose
        return plan

    @staticmethod
    def _input(image: Image.Image, job: Job, task: Task, alpha: bool = False) -> Image.Image:
        """An input at the output size; a reference image within the output's area, its shape kept
        (the pipeline reads it at its own size, so a huge upload would cost a huge sequence). An RGBA
        model's references keep their alpha: its VAE reads all four channels."""
        rgb = image.convert("RGBA" if alpha and task == "reference" else "RGB")
        if task != "reference":
            return _fit(rgb, job.width, job.height, Image.Resampling.LANCZOS)
        # Within the output's area, and no side under MIN_REFERENCE_SIDE (FLUX.2 refuses smaller).
        scale = min(1.0, math.sqrt(job.width * job.height / (rgb.width * rgb.height)))
        scale = max(scale, MIN_REFERENCE_SIDE / min(rgb.size))
        if scale == 1.0:
            return rgb
        size = (
            max(MIN_REFERENCE_SIDE, round(rgb.width * scale)),
            max(MIN_REFERENCE_SIDE, round(rgb.height * scale)),
        )
        return rgb.resize(size, Image.Resampling.LANCZOS)

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
        call.update({k: v for k, v in head.text.items() if k not in ("prompt", "negative_prompt")})
        if "negative_prompt" in head.text:
            call["negative_prompt"] = [e.plan.text["negative_prompt"] for e in chunk]
        if head.strength is not None:
            call["strength"] = head.strength
        if self.caps.guidance == "none" and "guidance_scale" in params:
            # A step-distilled model: guidance off, rather than a default that it logs it ignores.
            call["guidance_scale"] = 1.0
        # Every pipeline that takes a size is told it: image-to-image and reference pipelines
        # otherwise fall back to the input's size or their native one.
        for name, value in (("height", job.height), ("width", job.width)):
            if name in params:
                call[name] = value
        if "max_area" in params:  # Kontext scales the size to this area (1024x1024 by default)
            call["max_area"] = job.width * job.height
        if "_auto_resize" in params:  # and its reference to a trained resolution, unless told not to
            call["_auto_resize"] = False
        if self.caps.sample_sigmas and job.num_inference_steps is not None and "sigmas" in params:
            # The configured sigmas would win over num_inference_steps; the request's count gets the
            # pipeline's own schedule for a count instead.
            steps = head.steps
            call["sigmas"] = [1.0 - i * (1.0 - 1.0 / steps) / max(1, steps - 1) for i in range(steps)]
        if "output_resolution" in params:  # Qwen-Image 2.1 reads references at this area
            call["output_resolution"] = math.isqrt(job.width * job.height)
        if "use_resolution_binning" in params:
            call["use_resolution_binning"] = self.options.resolution_binning
        if head.task == "reference":
            refs = head.references
            call["image"] = refs if self.caps.max_images > 1 else refs[0]
        elif head.image is not None:
            call["image"] = [e.plan.image for e in chunk]
        if head.mask is not None:
            call["mask_image"] = [e.plan.mask for e in chunk]
            if head.references:
                call["image_reference"] = head.references
        if "callback_on_step_end" in params:
            decoder = PreviewDecoder(
                view, self.options.preview, job.width, job.height, self.caps.family.preview
            )
            call["callback_on_step_end"] = _StepCallback(chunk, decoder)
        try:
            out = view(**call).images
        except ValueError as exc:
            # A combination the capabilities did not foresee: the pipeline refused its arguments.
            # The request gets a 400 that says so; the log has the pipeline's words.
            logger.warning("model '%s': the pipeline refused a call: %s", self.model_name, exc)
            raise InvalidValue(
                f"Model '{self.model_name}' ({self.caps.pipeline}) cannot run this request; the server "
                "log says why.",
                param=None,
            ) from exc
        images = []
        for entry, image in zip(chunk, out, strict=True):
            if image.size != (job.width, job.height):
                # Some pipelines round sizes silently; limner never hands back another size.
                raise InvalidValue(
                    f"Model '{self.model_name}' produced {image.size[0]}x{image.size[1]} instead of "
                    f"{job.width}x{job.height}; configure the sizes it supports.",
                    param="size",
                )
            image = entry.plan.finish(image.convert("RGBA" if self.caps.transparency else "RGB"))
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
    references: list[Image.Image] = field(default_factory=list)  # a reference edit's images
    #: Applied to every image and preview: flattens an RGBA model's output for an opaque request.
    finish: Callable[[Image.Image], Image.Image] = field(default=lambda image: image)


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
            shown = entry.plan.finish(preview)
            shown = entry.plan.compose(shown) if entry.plan.compose is not None else shown
            if entry.ctx.on_partial is not None and partial_index < entry.ctx.partial_images:
                # Not report_partial: it raises for a client that just left, which would stop the
                # whole call, other clients' images included.
                entry.ctx.on_partial(entry.image, partial_index, shown)
        return {}


def _flatten(image: Image.Image) -> Image.Image:
    """An RGBA picture over white, as an opaque one (what a viewer shows for it)."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def _fit(image: Image.Image, width: int, height: int, resample: Image.Resampling) -> Image.Image:
    """The input at the output size (unchanged when it already is)."""
    return image if image.size == (width, height) else image.resize((width, height), resample)


__all__ = ["EXTRA_HINT", "DiffusersEngine", "DiffusersOptions", "create_engine", "parse_options"]
