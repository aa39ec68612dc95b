"""The speed levers of a diffusers model, each through the app: honoured where the family and device
can, refused at start-up (naming the option) where they cannot, and never leaked to another model.

`attention`: one model's attention backend. `step_cache`: diffusers' step caches on the denoiser.
"""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from limner.engines.jobs import GenerateJob
from limner.server.app import create_app
from limner.server.settings import ModelConfig, Settings

pytestmark = pytest.mark.diffusers


def test_a_backend_applies_to_its_model_only_and_gives_the_plain_image(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    models = {
        name: ModelConfig.model_validate(
            {
                "engine": "diffusers",
                "source": str(family_dirs["flux"]),
                "device": "cpu",
                "load": "startup",
                **extra,
            }
        )
        for name, extra in (("math", {"attention": "math"}), ("plain", {}))
    }
    before = _AttentionBackendRegistry._active_backend
    with TestClient(create_app(Settings(data_dir=tmp_path, models=models))) as client:
        images = {}
        for name in models:
            answer = client.post(
                "/v1/images/generations",
                json={"model": name, "prompt": "a cat", "size": "64x64", "seed": 3, "num_inference_steps": 2},
            )
            assert answer.status_code == 200, answer.text
            images[name] = answer.json()["data"][0]["b64_json"]
        engines = client.app.state.registry.engines  # type: ignore[attr-defined]
        math = engines["diffusers:math"]._loaded.base.transformer
        plain = engines["diffusers:plain"]._loaded.base.transformer

    def backends(model: Any) -> set[Any]:
        return {
            getattr(m.processor, "_attention_backend", "-")
            for m in model.modules()
            if hasattr(m, "processor")
        }

    assert {b.value for b in backends(math) if b not in ("-", None)} == {"_native_math"}
    assert backends(plain) <= {None, "-"}  # the other model stays at the default...
    assert _AttentionBackendRegistry._active_backend == before  # ...and so does the process
    from tests.support.images import decode_b64

    pixels = [np.asarray(decode_b64(b), dtype=np.int16) for b in images.values()]
    assert int(np.abs(pixels[0] - pixels[1]).max()) <= 1  # lossless: float noise at most


@pytest.mark.parametrize(
    ("family", "value", "says"),
    [
        ("sd3", "sdpa", "calls PyTorch's attention directly"),
        ("sana", "math", "calls PyTorch's attention directly"),
        ("flux", "flash", "flash-attn"),
        ("flux", "_native_flash", "needs an accelerator"),
        ("flux", "bogus", "expected sdpa, math or one of"),
    ],
)
def test_a_backend_that_would_change_nothing_or_cannot_run_stops_the_start_up(
    family_dirs: dict[str, Path], family: str, value: str, says: str
) -> None:
    _refused_at_start_up(family_dirs[family], "attention", value, says)


def _refused_at_start_up(source: Path, option: str, value: Any, says: str) -> None:
    """create_engine refuses `option = value` with an error that names the option and says `says`."""
    from limner.engines.diffusers import create_engine

    with pytest.raises(ValueError, match=f"'{option}") as refused:  # 'step_cache.kind' too
        create_engine("m", {"source": str(source), "device": "cpu", option: value})
    assert says in str(refused.value)


def _serve(tmp_path: Path, models: dict[str, dict[str, Any]]) -> TestClient:
    configs = {
        name: ModelConfig.model_validate({"engine": "diffusers", "device": "cpu", "load": "startup", **table})
        for name, table in models.items()
    }
    return TestClient(create_app(Settings(data_dir=tmp_path, models=configs)))


def _draw(client: TestClient, model: str, **fields: Any) -> np.ndarray:
    from tests.support.images import decode_b64

    body = {"model": model, "prompt": "a cat", "size": "64x64", "seed": 3, "num_inference_steps": 6, **fields}
    answer = client.post("/v1/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    return np.asarray(decode_b64(answer.json()["data"][0]["b64_json"]), dtype=np.int16)


def test_a_step_cache_skips_steps_of_its_model_only_and_edits_still_run(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from tests.support.images import gradient, png_bytes

    flux = str(family_dirs["flux"])
    with _serve(
        tmp_path,
        {
            # A threshold no step stays above: every step after the first reuses the first's residual.
            "cached": {"source": flux, "step_cache": {"kind": "first_block", "threshold": 1e9}},
            "plain": {"source": flux},
        },
    ) as client:
        plain = _draw(client, "plain")
        cached = _draw(client, "cached")
        assert int(np.abs(cached - plain).max()) > 0  # honoured: the steps were skipped
        assert int(np.abs(_draw(client, "cached") - cached).max()) == 0  # its state starts afresh each call
        assert int(np.abs(_draw(client, "plain") - plain).max()) == 0  # the other model is untouched
        # Image-to-image through FLUX.1 marks no passes: the cache is off for it, the edit runs.
        edit = client.post(
            "/v1/images/edits",
            data={"model": "cached", "prompt": "blue", "size": "64x64", "num_inference_steps": "4"},
            files={"image": ("in.png", png_bytes(gradient(64, 64)), "image/png")},
        )
        assert edit.status_code == 200, edit.text


@pytest.mark.parametrize(
    ("family", "value", "says"),
    [
        ("sd3", {"kind": "first_block"}, "has no step cache in diffusers"),
        ("z-image", {"kind": "taylorseer"}, "has no step cache in diffusers"),
        ("flux2-klein", {"kind": "first_block"}, "use taylorseer"),
        ("qwen-image", {"kind": "mag"}, "mag needs mag_ratios for QwenImageTransformer2DModel"),
        ("flux", {"kind": "first_block", "treshold": 0.1}, "unknown for first_block"),
        ("flux", "fast", "expected { kind ="),
    ],
)
def test_a_step_cache_the_family_cannot_take_stops_the_start_up(
    family_dirs: dict[str, Path], family: str, value: Any, says: str
) -> None:
    _refused_at_start_up(family_dirs[family], "step_cache", value, says)


def test_int8_weights_shrink_the_denoiser_and_keep_the_sensitive_layers(
    tiny_text2image_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torchao")
    source = str(tiny_text2image_dir)
    with _serve(
        tmp_path, {"int8": {"source": source, "quantize": "int8"}, "plain": {"source": source}}
    ) as client:
        plain, quantized = _draw(client, "plain"), _draw(client, "int8")
        health = client.get("/health").json()["residency"]["models"]
        engines = client.app.state.registry.engines  # type: ignore[attr-defined]
        unet = engines["diffusers:int8"]._loaded.base.unet
        kept = engines["diffusers:int8"].model.quantize.keep
    assert health["int8"]["bytes"]["measured"] < health["plain"]["bytes"]["measured"]  # resident bytes drop
    assert 0 < int(np.abs(quantized - plain).max()) <= 24  # lossy, but the same picture
    kinds = {
        name: type(module.weight).__name__
        for name, module in unet.named_modules()
        if hasattr(module, "weight") and name.endswith(("to_q", "linear_1"))
    }
    assert any(kind == "Int8Tensor" for name, kind in kinds.items() if name.endswith("to_q"))
    assert "time_embedding.linear_1" in kept and kinds["time_embedding.linear_1"] == "Parameter"


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("quantize", "int4", "expected int8 or float8"),
        ("offload", "model", "runs on the CPU"),
        ("offload", "disk", "expected model or group"),
    ],
)
def test_precision_options_the_device_cannot_honour_stop_the_start_up(
    tiny_text2image_dir: Path, option: str, value: str, says: str
) -> None:
    _refused_at_start_up(tiny_text2image_dir, option, value, says)


def test_a_compiled_model_is_warmed_up_at_load_draws_the_plain_image_and_swaps_adapters(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """One tiny model compiled (CPU inductor: about a minute cold), as the issue asks of CI, with two
    adapters (ranks 4 and 2) swapped into its slots: each request equals the uncompiled model's."""
    import torch._dynamo

    from tests.support.loras import make_lora

    flux = family_dirs["flux"]
    style = make_lora(flux, tmp_path / "style.safetensors", seed=1)
    make_lora(flux, tmp_path / "loras" / "small.safetensors", seed=2, rank=2, targets=("to_q", "to_k"))
    adapters = {"loras": {"style": str(style)}, "lora_dir": str(tmp_path / "loras"), "max_loras": 2}
    with _serve(
        tmp_path,
        {
            "compiled": {"source": str(flux), "compile": True, "sizes": ["64x64"], **adapters},
            "plain": {"source": str(flux), **adapters},
        },
    ) as client:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs > 0  # compiled while loading, before serving
        asks: list[dict[str, Any]] = [
            {},
            {"lora": ["style"]},
            {"lora": {"style": 0.5}},
            {"lora": ["small"]},
            {"lora": ["small", "style"]},
            {},
        ]
        compiled = [_draw(client, "compiled", **ask) for ask in asks]
        # Nothing compiled in a request, adapters swapped and rescaled included.
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
        plain = [_draw(client, "plain", **ask) for ask in asks]
    for ask, got, want in zip(asks, compiled, plain, strict=True):
        assert int(np.abs(got - want).max()) <= 1, ask  # lossless: float noise at most
    assert int(np.abs(compiled[1] - compiled[0]).max()) > 8  # the adapter changes the image
    assert np.array_equal(compiled[5], compiled[0])  # the slots at zero: the base model's pixels
    assert (tmp_path / "compile-cache").is_dir() or os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def test_compile_refuses_what_it_cannot_work_with(
    tiny_text2image_dir: Path, family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from limner.engines.diffusers import create_engine
    from limner.errors import InvalidValue
    from tests.support.loras import make_lora

    sd = str(tiny_text2image_dir)
    with pytest.raises(ValueError, match=r"'compile'.*step_cache"):
        create_engine(
            "m",
            {
                "source": str(family_dirs["flux"]),
                "device": "cpu",
                "compile": True,
                "step_cache": {"kind": "first_block"},
            },
        )
    with pytest.raises(ValueError, match="'compile'"):
        create_engine("m", {"source": sd, "device": "cpu", "compile": "yes"})
    # Adapters: the slots are shaped at start-up, by the adapters of the denoiser found then.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"'compile'.*at least one adapter"):
        create_engine(
            "m", {"source": sd, "device": "cpu", "compile": True, "lora_dir": str(tmp_path / "empty")}
        )
    words = make_lora(tiny_text2image_dir, tmp_path / "words.safetensors", seed=3, text_encoder=True)
    with pytest.raises(ValueError, match=r"'loras.words'.*text encoder"):
        create_engine("m", {"source": sd, "device": "cpu", "compile": True, "loras": {"words": str(words)}})
    style = make_lora(tiny_text2image_dir, tmp_path / "style.safetensors", seed=1, targets=("to_q",))
    dir_ = tmp_path / "dir"
    make_lora(tiny_text2image_dir, dir_ / "deep.safetensors", seed=4, rank=8, targets=("to_q",))
    table: dict[str, Any] = {"source": sd, "device": "cpu", "compile": True, "loras": {"style": str(style)}}
    engine = create_engine("m", {**table, "lora_dir": str(dir_), "lora_rank": 4})
    # Added after the start-up, on a module the slots do not cover.
    make_lora(tiny_text2image_dir, dir_ / "wide.safetensors", seed=2, targets=("to_q", "to_v"))
    assert engine.adapters() == ["style"]  # neither adapter of the folder fits the slots
    with pytest.raises(InvalidValue, match="do not cover") as outside:
        engine.check(GenerateJob(prompt="p", width=64, height=64, loras=(("wide", None),)))
    with pytest.raises(InvalidValue, match="rank 8 is above") as deeper:
        engine.check(GenerateJob(prompt="p", width=64, height=64, loras=(("deep", None),)))
    assert outside.value.param == deeper.value.param == "lora"
    # Without lora_rank the slots take the largest rank found at start-up: the deep adapter fits.
    assert "deep" in create_engine("m", {**table, "lora_dir": str(dir_)}).adapters()
    with pytest.raises(ValueError, match=r"'lora_rank'.*below the rank 4 of adapter 'style'"):
        create_engine("m", {**table, "lora_rank": 2})
    with pytest.raises(ValueError, match=r"'lora_rank'.*compile"):
        create_engine("m", {**table, "compile": False, "lora_rank": 8})
    with pytest.raises(ValueError, match="'max_loaded_loras'"):
        create_engine("m", {**table, "max_loaded_loras": 2})


# One family per latent layout the callback hands over: spatial (SD; SD3, Z-Image and SANA too), FLUX.1's
# 2x2 packing, Qwen-Image's video VAE, FLUX.2's patchified batch-norm latents. Every family streams
# fitted partial images in tests/compat/test_families.py.
@pytest.mark.parametrize("family", ["sd", "flux", "qwen-image", "flux2-klein"])
def test_a_fitted_preview_is_close_to_the_vae_preview_in_every_family(
    family: str, family_dirs: dict[str, Path], tiny_text2image_dir: Path
) -> None:
    """The fitted map draws held-out latents closer to the VAE preview than their best flat colour."""
    import torch

    from limner.engines.diffusers import create_engine
    from limner.engines.diffusers.fitted_preview import _encode, to_callback_layout
    from limner.engines.diffusers.previews import PreviewDecoder

    source = tiny_text2image_dir if family == "sd" else family_dirs[family]
    engine = create_engine("m", {"source": str(source), "device": "cpu", "preview": "fitted"})
    engine.load()
    pipe, layout, fit = engine._loaded.base, engine.caps.family.preview, engine.model.preview_fit
    assert fit is not None
    held_out = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(11)) * 2 - 1
    images = torch.nn.functional.interpolate(held_out, size=(128, 128), mode="bicubic").clamp(-1, 1)
    latents = to_callback_layout(pipe, _encode(pipe.vae, images, layout), layout)
    fitted = PreviewDecoder(pipe, "fitted", 128, 128, layout, fit=fit).decode(latents)
    exact = PreviewDecoder(pipe, "vae", 128, 128, layout).decode(latents)
    assert fitted is not None and exact is not None

    # Compared at the latent grid's resolution, the detail a linear map of the latents can carry (the
    # tiny random VAEs add pixel noise of their own, which no preview of this kind draws).
    side = 128 // (int(pipe.vae_scale_factor) * (1 if layout == "spatial" else 2))
    correlations = []
    for drawn, decoded in zip(fitted, exact, strict=True):
        assert drawn.size == decoded.size
        # At the latent grid's resolution (the detail a linear map of the latents can carry; the tiny
        # random VAEs add pixel noise of their own), the fitted colours follow the decoded ones.
        reference = np.asarray(decoded.resize((side, side), Image.Resampling.BOX), dtype=float)
        guess = np.asarray(drawn.resize((side, side), Image.Resampling.BOX), dtype=float)
        centred = [(x - x.mean(axis=(0, 1))).ravel() for x in (guess, reference)]
        correlations.append(
            float(np.dot(*centred) / (np.linalg.norm(centred[0]) * np.linalg.norm(centred[1])))
        )
    # Measured on the tiny random VAEs: 0.25 (SD) to 0.9 (Qwen-Image); a map unrelated to the VAE: ~0.
    assert min(correlations) > 0 and float(np.mean(correlations)) > 0.2, correlations


def test_magcache_runs_with_a_config_per_step_count(family_dirs: dict[str, Path]) -> None:
    """MagCache counts a run's calls against its step count: requests of 4 and of 6 steps each run
    with their own config (FLUX.1's ratios, shipped by diffusers)."""
    from limner.engines.diffusers import create_engine
    from limner.engines.jobs import GenerateJob, JobContext

    engine = create_engine(
        "m",
        {
            "source": str(family_dirs["flux"]),
            "device": "cpu",
            "step_cache": {"kind": "mag", "threshold": 0.5},
        },
    )
    for steps in (4, 6, 4):
        job = GenerateJob(prompt="a cat", width=64, height=64, seed=1, num_inference_steps=steps)
        assert engine.generate(job, JobContext())[0].size == (64, 64)
    cache = engine.model.step_cache
    assert {config.num_inference_steps for config in cache._configs.values()} == {4, 6}


def test_the_prompt_cache_serves_a_batch_row_by_row(tiny_text2image_dir: Path) -> None:
    """A prompt encoded alone is a hit inside a later batch of other prompts, and the batch draws
    what the uncached engine draws."""
    from limner.engines.diffusers import create_engine
    from limner.engines.jobs import GenerateJob, JobContext

    def job(prompt: str, seed: int) -> GenerateJob:
        return GenerateJob(prompt=prompt, width=64, height=64, seed=seed, num_inference_steps=3)

    def draw(engine: Any, jobs: list[GenerateJob]) -> list[np.ndarray]:
        out = engine.run_batch(jobs, [JobContext() for _ in jobs])
        return [np.asarray(images[0], dtype=np.int16) for images in out]

    options = {"source": str(tiny_text2image_dir), "device": "cpu", "max_batch": 4}
    cached, plain = (
        create_engine("c", {**options, "prompt_cache_mb": 16}),
        create_engine("p", {**options, "prompt_cache_mb": 0}),
    )
    for engine in (cached, plain):
        engine.load()
    draw(cached, [job("a red boat", 1)])
    before = cached.counters()
    batch = [job("a red boat", 2), job("a green hill", 3)]
    with_cache, without = draw(cached, batch), draw(plain, batch)
    after = cached.counters()
    # The red boat's row (and the empty negative prompt's rows) came from the cache; the hill ran.
    assert after["prompt_cache_hits"] - before["prompt_cache_hits"] >= 1
    assert after["prompt_cache_misses"] - before["prompt_cache_misses"] >= 1
    for a, b in zip(with_cache, without, strict=True):
        assert int(np.abs(a - b).max()) <= 2  # a row encoded alone against in a batch: float noise
    # Unloading frees the weights by reference counting: the cache's wrappers hold no cycle through
    # the text encoders (a model swap would otherwise wait for a garbage collection).
    encoder = weakref.ref(cached._loaded.base.text_encoder)
    collections = []
    gc.disable()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gc, "collect", lambda *args: collections.append(args) or 0)
            cached.close()
        assert encoder() is None and not collections
    finally:
        gc.enable()
