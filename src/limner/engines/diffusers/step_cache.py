"""`step_cache = { kind = "first_block", threshold = 0.05 }`: skip denoiser work on steps whose
result is close to the last one's (diffusers.hooks' First Block Cache, or TaylorSeer's forecast).
Lossy and off by default; bench/bench_levers.py reports its quality against the plain image.

    cache = check_step_cache("flux", {"kind": "first_block"}, "FluxPipeline", "/models/flux")
    with cache.around(view): view(...)

The cache lives on the denoiser, which every call of the model shares, so the engine keeps it safe:
calls of a model with a step cache run one at a time (two calls would share its state); its state is
reset before every call (diffusers resets it only at the end of a call that was not interrupted); and a
call through a pipeline class that does not mark its passes (`cache_context`: the image-to-image and
inpainting pipelines of FLUX.1, for one) runs with the cache turned off, since the hooks refuse to run
outside a context. A batch shares one skip decision per step (the whole batch's residual), which is why
the option is per model: every job of the model runs with it.

Where it applies: denoisers with diffusers' CacheMixin whose text-to-image pipeline marks its passes
(FLUX.1, FLUX.2-klein, Qwen-Image); elsewhere a start-up error. MagCache is not offered: it counts
calls against one fixed step count and needs magnitude ratios calibrated per model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from limner.engines.diffusers.attention import _denoiser_class
from limner.engines.diffusers.loading import _module
from limner.engines.diffusers.options import option_error

#: kind -> the diffusers.hooks config class.
KINDS = {"first_block": "FirstBlockCacheConfig", "taylorseer": "TaylorSeerCacheConfig"}


_MARKS: dict[type, bool] = {}


def marks_passes(pipeline_class: type) -> bool:
    """Whether the pipeline's call wraps its denoiser passes in `cache_context` (the hooks need one)."""
    if pipeline_class not in _MARKS:
        try:
            _MARKS[pipeline_class] = "cache_context" in inspect.getsource(pipeline_class.__call__)
        except (OSError, TypeError):
            _MARKS[pipeline_class] = False
    return _MARKS[pipeline_class]


def check_step_cache(model_name: str, value: Any, pipeline: str, folder: str | None) -> StepCache:
    """The step cache an option asks for, or a ValueError naming `step_cache` and why not."""
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        kinds = " | ".join(f'"{k}"' for k in KINDS)
        raise option_error("step_cache", f"expected {{ kind = {kinds}, ... }}; got {value!r}")
    kind = value["kind"]
    if kind == "mag":
        raise option_error(
            "step_cache",
            "mag is not offered: MagCache counts calls against one fixed step count and needs ratios "
            "calibrated per model; use first_block or taylorseer",
        )
    if kind not in KINDS:
        raise option_error("step_cache", f"unknown kind {kind!r}; expected {' or '.join(KINDS)}")
    diffusers = _module("diffusers")
    cls = getattr(diffusers, pipeline, None)
    denoiser_cls = getattr(diffusers, _denoiser_class(folder) or "", None)
    cache_mixin = _module("diffusers.models.cache_utils").CacheMixin
    if (
        cls is None
        or not marks_passes(cls)
        or not (inspect.isclass(denoiser_cls) and issubclass(denoiser_cls, cache_mixin))
    ):
        raise option_error(
            "step_cache",
            f"model '{model_name}' ({pipeline}) has no step cache in diffusers; it applies to FLUX.1, "
            "FLUX.2-klein and Qwen-Image",
        )
    if kind == "first_block" and denoiser_cls.__name__ == "Flux2Transformer2DModel":
        # diffusers 0.42's First Block Cache subtracts FLUX.2's block output, a list, from a tensor.
        raise option_error(
            "step_cache", "first_block fails on FLUX.2's denoiser in diffusers; use taylorseer"
        )
    hooks = _module("diffusers.hooks")
    config_cls = getattr(hooks, KINDS[kind])
    params = {k: v for k, v in value.items() if k != "kind"}
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise option_error(
            f"step_cache.{unknown[0]}", f"unknown for {kind}; it takes {', '.join(sorted(known))}"
        )
    try:
        config = config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise option_error("step_cache", str(exc)) from exc
    return StepCache(kind, config)


class StepCache:
    """One model's step cache: enabled on its denoiser around the calls that can use it."""

    def __init__(self, kind: str, config: Any) -> None:
        self.kind = kind
        self.config = config
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def around(self, view: Any) -> Iterator[None]:
        """One pipeline call through `view`: alone on the model, from a fresh cache state."""
        denoiser = view.transformer
        with self._lock:
            if marks_passes(type(view)):
                if not denoiser.is_cache_enabled:
                    denoiser.enable_cache(self.config)
                denoiser._reset_stateful_cache()
            elif denoiser.is_cache_enabled:
                denoiser.disable_cache()
            yield
