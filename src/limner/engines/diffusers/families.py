"""What each diffusers pipeline family can do, and how limner's request fields map onto its call.

One table (`FAMILIES`, by the pipeline class in `model_index.json`) plus what the checkpoint's own
configs say (the VAE's scale factor, whether the transformer is guidance-distilled) give a model's
`Capabilities`, before any weight is loaded. The engine refuses, up front, exactly what these
capabilities say the model cannot do, and /v1/models advertises the same object: what is advertised
and what is refused cannot disagree.

The families differ in four ways that matter to the API:

* **Sizes.** The size multiple is the VAE's scale factor times the latent multiple: 2 for the
  transformer families (FLUX.1, FLUX.2 and Qwen-Image pack 2x2 latent patches; SD3 and Z-Image have a
  patch size of 2), 8 for the UNet families (three 2x downsamplings), 1 for SANA (its DC-AE already
  compresses 32x).
* **Edits.** `img2img` families edit with an image-to-image pipeline (and inpaint with a mask) built
  on the same weights; `reference` families (FLUX.2, FLUX.1 Kontext, Qwen-Image-Edit) take the
  uploads as reference images of one call and have no strength; `none` cannot edit.
* **Guidance.** `guidance_scale` is classifier-free guidance (`cfg`), the distilled guidance input of
  guidance-distilled models (`embedded`: FLUX.1-dev), or Qwen-Image's true CFG (`true_cfg`, passed as
  `true_cfg_scale`); models distilled to few steps take none (`none`: FLUX.1-schnell, FLUX.2-klein).
* **Negative prompts.** Through CFG (`cfg`), through true CFG beside a distilled guidance input
  (`true_cfg`: FLUX.1 runs a second pass at `true_cfg_scale`), or not at all (`none`).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

EditKind = Literal["img2img", "reference", "none"]
GuidanceKind = Literal["cfg", "embedded", "true_cfg", "none"]
NegativeKind = Literal["cfg", "true_cfg", "none"]
PreviewKind = Literal["spatial", "flux", "qwen", "flux2"]


@dataclass(frozen=True)
class Family:
    """One row of the table: a pipeline family's fixed facts."""

    name: str
    latent_multiple: int = 2
    edits: EditKind = "img2img"
    #: Reference images one call takes (reference families); None: OpenAI's 16.
    max_references: int | None = None
    #: False for edit-only checkpoints (Qwen-Image-Edit): they refuse generations.
    generates: bool = True
    guidance: GuidanceKind = "cfg"
    negative: NegativeKind = "cfg"
    #: The negative prompt the family's authors recommend when none is given (Qwen-Image: " ", which
    #: is what turns its true CFG on).
    default_negative: str | None = None
    #: How the latents handed to `callback_on_step_end` become a picture (previews.py).
    preview: PreviewKind = "spatial"
    #: The inpainting pipeline for masked edits where the AutoPipeline tables have none (Kontext).
    inpaint: str | None = None
    #: False where the family's inpainting pipeline cannot make the requested size.
    masks: bool = True
    #: False where the pipeline refuses more than one prompt per call (Qwen-Image-Edit): every
    #: image then gets a call of its own, whatever max_batch says.
    batches: bool = True


_UNET = Family("stable-diffusion", latent_multiple=8)
_FLUX = Family("flux.1", guidance="embedded", negative="true_cfg", preview="flux")
_QWEN = Family("qwen-image", guidance="true_cfg", negative="cfg", default_negative=" ", preview="qwen")
_FLUX2 = Family("flux.2", edits="reference", guidance="embedded", negative="none", preview="flux2")
_FLUX2_KLEIN = Family(
    "flux.2-klein",
    edits="reference",
    guidance="cfg",
    negative="none",
    preview="flux2",
    inpaint="Flux2KleinInpaintPipeline",
)

#: pipeline class -> family. Unknown classes get `generic_family` (what their call signature shows).
FAMILIES: dict[str, Family] = {
    "StableDiffusionPipeline": _UNET,
    "StableDiffusionXLPipeline": Family("stable-diffusion-xl", latent_multiple=8),
    "StableDiffusion3Pipeline": Family("stable-diffusion-3"),
    "FluxPipeline": _FLUX,
    "FluxKontextPipeline": Family(
        "flux.1-kontext",
        edits="reference",
        max_references=1,
        guidance="embedded",
        negative="true_cfg",
        preview="flux",
        inpaint="FluxKontextInpaintPipeline",
    ),
    "QwenImagePipeline": _QWEN,
    # Its inpainting pipeline (QwenImageEditInpaintPipeline) always computes at a 1024x1024 area,
    # whatever height and width say: masked edits are refused rather than resized.
    "QwenImageEditPipeline": Family(
        "qwen-image-edit",
        edits="reference",
        max_references=1,
        masks=False,
        generates=False,
        guidance="true_cfg",
        default_negative=" ",
        preview="qwen",
        batches=False,
    ),
    "QwenImageEditPlusPipeline": Family(
        "qwen-image-edit-plus",
        edits="reference",
        generates=False,
        guidance="true_cfg",
        default_negative=" ",
        preview="qwen",
        batches=False,
    ),
    "ZImagePipeline": Family("z-image"),
    "Flux2Pipeline": _FLUX2,
    "Flux2KleinPipeline": _FLUX2_KLEIN,
    "SanaPipeline": Family("sana", latent_multiple=1, edits="none"),
    # Qwen-Image 2.1 generates and edits from reference images with one model, and its VAE
    # (AutoencoderKLQwenImage21) encodes and decodes RGBA: real alpha (see `has_alpha`).
    # Its true CFG is off by default (true_cfg_scale 1); the empty negative prompt lets a
    # guidance_scale above 1 turn it on, as with Qwen-Image.
    "QwenImage21Pipeline": Family(
        "qwen-image-2.1", edits="reference", guidance="true_cfg", default_negative=" ", preview="qwen"
    ),
}


