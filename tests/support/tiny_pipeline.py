"""Tiny, randomly initialised Stable-Diffusion-style pipelines, built fully offline.

Vendored from the team's shared example so the tests never depend on a folder outside the repository.
Nothing here downloads anything: every component is built from a config in code, the CLIP tokenizer
included (a byte-level BPE vocabulary trained locally on a small built-in corpus with `tokenizers`).
Heavy imports (torch, diffusers, transformers, tokenizers) happen inside the functions, so importing
this module is cheap and works without the [diffusers] extra.

    python tests/support/tiny_pipeline.py OUT_DIR            # text-to-image pipeline (4-channel UNet)
    python tests/support/tiny_pipeline.py OUT_DIR --inpaint  # inpainting variant (9-channel UNet)
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Steps per quality for engines on the tiny pipelines: enough for previews and strengths to differ.
TINY_STEPS = {"low": 2, "medium": 4, "high": 6}

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LEN = 77  # CLIP context length; the text encoder's max_position_embeddings must match

# A small corpus so the BPE merges are not empty; any text works.
_CORPUS = """
a photo of a cat sitting on a red chair in the sun
a painting of a dog running on the beach at sunset
an astronaut riding a horse on the moon, digital art
a small house in the forest with a blue door and a garden
portrait of a woman with long hair, oil painting, highly detailed
a city street at night with neon lights and rain, cinematic
a bowl of fruit on a wooden table, still life, soft light
a mountain lake with pine trees and snow, landscape photography
pixel art of a castle, a dragon and a knight, retro game
a watercolor of flowers in a vase, pastel colors
""".strip().splitlines()

_CLIP_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _module(name: str) -> Any:
    """Import a heavy module lazily, typed as Any: its classes are built dynamically anyway."""
    return importlib.import_module(name)


def _offline() -> None:
    # Belt and braces: never touch a hub, whatever the caller's environment says.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP table from bytes to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_tokenizer(vocab_size: int = 1000, corpus: list[str] | None = None) -> Any:
    """Train a tiny CLIP-compatible byte-level BPE locally and wrap it as a CLIPTokenizer.

    The vocabulary follows CLIP: 256 byte characters, the same with '</w>', merges, then BOS/EOS.
    Every byte (with and without '</w>') is in it, so no input ever maps to <unk>.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    CLIPTokenizer = _module("transformers").CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token=EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # The same normalizer and pre-tokenizer as transformers' CLIPTokenizer.
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    n_merges = max(0, vocab_size - 512 - 2)
    trainer = trainers.BpeTrainer(
        vocab_size=512 + n_merges,  # an upper bound: the trainer stops when no pair is left
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(corpus or _CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]][:n_merges]

    vocab: dict[str, int] = {}
    byte_chars = list(_bytes_to_unicode().values())
    for tok in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(tok, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LEN)


def build_text_encoder(tokenizer: Any, hidden: int = 32, layers: int = 2) -> Any:
    transformers = _module("transformers")
    CLIPTextConfig, CLIPTextModel = transformers.CLIPTextConfig, transformers.CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
        projection_dim=hidden,
    )
    return CLIPTextModel(cfg).eval()


def build_unet(
    in_channels: int = 4, cross_attention_dim: int = 32, sample_size: int = 32, attn_full_res: bool = False
) -> Any:
    """4 input channels for text-to-image and image-to-image, 9 for an inpainting UNet
    (4 latent + 1 mask + 4 masked-image channels)."""
    UNet2DConditionModel = _module("diffusers").UNet2DConditionModel

    if attn_full_res:  # SD-like order (attention in the full-latent-resolution block): much slower
        down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
    else:  # attention only in the lower-resolution block, as in diffusers' own tiny test UNet
        down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=down,  # self-attention cost is quadratic in latent pixels
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def build_vae(vae_blocks: tuple[int, ...] = (32, 32, 64, 64), mid_attention: bool = True) -> Any:
    """vae_scale_factor = 2 ** (len(vae_blocks) - 1): the default (32, 32, 64, 64) gives 8, as real SD
    (a 512 px image has a 64 px latent). The decoder's full-resolution convolutions dominate big
    images: a 1024 px decode takes ~4.7 s with the default, ~0.9 s with (4, 8, 16, 16) on 2 cores."""
    AutoencoderKL = _module("diffusers").AutoencoderKL

    n = len(vae_blocks)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(vae_blocks),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, min(vae_blocks)),  # GroupNorm groups must divide every channel count
        sample_size=256,
        mid_block_add_attention=mid_attention,
    ).eval()


