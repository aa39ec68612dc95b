"""The diffusers engine and the server around it, against a direct pipeline call, side by side in one run.

    .venv/bin/python bench/bench_diffusers.py [--source FOLDER_OR_HUB_ID] [--steps 4] [--sizes 256,512]
                                              [--rounds 5] [--no-server]

Three ways to make the same image (same prompt, size, steps, seed, the model's own scheduler and
guidance), timed in alternating rounds so that drift on the machine hits all three alike:

1. direct: `AutoPipelineForText2Image.from_pretrained(source)` called in this process;
2. engine: `limner.engines.diffusers` generate() in this process (per-call pipeline view, fresh
   scheduler, per-image generator, output checks);
3. server: the official `openai` client, `response_format="b64_json"`, over HTTP to a real
   `limner serve --model bench=diffusers:SOURCE` on 127.0.0.1 (parse, rules, queue, worker thread,
   PNG encoding, base64, JSON), seed and steps sent through `extra_body`.

The direct call gets the arguments the engine sends for the model's family (a Qwen-Image model's
default negative prompt " ", which turns its true CFG on; SANA's resolution binning off), so that any
family folder is compared like for like: `--source` takes the tiny family folders that
tests/support/family_pipelines.py builds, or a real checkpoint.

Prints the median seconds of each and the ratios to a direct call (the issue's goal: server/direct
<= 1.05) and to a direct call plus the PNG encoding every response needs ("+png": what is left is the
serving overhead itself), and checks that the images are the same picture. Without --source the
tiny random pipeline from tests/support is built into a temporary folder (CPU-sized); with a real
source on a GPU the same script measures a real-size architecture (device and dtype are "auto" in all
three ways: CUDA and float16 when there is a GPU).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from limner import imaging
from limner.engines.diffusers import create_engine
from limner.engines.diffusers.loading import _dtype_keyword
from limner.engines.jobs import GenerateJob, JobContext

PROMPT = "a lighthouse on a rocky coast at dusk, oil painting"
MODEL = "bench"


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b.convert("RGB"), np.int16)).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", help="a diffusers model folder or hub id (default: build the tiny one)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps, the same in every way")
    parser.add_argument("--sizes", default="256,512", help="square sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per size (after one warm-up)")
    parser.add_argument("--no-server", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            from tests.support.tiny_pipeline import save_tiny_pipeline

            source = str(save_tiny_pipeline(Path(tmp) / "tiny-sd"))
            print(f"built the tiny random pipeline into {source}")
        run(source, sizes, args.steps, args.rounds, with_server=not args.no_server, tmp=Path(tmp))


def run(source: str, sizes: list[int], steps: int, rounds: int, *, with_server: bool, tmp: Path) -> None:
    import torch
    from diffusers import AutoPipelineForText2Image

    engine = create_engine(MODEL, {"source": source})
    engine.load()
    kwargs: dict[str, Any] = {"local_files_only": True} if os.path.isdir(source) else {}
    kwargs[_dtype_keyword()] = engine.dtype  # the engine's device and dtype: the same work both ways
    pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs).to(engine.device)
    pipe.set_progress_bar_config(disable=True)
    print(f"model {source}: {type(pipe).__name__} on {engine.device}, {engine.dtype}, {steps} steps")

    import inspect

    family = engine.calls._text_kwargs(GenerateJob(width=64, height=64, prompt=PROMPT), PROMPT)
    family.pop("prompt")
    takes = inspect.signature(pipe.__call__).parameters
    if "use_resolution_binning" in takes:
        family["use_resolution_binning"] = False
    if "guidance_scale" in takes and engine.caps.guidance == "none":
        family["guidance_scale"] = 1.0
    print(f"family {engine.caps.family.name}: the direct call also gets {family}")

    def direct(size: int, seed: int) -> Image.Image:
        generator = torch.Generator("cpu").manual_seed(seed)
        area = {"max_area": size * size} if "max_area" in takes else {}  # Kontext: else 1024x1024
        out = pipe(
            prompt=PROMPT,
            height=size,
            width=size,
            num_inference_steps=steps,
            generator=generator,
            **family,
            **area,
        )
        image: Image.Image = out.images[0]
        return image

    def via_engine(size: int, seed: int) -> Image.Image:
        job = GenerateJob(width=size, height=size, prompt=PROMPT, seed=seed, num_inference_steps=steps)
        return engine.generate(job, JobContext())[0]

    def direct_png(size: int, seed: int) -> Image.Image:
        # What every API response must also do: encode the picture (PNG, the server's default).
        image = direct(size, seed)
        imaging.encode_image(image, output_format="png", compression=None)
        return image

    ways: dict[str, Callable[[int, int], Image.Image]] = {
        "direct": direct,
        "+png": direct_png,
        "engine": via_engine,
    }

    server_cm = None
    if with_server:
        import openai

        from tests.support.server import start_server

        server_cm = start_server(tmp / "server", "--model", f"{MODEL}=diffusers:{source}", timeout=300)
        server = server_cm.__enter__()
        client = openai.OpenAI(base_url=server.api_base, api_key="bench", max_retries=0, timeout=600)

        def via_server(size: int, seed: int) -> Image.Image:
            response = client.images.generate(
                model=MODEL,
                prompt=PROMPT,
                size=f"{size}x{size}",
                response_format="b64_json",
                extra_body={"seed": seed, "num_inference_steps": steps},
            )
            assert response.data and response.data[0].b64_json
            return Image.open(io.BytesIO(base64.b64decode(response.data[0].b64_json)))

        ways["server"] = via_server

    try:
        print(f"\n{'size':>9} {'way':>7} {'median s':>9} {'min s':>8} {'/direct':>8} {'/+png':>8}")
        for size in sizes:
            for way in ways.values():
                way(size, 0)  # warm-up: lazy loading, kernel selection for this shape
            times: dict[str, list[float]] = {name: [] for name in ways}
            last: dict[str, Image.Image] = {}
            for r in range(rounds):
                for name, way in ways.items():
                    started = time.perf_counter()
                    last[name] = way(size, 1000 + r)
                    times[name].append(time.perf_counter() - started)
            base = statistics.median(times["direct"])
            encoded = statistics.median(times["+png"])
            for name, values in times.items():
                median = statistics.median(values)
                print(
                    f"{size:>4}x{size:<4} {name:>7} {median:9.3f} {min(values):8.3f} {median / base:8.3f} "
                    f"{median / encoded:8.3f}"
                )
            diffs = {
                name: _max_diff(last["direct"], image) for name, image in last.items() if name != "direct"
            }
            print(f"          same picture as direct (max pixel difference): {diffs}")
    finally:
        if server_cm is not None:
            server_cm.__exit__(None, None, None)


if __name__ == "__main__":
    main()
