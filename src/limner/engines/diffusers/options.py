"""The options of a diffusers model: its table in the config (minus `engine`), validated.

    parse_options({"source": "/models/flux", "steps": {"low": 4}}) -> DiffusersOptions

Every problem is a ValueError that names the option, so a typo fails at start-up instead of being
ignored. What a model's family makes of the options is checked once the family is known
(limner.engines.diffusers.create_engine).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from limner.engines.diffusers.previews import PreviewMode
from limner.engines.jobs import Detail
from limner.rules import MAX_IMAGES_PER_EDIT

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
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
        "max_images",
        "true_cfg_scale",
        "resolution_binning",
        "loras",
        "lora_dir",
        "max_loras",
        "max_loaded_loras",
        "lora_rank",
        "attention",
        "prompt_cache_mb",
        "step_cache",
        "quantize",
        "offload",
        "compile",
    }
)


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
    #: None: from the pipeline (the VAE's scale factor times the family's latent multiple).
    size_multiple: int | None = None
    max_size: int = 2048
    #: Width times height at most; None: max_size squared.
    max_pixels: int | None = None
    strength: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_STRENGTH))
    preview: PreviewMode = "auto"
    max_batch: int = 1
    #: Reference images an edit may send to a reference-image editor; None: the family's limit or 16.
    max_images: int | None = None
    #: The true-CFG scale a negative prompt runs at on families whose guidance_scale is a distilled
    #: guidance input (FLUX.1): there a negative prompt needs a second pass, at this scale.
    true_cfg_scale: float = 4.0
    #: SANA and PixArt compute at the nearest trained aspect ratio and resize when True; off, the
    #: requested size is the computed size.
    resolution_binning: bool = False
    #: "lazy" (on first use), "startup" (before serving) or "pinned" (before serving, never unloaded
    #: to make room under a memory budget).
    load: Literal["lazy", "startup", "pinned"] = "lazy"
    #: Configured LoRA adapters: name -> (source, default scale).
    loras: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: A folder whose `.safetensors` files are adapters named by their stems, found when first asked for.
    lora_dir: str | None = None
    #: Adapters one request may combine.
    max_loras: int = 4
    #: Adapters kept loaded in the pipeline (least recently used unloaded first).
    max_loaded_loras: int = 8
    #: With compile: the rank of the compiled adapter slots (None: the largest rank of the adapters
    #: found at start-up), so that adapters added to `lora_dir` later may have a higher one.
    lora_rank: int | None = None
    #: The denoiser's attention backend (diffusers' name, or sdpa / math); None: diffusers' default.
    attention: str | None = None
    #: The text encoders' outputs kept for repeated prompts, in MiB (0: off).
    prompt_cache_mb: int = 256
    #: { kind = "first_block" | "taylorseer", ... }: checked against the family by create_engine.
    step_cache: dict[str, Any] | None = None
    #: "int8" | "float8": torchao weight-only quantization of the denoiser.
    quantize: str | None = None
    #: "model" | "group": offload to host memory (accelerators only).
    offload: str | None = None
    #: torch.compile the denoiser (regional where it has repeated blocks), warmed up at load.
    compile: bool = False

    @property
    def load_at_startup(self) -> bool:
        return self.load != "lazy"


def option_error(option: str, message: str) -> ValueError:
    return ValueError(f"diffusers option '{option}': {message}")


def _int(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise option_error(option, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def _float(option: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise option_error(option, f"expected a number from {low} to {high}, got {value!r}")
    return float(value)


def _per_detail(option: str, value: Any, parse: Callable[[str, Any], Any]) -> dict[Detail, Any]:
    """A number for every quality, or a table {low, medium, high} (missing keys keep the default)."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(_DETAILS)
        if unknown:
            raise option_error(option, f"unknown keys {sorted(unknown)}; expected low, medium, high")
        return {d: parse(f"{option}.{d}", value[d]) for d in _DETAILS if d in value}
    return {d: parse(option, value) for d in _DETAILS}


def _parse_size(option: str, value: Any) -> tuple[int, int]:
    if isinstance(value, str) and "x" in value:
        w, _, h = value.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise option_error(option, f"expected sizes like '512x512' or [512, 512], got {value!r}")


#: Adapter names: what a model name `NAME:ADAPTER` and a file stem in `lora_dir` can spell.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _lora_options(options: Mapping[str, Any]) -> dict[str, Any]:
    loras: dict[str, tuple[str, float]] = {}
    raw = options.get("loras", {})
    if not isinstance(raw, Mapping):
        raise option_error("loras", 'expected a table: name = { source = "...", scale = 0.8 }')
    for name, entry in raw.items():
        if not ADAPTER_NAME.fullmatch(name):
            raise option_error(f"loras.{name}", "an adapter name is letters, digits, '.', '_' and '-'")
        if isinstance(entry, str):
            entry = {"source": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("source"), str):
            raise option_error(f"loras.{name}", 'expected { source = "...", scale = 0.8 }')
        unknown = sorted(set(entry) - {"source", "scale"})
        if unknown:
            raise option_error(f"loras.{name}.{unknown[0]}", "unknown key; expected source and scale")
        loras[name] = (entry["source"], _float(f"loras.{name}.scale", entry.get("scale", 1.0), -4.0, 4.0))
    lora_dir = options.get("lora_dir")
    if lora_dir is not None and (not isinstance(lora_dir, str) or not os.path.isdir(lora_dir)):
        raise option_error("lora_dir", f"no such folder: {lora_dir!r}")
    return {
        "loras": loras,
        "lora_dir": lora_dir,
        "max_loras": _int("max_loras", options.get("max_loras", 4), 1, 16),
        "max_loaded_loras": _int("max_loaded_loras", options.get("max_loaded_loras", 8), 1, 256),
        "lora_rank": None
        if options.get("lora_rank") is None
        else _int("lora_rank", options["lora_rank"], 1, 1024),
    }


