"""What a diffusers model can do (from its family row and checkpoint configs), and the checks that
refuse, up front, what it cannot."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limner.engines.base import EngineInfo
from limner.engines.diffusers import families
from limner.engines.diffusers.loading import _module, _task_class
from limner.engines.diffusers.model import ModelView
from limner.engines.diffusers.options import option_error
from limner.engines.jobs import EditJob, GenerateJob, Job, VaryJob
from limner.errors import InvalidValue
from limner.rules import MAX_IMAGES_PER_EDIT

logger = logging.getLogger("limner.engines.diffusers")

#: The smallest side a reference image is given to a pipeline with (FLUX.2 refuses smaller ones).
MIN_REFERENCE_SIDE = 64


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
    if options.get("loras") or options.get("lora_dir"):
        cls = getattr(_module("diffusers"), caps.pipeline, None)
        if cls is None or not hasattr(cls, "load_lora_weights"):
            option = "loras" if options.get("loras") else "lora_dir"
            raise option_error(option, f"{caps.pipeline} loads no LoRA adapters in diffusers")
    unused = set() if caps.image2image else {"edit", "edit_high_fidelity", "vary"}
    unused |= set() if caps.mask else {"inpaint", "inpaint_high_fidelity"}
    for key in sorted(set(options.get("strength") or {}) & unused):
        raise option_error(
            f"strength.{key}", f"{name} ({caps.pipeline}) has no strength for this; it would be ignored"
        )


# --------------------------------------------------------------------------------------------------
# The engine


class Checks(ModelView):
    """What the model can do and what a job asks that it cannot: from its configs, before any weight is
    loaded (then again from the loaded pipeline's class)."""

    def capabilities(self, class_name: str | None = None) -> Capabilities:
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

    def make_info(self) -> EngineInfo:
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
            adapters=bool(opts.loras) or opts.lora_dir is not None,
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

    def check_job(self, job: Job) -> None:
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
