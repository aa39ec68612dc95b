"""`compile = true`: the denoiser compiled with torch.compile, warmed up before the first request.

* **Regional** where the family has repeated blocks (`compile_repeated_blocks`: FLUX.1, FLUX.2,
  Qwen-Image, Z-Image, the SD UNets): each block class is compiled once and reused by every block of
  its kind, so compiling takes seconds, not minutes. SD3 and SANA declare no repeated blocks: their
  whole denoiser is compiled.
* **Shapes**: `dynamic` unless the model has a fixed `sizes` list, so that any size the rules accept
  runs without one compilation per size.
* **Warm-up at load**, over the configured sizes (or one square size) and batch sizes (1 and
  `max_batch`), one step each: compilation happens before the model serves, never in a request.
* **A persistent cache**: inductor's kernels and graphs are kept in `TORCHINDUCTOR_CACHE_DIR` (the
  server points it into its data dir), so a restart loads them instead of compiling again (the tiny
  FLUX.1 pipeline on 2 CPU cores: 55 s cold, 16 s warm).

With LoRA adapters, the denoiser gets fixed adapter slots before it is compiled and adapters are
swapped into them in place (hotswap.py): switching adapters never compiles again.

Refused at start-up with a step cache (its hooks run Python between the compiled blocks' calls, which
the compiled graph does not expect) and with offload (weights that move defeat the compiled graph).
"""

from __future__ import annotations

import logging
from typing import Any

from limner.engines.diffusers.options import DiffusersOptions, option_error

logger = logging.getLogger("limner.engines.diffusers")


def check_compile(value: Any, options: DiffusersOptions) -> bool:
    if not isinstance(value, bool):
        raise option_error("compile", f"expected true or false, got {value!r}")
    if value and options.step_cache is not None:
        raise option_error(
            "compile", "cannot be combined with step_cache (its hooks break the compiled graph)"
        )
    return value


def compile_denoiser(pipe: Any, *, dynamic: bool) -> str:
    """Compile the pipeline's denoiser in place; how ("regional" or "whole")."""
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    if getattr(denoiser, "_repeated_blocks", None):
        denoiser.compile_repeated_blocks(dynamic=dynamic)
        return "regional"
    denoiser.compile(dynamic=dynamic)
    return "whole"


def warm_up_sizes(options: DiffusersOptions, multiple: int) -> list[tuple[int, int]]:
    """The sizes a warm-up runs: the configured list, else one square size the model can make."""
    if options.sizes:
        return list(options.sizes)
    side = max(multiple, min(512, options.max_size) // multiple * multiple)
    return [(side, side)]