def family_for(class_name: str | None) -> Family:
    if class_name is None:
        return Family("unknown")
    return FAMILIES.get(class_name) or generic_family(class_name)


def generic_family(class_name: str) -> Family:
    """A pipeline outside the table: what its text-to-image call takes decides guidance and negative
    prompts; UNet pipelines keep the SD rule for sizes."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return Family(class_name, guidance="none", negative="none")
    params = inspect.signature(cls.__call__).parameters
    return Family(
        class_name,
        latent_multiple=8 if "unet" in inspect.signature(cls.__init__).parameters else 2,
        guidance="cfg" if "guidance_scale" in params else "none",
        negative="cfg" if "negative_prompt" in params else "none",
    )


# --------------------------------------------------------------------------------------------------
# What a checkpoint's configs add


def read_config(source: str, name: str) -> dict[str, Any]:
    """One JSON config of a local checkpoint folder ({} when absent or unreadable)."""
    path = Path(source) / name
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def vae_scale_factor(vae: dict[str, Any]) -> int:
    """The VAE's spatial compression, from its config, as each pipeline computes it."""
    if "temperal_downsample" in vae:  # Qwen-Image's video VAE
        return 2 ** len(vae["temperal_downsample"])
    blocks = vae.get("encoder_block_out_channels") or vae.get("block_out_channels")  # DC-AE, then KL
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8


def has_alpha(vae: dict[str, Any]) -> bool:
    """A VAE that decodes four channels draws real alpha (Qwen-Image 2.1's); every other one RGB."""
    default = 4 if vae.get("_class_name") == "AutoencoderKLQwenImage21" else 3  # its class's default
    return vae.get("out_channels", default) == 4


def sample_sigmas(index: dict[str, Any]) -> tuple[float, ...]:
    """The sigmas a pipeline's authors configured in model_index.json (Qwen-Image 2.1), or ()."""
    sigmas = index.get("sample_sigmas")
    if isinstance(sigmas, list) and sigmas and all(isinstance(s, int | float) for s in sigmas):
        return tuple(float(s) for s in sigmas)
    return ()


def resolve_guidance(family: Family, index: dict[str, Any], transformer: dict[str, Any]) -> GuidanceKind:
    """What `guidance_scale` drives for this checkpoint: a FLUX.1 transformer without guidance
    embeddings (schnell) and a step-distilled FLUX.2-klein ignore guidance, so they take none."""
    if family.guidance == "embedded" and transformer.get("guidance_embeds") is False:
        return "none"
    if family.name == "flux.2-klein" and index.get("is_distilled"):
        return "none"
    return family.guidance


#: Components whose transformers classes need packages beyond torch, diffusers and transformers:
#: class name -> (package to import, what to install).
NEEDS: dict[str, tuple[str, str]] = {
    # transformers 5 builds these processors with a video processor, which needs torchvision.
    "Qwen2VLProcessor": ("torchvision", "torchvision"),
    "Qwen2_5_VLProcessor": ("torchvision", "torchvision"),
    "Qwen3VLProcessor": ("torchvision", "torchvision"),
}
#: Tokenizers read from a sentencepiece model when the folder has no tokenizer.json.
SENTENCEPIECE_TOKENIZERS = frozenset({"T5Tokenizer", "T5TokenizerFast", "LlamaTokenizer", "GemmaTokenizer"})


def missing_packages(source: str, index: dict[str, Any]) -> list[str]:
    """Packages this checkpoint's components need that cannot be imported here, with the component
    that needs each: found at start-up rather than by the first request."""
    missing: list[str] = []
    for component, spec in index.items():
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], str)):
            continue
        cls = spec[1]
        need = NEEDS.get(cls)
        if need is None and cls in SENTENCEPIECE_TOKENIZERS:
            folder = Path(source) / component
            if folder.is_dir() and not (folder / "tokenizer.json").is_file():
                need = ("sentencepiece", "sentencepiece")
        if need is not None and importlib.util.find_spec(need[0]) is None:
            missing.append(f"{need[1]} (for its {component}, a {cls})")
    return missing


__all__ = [
    "FAMILIES",
    "Family",
    "family_for",
    "has_alpha",
    "missing_packages",
    "read_config",
    "resolve_guidance",
    "sample_sigmas",
    "vae_scale_factor",
]
