"""Build a tiny random Qwen-Image 2.1 pipeline (QwenImage21Pipeline) offline and save_pretrained it.

    python build_qwenimage21.py OUT_DIR BUILDERS_DIR

In the manner of ../shared/examples/families (whose tiny_common.py, in BUILDERS_DIR, makes the
tokenizer): a Qwen3-VL text encoder and processor (tiny text and vision towers), the block-causal
QwenImage21Transformer2DModel on unpacked 16-channel latents, and AutoencoderKLQwenImage21, the RGBA
VAE (4 channels in and out, 16x): the one pipeline in diffusers 0.42 that draws real alpha. Needs
torchvision (transformers 5 builds the Qwen3-VL processor with a video processor).
"""

from __future__ import annotations

import sys


def build(builders: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, builders)
    import tiny_common as tc  # sets HF_HUB_OFFLINE first
    import torch
    from diffusers import (
        AutoencoderKLQwenImage21,
        FlowMatchEulerDiscreteScheduler,
        QwenImage21Pipeline,
        QwenImage21Transformer2DModel,
    )
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    torch.manual_seed(0)
    tok = tc.qwen2_tokenizer(extra_specials=("<think>", "</think>"))
    hidden = 32
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    }
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=2048,
            rope_scaling=rope,
            rope_parameters=rope,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=hidden,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    sizes = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes, min_pixels=32 * 32, max_pixels=64 * 64 * 4),
        tokenizer=tok,
        video_processor=Qwen3VLVideoProcessor(**sizes),
        chat_template=tc.CHATML_TEMPLATE,
    )
    return QwenImage21Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            base_shift=0.5,
            max_shift=0.9,
            time_shift_type="exponential",
        ),
        vae=AutoencoderKLQwenImage21(
            base_dim=8,
            decoder_base_dim=8,
            z_dim=16,
            dim_mult=[1, 1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True, True],
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        ),
        text_encoder=Qwen3VLForConditionalGeneration(config).eval(),
        processor=processor,
        transformer=QwenImage21Transformer2DModel(
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            context_in_dim=hidden,
            axes_dims_rope=(4, 6, 6),
        ),
    )


if __name__ == "__main__":
    build(sys.argv[2]).save_pretrained(sys.argv[1])
