"""Tiny LoRA adapters made offline with peft, for a tiny pipeline saved on disk.

    make_lora(tiny_sd_dir, tmp / "style.safetensors", seed=1)

`init_lora_weights=False` gives the adapter random A and B matrices (peft's default makes B zero, an
adapter with no effect). The denoiser's attention projections are adapted; with `text_encoder=True`
the text encoder's too (a family whose loader applies text-encoder adapters takes it; others refuse).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any


def _config(peft: Any, rank: int, targets: list[str]) -> Any:
    """Random A and B (init_lora_weights=False): an adapter with an effect."""
    return peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)


def make_lora(
    pipeline_dir: Path,
    out: Path,
    *,
    seed: int,
    rank: int = 4,
    text_encoder: bool = False,
    denoiser: bool = True,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> Path:
    import peft
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(pipeline_dir, local_files_only=True)
    torch.manual_seed(seed)
    layers: dict[str, Any] = {}
    name = "unet" if hasattr(pipe, "unet") else "transformer"
    if denoiser:
        module = getattr(pipe, name)
        module.add_adapter(_config(peft, rank, list(targets)))
        layers[f"{name}_lora_layers"] = peft.utils.get_peft_model_state_dict(module)
    if text_encoder:
        # peft's own injection: transformers' add_adapter asks for a newer peft than diffusers does.
        peft.inject_adapter_in_model(
            _config(peft, rank, ["q_proj", "k_proj", "v_proj", "out_proj"]), pipe.text_encoder
        )
        layers["text_encoder_lora_layers"] = peft.utils.get_peft_model_state_dict(pipe.text_encoder)
    with tempfile.TemporaryDirectory() as tmp:
        type(pipe).save_lora_weights(tmp, **layers)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(Path(tmp) / "pytorch_lora_weights.safetensors"), out)
    return out
