"""The diffusers engine: Hugging Face diffusers models of every current family behind the Engine protocol.

    create_engine("sd15", {"source": "/models/sd15", "device": "auto"}) -> DiffusersEngine

What it does, and the decisions behind it:

* **Capabilities before weights.** The pipeline class in `model_index.json` picks a row of the family
  table (families.py), and the checkpoint's configs add the rest (VAE factor, distillation,
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
  the run (see previews.py), and, when the job is cancelled, the pipeline's `_interrupt` flag is
  set and JobCancelled is raised from the callback, which also skips the final VAE decode.

* **Memory and adapters.** `memory()` says what the model takes (estimated from its safetensors
  headers, measured once loaded; sizing.py) for limner.scheduler.residency's budget; LoRA adapters are
  checked and switched by adapters.py, between calls only, one adapter set per call.
* **Speed levers**, each refused at start-up where it cannot apply: compiling.py, attention.py,
  step_cache.py, precision.py (quantize, offload), prompt_cache.py, fitted_preview.py.

Options (the model's table in the config, minus `engine`): source, inpaint_source, device, dtype,
scheduler, steps, guidance, sizes, size_multiple, max_size, max_pixels, strength, preview, max_batch,
load, max_images, true_cfg_scale, resolution_binning, loras, lora_dir, max_loras, max_loaded_loras,
attention, prompt_cache_mb, step_cache, quantize, offload, compile.
Unknown options are a ValueError, so typos in the config fail at start instead of being ignored.
"""

from __future__ import annotations

import gc
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from PIL import Image

from limner.engines.base import EngineBase, EngineMemory
from limner.engines.diffusers import families
from limner.engines.diffusers.adapters import AdapterCatalogue, AdapterSet, AdapterSlots
from limner.engines.diffusers.attention import apply_attention, check_attention
from limner.engines.diffusers.calls import Calls, _Entry
from limner.engines.diffusers.capabilities import Checks, _check_options_apply
from limner.engines.diffusers.compiling import check_compile, compile_denoiser, warm_up_sizes
from limner.engines.diffusers.fitted_preview import PreviewFit, fit_preview
from limner.engines.diffusers.hotswap import HotswapSlots, slot_layout
from limner.engines.diffusers.loading import (
    Loader,
    _check_source,
    _Loaded,
    _local_folder,
    _module,
    _require_extra,
    _resolve_device,
    _resolve_dtype,
)
from limner.engines.diffusers.model import Model, ModelView
from limner.engines.diffusers.options import DiffusersOptions, option_error, parse_options
from limner.engines.diffusers.precision import check_offload, check_quantize
from limner.engines.diffusers.prompt_cache import PromptCache
from limner.engines.diffusers.sizing import estimate_folder, measure
from limner.engines.diffusers.step_cache import check_step_cache
from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext, VaryJob
from limner.errors import EngineUnavailable, InvalidValue, JobCancelled

logger = logging.getLogger("limner.engines.diffusers")


def _modules(loaded: _Loaded) -> list[Any]:
    torch = _module("torch")
    pipes = [loaded.base] + ([loaded.inpaint_base] if loaded.inpaint_base is not None else [])
    return [c for p in pipes for c in p.components.values() if isinstance(c, torch.nn.Module)]


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
    elif parsed.loras or parsed.lora_dir:
        raise option_error("loras", "the checkpoint's pipeline class is unknown: no adapters can be checked")
    check_compile(parsed.compile, parsed)
    if parsed.lora_rank is not None and not parsed.compile:
        raise option_error("lora_rank", "shapes a compiled model's adapter slots: it needs compile = true")
    if parsed.compile and "max_loaded_loras" in options:
        raise option_error(
            "max_loaded_loras", "a compiled model holds max_loras adapters, in slots made before compiling"
        )
    engine.attach_adapters()
    if parsed.attention is not None:
        engine.attention = check_attention(model_name, parsed.attention, engine._folder, device)
    if parsed.quantize is not None:
        engine.model.quantize = check_quantize(model_name, parsed.quantize, engine._folder)
    if parsed.offload is not None:
        engine.model.offload = check_offload(model_name, parsed.offload, device)
    if parsed.compile and parsed.offload is not None:
        raise option_error(
            "compile", "cannot be combined with offload (weights that move defeat the compiled graph)"
        )
    if parsed.step_cache is not None:
        engine.model.step_cache = check_step_cache(
            model_name, parsed.step_cache, engine.caps.pipeline, engine._folder
        )
    bad = [f"{w}x{h}" for w, h in parsed.sizes or () if w % need or h % need]
    if bad:
        raise option_error("sizes", f"{', '.join(bad)}: this pipeline needs multiples of {need}")
    return engine