def parse_options(options: Mapping[str, Any]) -> DiffusersOptions:
    """Validate a model's config table; every problem is a ValueError that names the option."""
    unknown = sorted(set(options) - _KNOWN_OPTIONS)
    if unknown:
        raise option_error(
            unknown[0], f"unknown option; known options are {', '.join(sorted(_KNOWN_OPTIONS))}"
        )
    source = options.get("source")
    if not isinstance(source, str) or not source.strip():
        raise option_error("source", "required: a local folder or a Hugging Face hub id")
    inpaint_source = options.get("inpaint_source")
    if inpaint_source is not None and (not isinstance(inpaint_source, str) or not inpaint_source.strip()):
        raise option_error("inpaint_source", f"expected a local folder or a hub id, got {inpaint_source!r}")
    device = options.get("device", "auto")
    if not isinstance(device, str) or not (
        device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise option_error("device", f"expected one of auto, cpu, cuda, cuda:N, mps; got {device!r}")
    dtype = options.get("dtype", "auto")
    if dtype not in DTYPES:
        raise option_error("dtype", f"expected one of {', '.join(DTYPES)}; got {dtype!r}")
    scheduler = options.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.isidentifier()):
        raise option_error("scheduler", f"expected a diffusers scheduler class name, got {scheduler!r}")

    steps = dict(_DEFAULT_STEPS)
    if "steps" in options:
        steps.update(_per_detail("steps", options["steps"], lambda o, v: _int(o, v, 1, 500)))
    guidance: dict[Detail, float | None] = dict.fromkeys(_DETAILS)
    if "guidance" in options:
        guidance.update(_per_detail("guidance", options["guidance"], lambda o, v: _float(o, v, 0.0, 100.0)))

    size_multiple: int | None = None
    if options.get("size_multiple") is not None:
        size_multiple = _int("size_multiple", options["size_multiple"], 8, 4096)
        if size_multiple % 8:
            raise option_error(
                "size_multiple", f"must be a multiple of 8 (the VAE's scale), got {size_multiple}"
            )
    least = size_multiple or 16
    max_size = _int("max_size", options.get("max_size", 2048), least, 16384)
    max_pixels = options.get("max_pixels")
    if max_pixels is not None:
        max_pixels = _int("max_pixels", max_pixels, least * least, 16384 * 16384)
    sizes: tuple[tuple[int, int], ...] | None = None
    if "sizes" in options:
        raw = options["sizes"]
        if not isinstance(raw, list | tuple) or not raw:
            raise option_error("sizes", f"expected a non-empty list of sizes, got {raw!r}")
        sizes = tuple(_parse_size("sizes", s) for s in raw)
        for w, h in sizes:
            if w <= 0 or h <= 0 or w % 8 or h % 8:
                raise option_error("sizes", f"{w}x{h}: width and height must be positive multiples of 8")

    strength = dict(_DEFAULT_STRENGTH)
    raw_strength = options.get("strength", {})
    if not isinstance(raw_strength, Mapping):
        raise option_error("strength", f"expected a table with keys {', '.join(_DEFAULT_STRENGTH)}")
    for key, value in raw_strength.items():
        if key not in _DEFAULT_STRENGTH:
            raise option_error(
                f"strength.{key}", f"unknown key; expected one of {', '.join(_DEFAULT_STRENGTH)}"
            )
        strength[key] = _float(f"strength.{key}", value, 0.01, 1.0)

    preview = options.get("preview", "auto")
    if preview not in ("auto", "linear", "vae", "fitted"):
        raise option_error("preview", f"expected auto, linear, fitted or vae; got {preview!r}")
    load = options.get("load", "lazy")
    if load not in ("lazy", "startup", "pinned"):
        raise option_error("load", f"expected lazy, startup or pinned; got {load!r}")
    binning = options.get("resolution_binning", False)
    if not isinstance(binning, bool):
        raise option_error("resolution_binning", f"expected true or false, got {binning!r}")
    max_images = options.get("max_images")
    if max_images is not None:
        max_images = _int("max_images", max_images, 1, MAX_IMAGES_PER_EDIT)
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
        load=load,
        **_lora_options(options),
        attention=options.get("attention"),  # checked against the model's denoiser by create_engine
        prompt_cache_mb=_int("prompt_cache_mb", options.get("prompt_cache_mb", 256), 0, 1 << 20),
        step_cache=options.get("step_cache"),
        quantize=options.get("quantize"),
        offload=options.get("offload"),
        compile=options.get("compile", False),
        max_images=max_images,
        true_cfg_scale=_float("true_cfg_scale", options.get("true_cfg_scale", 4.0), 1.01, 100.0),
        resolution_binning=binning,
    )


__all__ = ["ADAPTER_NAME", "DEVICES", "DTYPES", "DiffusersOptions", "option_error", "parse_options"]
