"""Loading a diffusers checkpoint: the extra's imports, device and dtype, sources, and the pipelines."""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

from limner.engines.diffusers.model import ModelView
from limner.engines.diffusers.options import option_error
from limner.errors import EngineUnavailable
from limner.extras import install_hint

logger = logging.getLogger("limner.engines.diffusers")

EXTRA_HINT = install_hint("diffusers")

Task = Literal["text2image", "image2image", "inpaint", "reference"]


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


def apply_offload(pipe: Any, kind: str, device: str) -> None:
    """Instead of `pipe.to(device)`: the weights stay in host memory and visit the device."""
    if kind == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=device, offload_device="cpu", offload_type="block_level", num_blocks_per_group=1
        )


@dataclass
class _Loaded:
    """What load() produces; replaced as a whole, so readers never see a half-loaded engine."""

    base: Any  # the text-to-image pipeline that owns the weights
    scheduler_cls: Any
    scheduler_config: Any
    inpaint_base: Any | None  # a dedicated inpainting checkpoint, when configured


class Loader(ModelView):
    """Builds a model's pipelines from its checkpoint (on the device, in its dtype)."""

    def load_pipeline(self) -> _Loaded:
        diffusers = _module("diffusers")
        logging.getLogger("diffusers.models.modeling_utils").addFilter(_QUIET_CASTS)  # once: a set
        base = self._from_pretrained(
            diffusers, self.options.source, diffusers.AutoPipelineForText2Image, main=True
        )
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

    def _from_pretrained(self, diffusers: Any, source: str, auto_cls: Any, *, main: bool = False) -> Any:
        kwargs: dict[str, Any] = {_dtype_keyword(): self.dtype}
        if os.path.isdir(source):
            kwargs["local_files_only"] = True
        if main and self.model.quantize is not None:
            kwargs["quantization_config"] = self.model.quantize.config()
        try:
            try:
                pipe = auto_cls.from_pretrained(source, **kwargs)
            except ValueError as exc:
                if "AutoPipeline can't find" not in str(exc):
                    raise
                # A pipeline outside the AutoPipeline tables (an edit-only checkpoint, a newer
                # family): load it as it is; its capabilities say what it can do.
                pipe = diffusers.DiffusionPipeline.from_pretrained(source, **kwargs)
            if self.model.offload is not None:
                apply_offload(pipe, self.model.offload, self.device)
            else:
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
