"""The engine's speed levers, each against the plain pipeline, side by side in one run.

    .venv/bin/python -m bench.bench_levers [--families sd,flux,...] [--rounds 3] [--steps 8] [--size 64]
                                           [--compile flux] [--source FOLDER --family-name NAME]
                                           [--device cpu|cuda]

For each lever on each tiny family (same prompt and seeds; rounds alternate between the lever's engine
and the plain one, so drift on the machine hits both alike): the median time per image against plain,
the quality against the plain image (largest pixel difference, PSNR, SSIM), and the resident bytes.
Then, per family: the share of a request spent in text encoding, denoising, decoding and PNG encoding,
with and without the prompt cache on a repeated prompt; and the cost of one partial image, fitted and
VAE-decoded, as a share of a denoising step.

Levers: `attention=math` (where the denoiser dispatches attention), `step_cache` first_block and
taylorseer (FLUX.1, FLUX.2-klein, Qwen-Image; first_block not on FLUX.2), `quantize` int8 and float8,
`compile` (for the families in --compile: on 2 CPU cores a cold compile of a tiny model takes about a
minute). A GPU owner measures a real model with the same script:

    python -m bench.bench_levers --source /models/flux-dev --family-name flux --device cuda \\
        --size 1024 --steps 28 --compile flux
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from limner.engines.diffusers import create_engine
from limner.engines.jobs import GenerateJob, JobContext

PROMPT = "a lighthouse on a rocky coast at dusk, oil painting"
STEP_CACHES = {
    "flux": ("first_block", "taylorseer"),
    "flux2-klein": ("taylorseer",),
    "qwen-image": ("first_block", "taylorseer"),
}
DISPATCHING = ("flux", "flux2-klein", "qwen-image", "z-image")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over the colour channels (Gaussian window, sigma 1.5, as Wang et al.)."""
    import torch

    x = torch.from_numpy(a).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].double()
    size = min(11, a.shape[0], a.shape[1])
    grid = torch.arange(size, dtype=torch.double) - size // 2
    gauss = torch.exp(-(grid**2) / (2 * 1.5**2))
    window = (gauss[:, None] * gauss[None, :]) / gauss.sum() ** 2
    window = window.expand(3, 1, size, size)

    def blur(t: Any) -> Any:
        return torch.nn.functional.conv2d(t, window, groups=3)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


class Family:
    """One family's engines (plain and levers) and what to draw."""

    def __init__(self, name: str, source: str, device: str, size: int, steps: int) -> None:
        self.name, self.source, self.device, self.size, self.steps = name, source, device, size, steps

    def engine(self, **options: Any) -> Any:
        engine = create_engine(
            self.name, {"source": self.source, "device": self.device, "prompt_cache_mb": 0, **options}
        )
        engine.load()
        return engine

    def draw(self, engine: Any, seed: int = 1, prompt: str = PROMPT) -> np.ndarray:
        job = GenerateJob(
            prompt=prompt, width=self.size, height=self.size, seed=seed, num_inference_steps=self.steps
        )
        return np.asarray(engine.run_batch([job], [JobContext()])[0][0].convert("RGB"), dtype=np.int16)


