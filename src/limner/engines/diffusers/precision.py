"""`quantize = "int8" | "float8"` and `offload = "model" | "group"`: a denoiser in less device memory.

    check_quantize("flux", "int8", "/models/flux") -> Quantize("int8", "transformer", keep=[...])
    check_offload("flux", "group", "cuda")

* **Quantization** is torchao's weight-only (int8, or float8 where the accelerator has it), applied to
  the denoiser as it loads (diffusers' `PipelineQuantizationConfig`). The layers that quality hangs on
  stay in the compute dtype, as vLLM-Omni learnt (its PR #2795): normalisation and modulation, the
  timestep, text and image embedders, and the final projection. They are named from the checkpoint's
  own headers before loading. Lossy: bench/bench_levers.py reports PSNR and SSIM against the plain image.
* **Offload** keeps weights in the machine's memory and brings them to the accelerator when needed:
  `model` a whole component at a time (accelerate's hooks), `group` a block at a time (slower, far
  less device memory). On the CPU device there is nowhere to offload from, so it is a start-up error.
  (`loading.apply_offload` applies it as the pipeline loads.)

The resident bytes that a memory budget counts are what is left on the device (measured once loaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limner.engines.diffusers.attention import _denoiser_component
from limner.engines.diffusers.loading import _module
from limner.engines.diffusers.options import option_error
from limner.extras import install_hint

#: torchao's weight-only configs by option value.
QUANTIZE = {"int8": "Int8WeightOnlyConfig", "float8": "Float8WeightOnlyConfig"}
OFFLOAD = ("model", "group")
#: Layers kept in the compute dtype: the final projection, and any normalisation, modulation or embedder.
SENSITIVE = re.compile(r"^proj_out$|(^|\.)(norm\w*|\w*embed\w*|adaLN\w*|\w*modulation\w*)(\.|$)")


@dataclass(frozen=True)
class Quantize:
    kind: str
    component: str  # "transformer" or "unet"
    keep: list[str] = field(default_factory=list)

    def config(self) -> Any:
        """diffusers' pipeline quantization config for the denoiser."""
        diffusers = _module("diffusers")
        weights = getattr(_module("torchao.quantization"), QUANTIZE[self.kind])()
        return diffusers.PipelineQuantizationConfig(
            quant_mapping={
                self.component: diffusers.TorchAoConfig(weights, modules_to_not_convert=list(self.keep))
            }
        )


def _linear_modules(folder: Path) -> list[str]:
    """The modules with a 2-D weight (the linear layers) in a component's safetensors headers."""
    safetensors = _module("safetensors")
    names = []
    for path in sorted(folder.glob("*.safetensors")):
        with safetensors.safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (a safe_open handle is not iterable)
                if key.endswith(".weight") and len(handle.get_slice(key).get_shape()) == 2:
                    names.append(key[: -len(".weight")])
    return names


def check_quantize(model_name: str, value: Any, folder: str | None) -> Quantize:
    if value not in QUANTIZE:
        raise option_error("quantize", f"expected {' or '.join(QUANTIZE)}; got {value!r}")
    try:
        _module("torchao.quantization")
    except ImportError as exc:
        raise option_error("quantize", f"needs torchao: {install_hint('quantize')}") from exc
    component = _denoiser_component(folder)
    if component is None or folder is None:
        raise option_error("quantize", f"model '{model_name}': no denoiser found in its model_index.json")
    keep = [name for name in _linear_modules(Path(folder) / component) if SENSITIVE.search(name)]
    return Quantize(value, component, keep)


def check_offload(model_name: str, value: Any, device: str) -> str:
    if value not in OFFLOAD:
        raise option_error("offload", f"expected {' or '.join(OFFLOAD)}; got {value!r}")
    if device == "cpu":
        raise option_error(
            "offload",
            f"model '{model_name}' runs on the CPU: offloading moves weights between an accelerator and "
            "the CPU, so there is nothing to offload",
        )
    return str(value)
