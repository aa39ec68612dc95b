"""Pipeline calls: each job planned (task, inputs, text and step arguments), several images per call,
previews through the step callback. Pixels outside an edit's mask are put back by the server's run
path (limner.server.serving.run), the guarantee's one owner, not here."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from limner.engines.diffusers.capabilities import MIN_REFERENCE_SIDE, Checks
from limner.engines.diffusers.loading import Task, _dtype_keyword, _Loaded, _module, _task_class
from limner.engines.diffusers.model import Model, ModelView
from limner.engines.diffusers.previews import PreviewDecoder, preview_steps
from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext, JobSettings, VaryJob
from limner.errors import InvalidValue, JobCancelled

logger = logging.getLogger("limner.engines.diffusers")

#: dall-e-3's `style`, in OpenAI's own words for it, appended to the prompt (a text-to-image model's
#: only handle on look): vivid "hyper-real and dramatic", natural "more natural, less hyper-real".
STYLE_SUFFIX = {"vivid": ", vivid, hyper-real, dramatic", "natural": ", natural, realistic, understated"}


class Calls(ModelView):
    """Plans each job (task, inputs at the output size, text and step arguments) and runs pipeline
    calls of several images, with previews through the step callback."""

    def __init__(self, model: Model, checks: Checks) -> None:
        super().__init__(model)
        self.checks = checks

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
        guidance = self.guidance(job)
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

    def steps(self, job: JobSettings, strength: float | None) -> int:
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

    def task(self, job: Job) -> Task:
        if isinstance(job, GenerateJob):
            return "text2image"
        if isinstance(job, EditJob) and job.mask is not None:
            return "inpaint"
        return "reference" if self.caps.references else "image2image"

    def strength(self, job: Job) -> float | None:
        high = getattr(job, "input_fidelity", "low") == "high"
        task = self.task(job)
        if task in ("text2image", "reference"):
            return None
        if isinstance(job, VaryJob):
            return self.options.strength["vary"]
        if task == "inpaint":
            return self.options.strength["inpaint_high_fidelity" if high else "inpaint"]
        return self.options.strength["edit_high_fidelity" if high else "edit"]

    def guidance(self, job: Job | JobSettings) -> float | None:
        return job.guidance_scale if job.guidance_scale is not None else self.options.guidance[job.detail]

    def plan(self, job: Job, *, inputs: bool = True) -> _Plan:
        """What one job asks of a pipeline call, per image and shared, checked against the
        capabilities. `inputs=False` only checks (no image is resized)."""
        self.checks.check_job(job)
        task = self.task(job)
        strength = self.strength(job)
        plan = _Plan(job=job, task=task, strength=strength, steps=self.steps(job, strength))
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

    def call(self, loaded: _Loaded, chunk: list[_Entry]) -> list[Image.Image]:
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
                view,
                self.options.preview,
                job.width,
                job.height,
                self.caps.family.preview,
                fit=self.model.preview_fit,
            )
            call["callback_on_step_end"] = _StepCallback(chunk, decoder)
        step_cache = self.model.step_cache
        try:
            with step_cache.around(view, head.steps) if step_cache is not None else contextlib.nullcontext():
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
            images.append(image)
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