def timed(draw: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    image = draw()
    return time.perf_counter() - started, image


def compare_levers(
    family: Family, rounds: int, compile_it: bool
) -> list[tuple[str, float, int, float, float, float]]:
    levers: dict[str, dict[str, Any]] = {}
    if family.name in DISPATCHING:
        levers["attention=math"] = {"attention": "math"}
    for kind in STEP_CACHES.get(family.name, ()):
        levers[f"step_cache={kind}"] = {"step_cache": {"kind": kind}}
    levers["quantize=int8"] = {"quantize": "int8"}
    levers["quantize=float8"] = {"quantize": "float8"}
    if compile_it:
        levers["compile"] = {"compile": True, "sizes": [f"{family.size}x{family.size}"]}
    plain = family.engine()
    family.draw(plain)  # warm-up
    rows = []
    for label, options in levers.items():
        engine = family.engine(**options)
        family.draw(engine)
        lever_times, plain_times = [], []
        image = reference = None
        for round_ in range(rounds):
            for which in ((engine, lever_times), (plain, plain_times))[:: 1 if round_ % 2 == 0 else -1]:
                seconds, drawn = timed(lambda e=which[0]: family.draw(e))
                which[1].append(seconds)
                if which[0] is engine:
                    image = drawn
                else:
                    reference = drawn
        assert image is not None and reference is not None
        ratio = statistics.median(lever_times) / statistics.median(plain_times)
        held = engine.memory().measured / plain.memory().measured
        a, b = image.astype(np.uint8), reference.astype(np.uint8)
        rows.append((label, ratio, int(np.abs(image - reference).max()), psnr(a, b), ssim(a, b), held))
        engine.close()
    return rows


def stage_shares(family: Family, cached: bool, rounds: int) -> dict[str, float]:
    """Seconds per request in each stage (median of `rounds`), the prompt cache on (a repeated
    prompt: a hit) or off."""
    from limner import imaging

    engine = family.engine(prompt_cache_mb=64 if cached else 0)
    pipe = engine._loaded.base
    spent = {"text encoding": 0.0, "denoising": 0.0, "decoding": 0.0}

    def clock(module: Any, stage: str) -> None:
        forward = module.forward

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                spent[stage] += time.perf_counter() - started

        module.forward = timed_forward

    for name, component in pipe.components.items():
        if name.startswith("text_encoder") and component is not None:
            clock(component, "text encoding")
    clock(getattr(pipe, "transformer", None) or pipe.unet, "denoising")
    decode = pipe.vae.decode

    def timed_decode(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return decode(*args, **kwargs)
        finally:
            spent["decoding"] += time.perf_counter() - started

    pipe.vae.decode = timed_decode
    family.draw(engine)  # the first time: a miss
    samples: list[dict[str, float]] = []
    for _ in range(rounds):  # a stage of a tiny model takes a millisecond: the median of several
        for key in spent:
            spent[key] = 0.0
        started = time.perf_counter()
        image = family.draw(engine)
        total = time.perf_counter() - started
        png_started = time.perf_counter()
        imaging.encode_image(Image.fromarray(image.astype(np.uint8)), output_format="png")
        spent["png encoding"] = time.perf_counter() - png_started
        spent["total"] = total + spent["png encoding"]
        samples.append(dict(spent))
    engine.close()
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def preview_costs(family: Family) -> tuple[float, float, float, float]:
    """(ms of a fitted partial image, ms of a VAE one, ms of one denoising step, PSNR of the fitted
    preview against the VAE-decoded one, at the output size)."""
    import torch

    from limner.engines.diffusers.fitted_preview import _encode, _synthetic, to_callback_layout
    from limner.engines.diffusers.previews import PreviewDecoder

    engine = family.engine(preview="fitted")
    pipe, layout = engine._loaded.base, engine.caps.family.preview
    size = family.size
    images = torch.nn.functional.interpolate(_synthetic(torch, 4), size=(size, size), mode="bilinear")
    latents = to_callback_layout(pipe, _encode(pipe.vae, images, layout), layout)[:1]
    fitted = PreviewDecoder(pipe, "fitted", size, size, layout, fit=engine.model.preview_fit)
    exact = PreviewDecoder(pipe, "vae", size, size, layout)

    def median_ms(call: Callable[[], Any]) -> float:
        call()
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1000

    fitted_ms, vae_ms = median_ms(lambda: fitted.decode(latents)), median_ms(lambda: exact.decode(latents))
    drawn, decoded = fitted.decode(latents), exact.decode(latents)
    assert drawn is not None and decoded is not None
    quality = psnr(np.asarray(drawn[0].convert("RGB")), np.asarray(decoded[0].convert("RGB")))
    step_ms = median_ms(lambda: family.draw(engine)) / family.steps
    engine.close()
    return fitted_ms, vae_ms, step_ms, quality


def quantized_bytes(family: Family, kind: str) -> tuple[float, float, int, int]:
    """(the quantized layers' bytes over their float32 bytes, the whole denoiser's bytes over the
    plain one's, layers quantized, layers kept in the compute dtype)."""
    import torch

    from limner.engines.diffusers.sizing import measure_modules

    def denoiser(engine: Any) -> Any:
        return getattr(engine._loaded.base, "transformer", None) or engine._loaded.base.unet

    plain, quantized = family.engine(), family.engine(quantize=kind)
    held = held_plain = 0
    count = 0
    for name, module in denoiser(quantized).named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or type(weight.data) in (torch.Tensor,):
            continue
        count += 1
        original = denoiser(plain).get_submodule(name).weight
        held += measure_modules([module], family.device) - (
            module.bias.numel() * module.bias.element_size()
            if getattr(module, "bias", None) is not None
            else 0
        )
        held_plain += original.numel() * original.element_size()

    def whole(engine: Any) -> int:
        return measure_modules([denoiser(engine)], family.device)

    ratio = whole(quantized) / whole(plain)
    kept = len(quantized.model.quantize.keep)
    plain.close()
    quantized.close()
    return held / held_plain, ratio, count, kept


def width_bytes(kind: str, width: int) -> float:
    """One square linear layer of a real model's width, quantized as limner quantizes: its bytes over
    its float32 bytes (the per-row scales weigh 4 / width: a lot on the tiny models' 16 to 32)."""
    import torch
    from torchao import quantization

    from limner.engines.diffusers.precision import QUANTIZE
    from limner.engines.diffusers.sizing import measure_modules

    layer = torch.nn.Sequential(torch.nn.Linear(width, width, bias=False))
    plain = measure_modules([layer], "cpu")
    quantization.quantize_(layer, getattr(quantization, QUANTIZE[kind])())
    return measure_modules([layer], "cpu") / plain


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default="sd,sd3,flux,flux2-klein,qwen-image,z-image,sana")
    parser.add_argument("--source", help="one model folder instead of the tiny families (with --family-name)")
    parser.add_argument("--family-name", default="custom", help="the family of --source (sd, flux, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--compile", default="", help="families to compile too, comma-separated")
    args = parser.parse_args()
    if args.source:
        sources = {args.family_name: args.source}
    else:
        from tests.support.family_pipelines import build_all
        from tests.support.tiny_pipeline import save_tiny_pipeline

        folders = build_all()
        sd = Path(os.environ.get("TMPDIR", "/tmp")) / "limner-bench-tiny-sd"
        if not (sd / "model_index.json").is_file():
            save_tiny_pipeline(sd)
        folders["sd"] = sd
        sources = {name: str(folders[name]) for name in args.families.split(",")}
    compiled = set(filter(None, args.compile.split(",")))

    print(
        f"levers against plain: {args.size}x{args.size}, {args.steps} steps, {args.rounds} alternating rounds, {args.device}\n"
    )
    print("| family | lever | time vs plain | max diff | PSNR dB | SSIM | resident bytes vs plain |")
    print("|---|---|---|---|---|---|---|")
    families = {
        name: Family(name, source, args.device, args.size, args.steps) for name, source in sources.items()
    }
    for name, family in families.items():
        for label, ratio, diff, quality, structure, held in compare_levers(
            family, args.rounds, name in compiled
        ):
            shown = "inf" if quality == float("inf") else f"{quality:.1f}"
            print(f"| {name} | {label} | {ratio:.2f} | {diff} | {shown} | {structure:.4f} | {held:.3f} |")

    print("\nquantized weights against float32:\n")
    print(
        "| family | kind | quantized layers' bytes | whole denoiser's bytes | layers quantized | layers kept |"
    )
    print("|---|---|---|---|---|---|")
    for name, family in families.items():
        for kind in ("int8", "float8"):
            layers, whole, count, kept = quantized_bytes(family, kind)
            print(f"| {name} | {kind} | {layers:.3f} | {whole:.3f} | {count} | {kept} |")

    print("\none linear layer at the widths of real models (SANA-600M 1152, SDXL 1280, FLUX.1 3072):\n")
    print("| width | int8 bytes vs float32 | float8 bytes vs float32 |")
    print("|---|---|---|")
    for width in (16, 1152, 1280, 3072):
        print(f"| {width} | {width_bytes('int8', width):.3f} | {width_bytes('float8', width):.3f} |")

    print("\nshare of a request (repeated prompt), prompt cache off -> on:\n")
    print("| family | text encoding | denoising | decoding | png encoding | total ms | text encoding saved |")
    print("|---|---|---|---|---|---|---|")
    for name, family in families.items():
        off, on = stage_shares(family, False, 5 * args.rounds), stage_shares(family, True, 5 * args.rounds)
        shares = " | ".join(
            f"{off[s] / off['total']:.0%} -> {on[s] / on['total']:.0%}"
            for s in ("text encoding", "denoising", "decoding", "png encoding")
        )
        saved = 1 - on["text encoding"] / off["text encoding"] if off["text encoding"] else 0.0
        print(f"| {name} | {shares} | {off['total'] * 1000:.0f} -> {on['total'] * 1000:.0f} | {saved:.0%} |")

    print("\none partial image, fitted against VAE-decoded:\n")
    print("| family | fitted ms | VAE ms | fitted / VAE | fitted / step | VAE / step | PSNR fitted vs VAE |")
    print("|---|---|---|---|---|---|---|")
    for name, family in families.items():
        fitted_ms, vae_ms, step_ms, quality = preview_costs(family)
        print(
            f"| {name} | {fitted_ms:.2f} | {vae_ms:.1f} | {fitted_ms / vae_ms:.3f} | {fitted_ms / step_ms:.2f} "
            f"| {vae_ms / step_ms:.2f} | {quality:.1f} dB |"
        )


if __name__ == "__main__":
    main()