class DiffusersEngine(EngineBase, ModelView):
    """Draws with one diffusers model. Synchronous; the scheduler runs `concurrency` batches at once.
    Its model (name, options, capabilities, info) it reads as its parts do, through ModelView."""

    def __init__(self, model_name: str, options: DiffusersOptions, *, device: str, dtype: Any) -> None:
        super().__init__(Model(model_name, options, device, dtype, _local_folder(options.source)))
        self.loader = Loader(self.model)
        self.checks = Checks(self.model)
        self.calls = Calls(self.model, self.checks)
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._measured: int | None = None
        self._allocated_bytes: int | None = None
        self.model.caps = self.checks.capabilities()
        self.model.info = self.checks.make_info()
        self._estimated = sum(
            estimate_folder(folder, dtype)
            for source in (options.source, options.inpaint_source)
            if source is not None and (folder := _local_folder(source)) is not None
        )
        self.catalogue: AdapterCatalogue | None = None
        self.slots: AdapterSlots | None = None
        #: The denoiser's attention backend (a diffusers AttentionBackendName), None: the default.
        self.attention: Any = None
        self.prompt_cache = (
            PromptCache(options.prompt_cache_mb * 2**20, context=self._text_adapters)
            if options.prompt_cache_mb
            else None
        )

    def attach_adapters(self) -> None:
        """The model's adapters, checked against its checkpoint (ValueError naming one that does not
        fit): once the pipeline class is known."""
        if not self.info.adapters:
            return
        cls = getattr(_module("diffusers"), self.caps.pipeline)
        itemsize = int(_module("torch").empty(0, dtype=self.dtype).element_size())
        self.catalogue = AdapterCatalogue(self.model_name, self.options, cls, self._folder, itemsize)
        if self.options.compile:
            # Adapters under a compiled denoiser: fixed slots, adapters swapped in (hotswap.py).
            denoiser = next(m for m in cls._lora_loadable_modules if not m.startswith("text_encoder"))
            layout = slot_layout(self.catalogue, denoiser)
            self.catalogue.fits_slots = layout.check
            self.slots = HotswapSlots(self.catalogue, layout, itemsize)
            return
        self.slots = AdapterSlots(
            self.catalogue, max_loaded=self.options.max_loaded_loras, reserve=self.catalogue.reserve()
        )

    # -- Engine protocol ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def load_at_startup(self) -> bool:
        """True when the config says `load = "startup"` or `"pinned"`: loaded before serving."""
        return self.options.load_at_startup

    @property
    def pinned(self) -> bool:
        return self.options.load == "pinned"

    def memory(self) -> EngineMemory:
        return EngineMemory(
            device=self.device,
            estimated=self._estimated,
            measured=self._measured,
            # Adapters and the prompt cache are loaded beside the weights, up to these bytes.
            reserved=(self.slots.reserve if self.slots is not None else 0)
            + (self.prompt_cache.max_bytes if self.prompt_cache is not None else 0),
            allocated=self._allocated_bytes if self._measured is not None else None,
        )

    def adapters(self) -> list[str]:
        return self.catalogue.names() if self.catalogue is not None else []

    def counters(self) -> dict[str, float]:
        return self.prompt_cache.counters() if self.prompt_cache is not None else {}

    def _text_adapters(self) -> AdapterSet:
        return self.slots.on_text_encoders() if self.slots is not None else ()

    def load(self) -> None:
        if self._loaded is not None:
            return
        with self._lock:
            if self._loaded is None:
                allocated_before = self._allocated()
                loaded = self.loader.load_pipeline()
                if self.attention is not None and not apply_attention(loaded.base, self.attention):
                    raise EngineUnavailable(
                        f"Model '{self.model_name}': attention '{self.attention.value}' reached no attention "
                        "layer of its denoiser."
                    )
                pipes = [loaded.base] + ([loaded.inpaint_base] if loaded.inpaint_base is not None else [])
                self._measured = measure(pipes, self.device)
                if allocated_before is not None:
                    self._allocated_bytes = (self._allocated() or 0) - allocated_before
                if (
                    self.options.preview in ("auto", "fitted")
                    and getattr(loaded.base, "vae", None) is not None
                ):
                    self.model.preview_fit = self._fit_preview(loaded)
                if self.options.compile:
                    try:
                        if isinstance(self.slots, HotswapSlots):
                            self.slots.prepare(pipes)
                        how = compile_denoiser(loaded.base, dynamic=self.options.sizes is None)
                        self._warm_up(loaded, how)
                    except Exception as exc:  # no compiler, an unsupported graph: the log has it
                        logger.error("model '%s' could not be compiled: %s", self.model_name, exc)
                        raise EngineUnavailable(
                            f"Model '{self.model_name}' could not be compiled on this server; the server "
                            "log says why."
                        ) from exc
                if self.prompt_cache is not None:
                    self.prompt_cache.clear()
                    for index, pipe in enumerate(pipes):
                        self.prompt_cache.install(pipe, prefix=f"{index}:")
                self._loaded = loaded
                # The real class is known now (a folder without model_index.json could not tell).
                self.model.caps = self.checks.capabilities(type(self._loaded.base).__name__)
                self.model.info = self.checks.make_info()

    def _allocated(self) -> int | None:
        """CUDA's allocator figure for this model's device; None on other devices."""
        if not self.device.startswith("cuda"):
            return None
        return int(_module("torch").cuda.memory_allocated(self.device))

    def _fit_preview(self, loaded: _Loaded) -> PreviewFit | None:
        """The fitted preview map (auto keeps SD's and SDXL's community projection: no fit needed)."""
        layout = self.caps.family.preview
        channels = getattr(loaded.base.vae.config, "latent_channels", None)
        if self.options.preview == "auto" and layout == "spatial" and channels == 4:
            return None
        try:
            fit = fit_preview(loaded.base, layout)
        except Exception as exc:  # a VAE this fit does not know: the exact VAE preview instead
            logger.warning(
                "model %r: no fitted preview (%s); previews decode with the VAE", self.model_name, exc
            )
            return None
        logger.info("model %r: preview map fitted on its VAE (rms error %.3f)", self.model_name, fit.error)
        return fit

    def _warm_up(self, loaded: _Loaded, how: str) -> None:
        """One step at each configured size and batch size: torch.compile compiles here, not in the
        first request (with the persistent cache, a restart reads what it compiled before)."""
        if "generate" not in self.caps.operations:
            logger.warning(
                "model %r: compiled (%s) without a warm-up: it does not generate", self.model_name, how
            )
            return
        started = time.perf_counter()
        self._loaded = loaded  # run_batch runs on the loaded pipelines
        try:
            for width, height in warm_up_sizes(self.options, self.info.size_multiple):
                for count in sorted({1, self.info.max_batch}):
                    job = GenerateJob(
                        prompt="warm-up", width=width, height=height, n=count, num_inference_steps=1
                    )
                    self.run_batch([job], [JobContext()])
        finally:
            self._loaded = None
        logger.info(
            "model %r: denoiser compiled (%s) and warmed up in %.1f s",
            self.model_name,
            how,
            time.perf_counter() - started,
        )

    def close(self) -> None:
        """Drop the pipelines (and the device memory they hold)."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
            self._measured = None
            if self.slots is not None:
                self.slots.reset()
        modules = [] if loaded is None else [weakref.ref(m) for m in _modules(loaded)]
        del loaded
        # Dropping the pipelines frees their weights by reference counting; a cycle that still holds a
        # module (a hook, a callback) is broken by a collection, paid only then (~0.25 s with torch
        # imported: a model swap must not pay it for nothing).
        if any(ref() is not None for ref in modules):
            gc.collect()
        torch = _module("torch")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def check(self, job: Job) -> None:
        """Everything that can be refused before the pipeline runs, from the capabilities alone (no
        weights needed): operation, size, background, the images and mask of edits, input_fidelity,
        negative_prompt, guidance_scale and steps. No image is resized here (this runs on the event
        loop); the run resizes them once."""
        self.calls.plan(job, inputs=False)
        self._adapter_set(job)

    def _adapter_set(self, job: Job) -> AdapterSet:
        """The job's adapters, resolved (a 400 naming `lora` for an unknown or unfitting one)."""
        if self.catalogue is None:
            if job.loras:
                raise InvalidValue(f"Model '{self.model_name}' takes no LoRA adapters.", param="lora")
            return ()
        return self.catalogue.resolve(job.loras)

    def batch_key(self, job: Job) -> Hashable | None:
        """Jobs that one pipeline call can run together: the same task, size, steps, guidance,
        strength (the scheduler is fixed per model) and whether there is a negative prompt. Prompts,
        inputs and seeds differ per image. Reference edits run alone: their references are shared by
        every image of the call."""
        task = self.calls.task(job)
        if task == "reference" or (isinstance(job, EditJob) and len(job.images) > 1):
            return None  # references are shared by every image of a call: one job per call
        strength = self.calls.strength(job)
        return (
            task,
            job.width,
            job.height,
            self.calls.steps(job, strength),
            self.calls.guidance(job),
            strength,
            bool(job.negative_prompt),
            # PEFT applies every active adapter to every row: one adapter set per call.
            self._adapter_set(job),
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
            self.calls.plan(job, inputs=False)
        loaded = self._ready(next((c for c in contexts if not c.cancelled), contexts[0]))
        plans = [self.calls.plan(job) for job in jobs]
        entries = [
            _Entry(index, image, ctx, plan)
            for index, (plan, ctx) in enumerate(zip(plans, contexts, strict=True))
            for image in range(plan.job.n)
        ]
        # Previews stream image after image: a job that wants them and has several images runs one
        # image per call (streams send one-image jobs, which batch freely).
        single = any(c.partial_images > 0 and p.job.n > 1 for p, c in zip(plans, contexts, strict=True))
        size = 1 if single else self.info.max_batch  # 1 for families that refuse batches
        sets = [self._adapter_set(job) for job in jobs]
        # Calls of one adapter set each (a batch from the scheduler has one; direct callers may mix).
        runs = [
            (wanted, [e for e in entries if sets[e.job_index] == wanted]) for wanted in dict.fromkeys(sets)
        ]
        calls = [(wanted, group[i : i + size]) for wanted, group in runs for i in range(0, len(group), size)]
        pipes = [loaded.base] + ([loaded.inpaint_base] if loaded.inpaint_base is not None else [])
        results: list[list[Image.Image]] = [[] for _ in jobs]
        for wanted, members in calls:
            chunk = [e for e in members if not e.ctx.cancelled]
            if not chunk:
                continue
            try:
                if self.slots is None:
                    images = self.calls.call(loaded, chunk)
                else:
                    with self.slots.applied(pipes, wanted):
                        images = self.calls.call(loaded, chunk)
            except JobCancelled:
                continue  # everyone in this call left; later calls may still have someone waiting
            for entry, image in zip(chunk, images, strict=True):
                if not entry.ctx.cancelled:
                    results[entry.job_index].append(image)
        if all(c.cancelled for c in contexts):
            raise JobCancelled()
        return results

    def _ready(self, ctx: JobContext) -> _Loaded:
        ctx.check()
        if self._loaded is None:  # the server's residency loads first; direct use goes through generate...
            raise EngineUnavailable(f"Model '{self.model_name}' is not loaded on this server.")
        return self._loaded