def build_scheduler() -> Any:
    """The SD-1.x beta schedule; any KarrasDiffusionSchedulers member works (Euler, DPM++, LCM...)."""
    DDIMScheduler = _module("diffusers").DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def build_tiny_pipeline(
    seed: int = 0,
    inpaint: bool = False,
    vae_blocks: tuple[int, ...] = (32, 32, 64, 64),
    unet_attn_full_res: bool = False,
) -> Any:
    """A tiny random StableDiffusion{,Inpaint}Pipeline on the CPU in float32 (~2.1M parameters, ~8 MB)."""
    _offline()
    torch, diffusers = _module("torch"), _module("diffusers")

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet(
        in_channels=9 if inpaint else 4,
        cross_attention_dim=text_encoder.config.hidden_size,
        attn_full_res=unet_attn_full_res,
    )
    cls = diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionPipeline
    pipe = cls(
        vae=build_vae(vae_blocks),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(out_dir: str | Path, *, inpaint: bool = False, seed: int = 0) -> Path:
    """Build a tiny pipeline and `save_pretrained` it into out_dir (safetensors); returns the folder."""
    out = Path(out_dir)
    build_tiny_pipeline(seed=seed, inpaint=inpaint).save_pretrained(out, safe_serialization=True)
    return out


# -- Stable Diffusion XL: two text encoders, a UNet conditioned on pooled text and size ids ----------

#: Width of the UNet's embedding of each of SDXL's 6 size ids (original size, crop corner, target size).
SDXL_TIME_EMBED_DIM = 8


def build_sdxl_unet(cross_attention_dim: int, pooled_dim: int, sample_size: int = 32) -> Any:
    """A tiny SDXL UNet: `text_time` additional conditioning takes the pooled text embedding of the
    second encoder plus 6 size ids, so its input width is 6 * addition_time_embed_dim + pooled_dim
    (the pipeline checks this against what it builds and refuses a mismatch)."""
    UNet2DConditionModel = _module("diffusers").UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
        use_linear_projection=True,  # as SDXL's transformer blocks
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + pooled_dim,
    ).eval()


def build_sdxl_scheduler() -> Any:
    """SDXL's own scheduler: Euler with the SD beta schedule and leading timestep spacing."""
    EulerDiscreteScheduler = _module("diffusers").EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        num_train_timesteps=1000,
    )


def build_tiny_sdxl_pipeline(seed: int = 0, vae_blocks: tuple[int, ...] = (32, 32, 64, 64)) -> Any:
    """A tiny random StableDiffusionXLPipeline on the CPU in float32.

    Like SDXL: a CLIPTextModel and a CLIPTextModelWithProjection whose penultimate hidden states are
    concatenated (cross-attention width 32 + 32), the second one's projected pooled output feeding the
    UNet's `text_time` embedding, and an Euler scheduler. Both tokenizers are the one trained locally.
    """
    _offline()
    torch, diffusers, transformers = _module("torch"), _module("diffusers"), _module("transformers")

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer)  # SDXL reads hidden_states[-2]: 2 layers are enough
    # Same shape, a projection head on top (its config class is shared with CLIPTextModel).
    text_encoder_2 = transformers.CLIPTextModelWithProjection(text_encoder.config).eval()
    unet = build_sdxl_unet(
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        pooled_dim=text_encoder_2.config.projection_dim,
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=build_vae(vae_blocks),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=build_sdxl_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        # Not saved by save_pretrained: a loader decides again (on if invisible-watermark is installed).
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sdxl_pipeline(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny SDXL pipeline and `save_pretrained` it into out_dir (safetensors); returns the folder."""
    out = Path(out_dir)
    build_tiny_sdxl_pipeline(seed=seed).save_pretrained(out, safe_serialization=True)
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "tiny-sd"
    is_inpaint = "--inpaint" in sys.argv
    print(
        "saved",
        "inpaint" if is_inpaint else "text-to-image",
        "pipeline to",
        save_tiny_pipeline(target, inpaint=is_inpaint),
    )
