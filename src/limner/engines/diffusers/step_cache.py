"""`step_cache = { kind = "first_block", threshold = 0.05 }`: skip denoiser work on steps whose
result is close to the last one's (diffusers.hooks' First Block Cache, or TaylorSeer's forecast).
Lossy and off by default; bench/bench_levers.py reports its quality against the plain image.

    cache = check_step_cache("flux", {"kind": "first_block"}, "FluxPipeline", "/models/flux")
    with cache.around(view, steps): view(...)

The cache lives on the denoiser, which every call of the model shares, so the engine keeps it safe:
calls of a model with a step cache run one at a time (two calls would share its state); its state is
reset before every call (diffusers resets it only at the end of a call that was not interrupted); and a
call through a pipeline class that does not mark its passes (`cache_context`: the image-to-image and
inpainting pipelines of FLUX.1, for one) runs with the cache turned off, since the hooks refuse to run
outside a context. A batch shares one skip decision per step (the whole batch's residual), which is why
the option is per model: every job of the model runs with it.

Where it applies: denoisers with diffusers' CacheMixin whose text-to-image pipeline marks its passes
(FLUX.1, FLUX.2-klein, Qwen-Image); elsewhere a start-up error. MagCache (`kind = "mag"`) counts the
calls of a run against its step count, so each step count gets a config of its own (requests with
other steps never share a call: steps are in the batch key), and it skips by magnitude ratios
calibrated per model: diffusers ships FLUX.1's; for another model give `mag_ratios` (a run with
`calibrate = true` logs them).
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
KINDS = {
    "first_block": "FirstBlockCacheConfig",
    "taylorseer": "TaylorSeerCacheConfig",
    "mag": "MagCacheConfig",
}


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
    known = {f.name for f in dataclasses.fields(config_cls)} - {"num_inference_steps"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise option_error(
            f"step_cache.{unknown[0]}", f"unknown for {kind}; it takes {', '.join(sorted(known))}"
        )
    if kind == "mag" and "mag_ratios" not in params and not params.get("calibrate"):
        # MagCache skips by the magnitude ratios of the model's steps, calibrated per model: diffusers
        # ships FLUX.1's; another model's come from a run with calibrate = true (they are logged).
        if denoiser_cls.__name__ != "FluxTransformer2DModel":
            raise option_error(
                "step_cache",
                f"mag needs mag_ratios for {denoiser_cls.__name__}: run once with calibrate = true, "
                "then give the ratios it logs",
            )
        params["mag_ratios"] = _module("diffusers.hooks.mag_cache").FLUX_MAG_RATIOS
    cache = StepCache(kind, config_cls, params)
    try:
        cache.config_for(28)  # the options are checked now, not by the first request
        cache._configs.clear()
    except (TypeError, ValueError) as exc:
        raise option_error("step_cache", str(exc)) from exc
    return cache


class StepCache:
    """One model's step cache: enabled on its denoiser around the calls that can use it."""

    def __init__(self, kind: str, config_cls: Any, params: dict[str, Any]) -> None:
        self.kind = kind
        self.config_cls = config_cls
        self.params = params
        self._configs: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._enabled: Any = None  # the config in force on the denoiser

    def config_for(self, steps: int) -> Any:
        """The config of a call of `steps` steps: MagCache counts the calls of a run against its step
        count, so it has one per step count; the others one for every call."""
        key = steps if self.kind == "mag" else 0
        if key not in self._configs:
            extra = {"num_inference_steps": steps} if self.kind == "mag" else {}
            self._configs[key] = self.config_cls(**self.params, **extra)
        return self._configs[key]

    @contextlib.contextmanager
    def around(self, view: Any, steps: int) -> Iterator[None]:
        """One pipeline call through `view`: alone on the model, from a fresh cache state."""
        denoiser = view.transformer
        with self._lock:
            if marks_passes(type(view)):
                config = self.config_for(steps)
                if denoiser.is_cache_enabled and self._enabled is not config:
                    denoiser.disable_cache()
                if not denoiser.is_cache_enabled:
                    denoiser.enable_cache(config)
                    self._enabled = config
                denoiser._reset_stateful_cache()
            elif denoiser.is_cache_enabled:
                denoiser.disable_cache()
                self._enabled = None
            yield
