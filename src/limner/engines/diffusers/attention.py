"""`attention = "..."`: the attention kernel of one model's denoiser, and only that model's.

    check_attention("flux", "flash", "/models/flux", "cuda") -> AttentionBackendName.FLASH
    apply_attention(pipe, backend)

diffusers' `set_attention_backend` sets the backend on the processors of the model it is called on,
and also makes it the process-wide default for every model left at its default: with several models in
one server, the last call would win for the others. limner sets it on this model's processors and puts
the process-wide default back. It changes nothing for the denoisers whose attention calls PyTorch's SDPA
directly (the SD and SDXL UNets, SD3, SANA): there the option would be accepted and ignored, so it is a
start-up error. So is a backend whose package is missing, or that needs a GPU on a CPU model.
"""

from __future__ import annotations

from typing import Any

from limner.engines.diffusers.families import read_config
from limner.engines.diffusers.loading import _module
from limner.engines.diffusers.options import option_error

#: The denoisers whose attention goes through diffusers' dispatcher (`dispatch_attention_fn`).
DISPATCHING = frozenset(
    {
        "FluxTransformer2DModel",
        "Flux2Transformer2DModel",
        "QwenImageTransformer2DModel",
        "ZImageTransformer2DModel",
    }
)
#: Plain names for the common backends (the rest go by diffusers' own names).
ALIASES = {"sdpa": "native", "math": "_native_math", "flash_attention": "flash"}
#: Backends that run on the CPU (the native SDPA kernels and flex attention).
CPU_BACKENDS = frozenset({"native", "_native_math", "flex"})


def _denoiser_entry(folder: str | None) -> tuple[str, str] | None:
    """(component, class) of the checkpoint's denoiser, from model_index.json."""
    if folder is None:
        return None
    index = read_config(folder, "model_index.json")
    for component in ("transformer", "unet"):
        entry = index.get(component)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            return component, str(entry[1])
    return None


def _denoiser_class(folder: str | None) -> str | None:
    entry = _denoiser_entry(folder)
    return entry[1] if entry else None


def _denoiser_component(folder: str | None) -> str | None:
    entry = _denoiser_entry(folder)
    return entry[0] if entry else None


def check_attention(model_name: str, value: Any, folder: str | None, device: str) -> Any:
    """The diffusers backend for the option's value, or a ValueError naming `attention` and why."""
    dispatch = _module("diffusers.models.attention_dispatch")
    names = sorted(m.value for m in dispatch.AttentionBackendName)
    if not isinstance(value, str) or ALIASES.get(value, value) not in names:
        raise option_error("attention", f"expected sdpa, math or one of {', '.join(names)}; got {value!r}")
    backend = dispatch.AttentionBackendName(ALIASES.get(value, value))
    denoiser = _denoiser_class(folder)
    if denoiser not in DISPATCHING:
        raise option_error(
            "attention",
            f"model '{model_name}' ({denoiser or 'an unknown denoiser'}) calls PyTorch's attention "
            "directly: a backend would change nothing. It applies to FLUX.1, FLUX.2, Qwen-Image and Z-Image.",
        )
    try:
        dispatch._check_attention_backend_requirements(backend)
    except (RuntimeError, ImportError) as exc:  # the message names the package to install
        raise option_error("attention", str(exc)) from exc
    if device == "cpu" and backend.value not in CPU_BACKENDS:
        raise option_error(
            "attention", f"'{backend.value}' needs an accelerator; on the CPU use sdpa or math"
        )
    return backend


def apply_attention(pipe: Any, backend: Any) -> int:
    """Set the backend on this pipeline's denoiser only; the number of attention layers it now
    drives (0 would mean that the option changed nothing: the caller refuses that)."""
    dispatch = _module("diffusers.models.attention_dispatch")
    registry = dispatch._AttentionBackendRegistry
    previous = registry._active_backend
    denoiser = getattr(pipe, "transformer", None)
    if denoiser is None:
        return 0
    try:
        denoiser.set_attention_backend(backend.value)
    finally:
        registry.set_active_backend(previous)  # the other models keep the process-wide default
    return sum(
        1
        for m in denoiser.modules()
        if getattr(getattr(m, "processor", None), "_attention_backend", None) == backend
    )
