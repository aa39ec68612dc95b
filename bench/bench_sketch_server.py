"""Sketch engine speed, and what the server adds on top of it, measured side by side in one run.

    .venv/bin/python bench/bench_sketch_server.py [--rounds 20]

Prints (1) sketch images/s at 256x256 and 1024x1024 (a direct engine call), and (2) the ratio of an
end-to-end request (the official openai client, b64_json, over HTTP to a real `limner serve` on
127.0.0.1) to a direct engine call plus PNG encoding, for the same prompt, size and seed. Rounds
alternate between the two ways so that drift on the machine hits both alike; medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai

from limner import imaging
from limner.engines.jobs import GenerateJob, JobContext
from limner.engines.sketch import SketchEngine
from tests.support.server import start_server

PROMPT = "a red sun over blue mountains and a small house"


def direct(engine: SketchEngine, size: int, seed: int, encode: bool) -> float:
    started = time.perf_counter()
    job = GenerateJob(prompt=PROMPT, width=size, height=size, n=1, seed=seed, detail="medium")
    (image,) = engine.generate(job, JobContext())
    if encode:
        imaging.encode_image(image, output_format="png", compression=None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    engine = SketchEngine()

    print("sketch engine, direct generate() (no encoding):")
    for size in (256, 1024):
        direct(engine, size, 0, False)  # warm-up
        times = [direct(engine, size, i, False) for i in range(args.rounds)]
        print(
            f"  {size}x{size}: {1 / statistics.median(times):8.1f} images/s "
            f"(median {statistics.median(times) * 1000:.1f} ms over {args.rounds})"
        )

    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp)) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        print("\nend-to-end request (openai client, b64_json, HTTP) vs direct generate + PNG encode:")
        for size in (256, 1024):
            model, extra = ("dall-e-2", {"response_format": "b64_json"})
            e2e, base = [], []
            for i in range(args.rounds + 1):
                t0 = time.perf_counter()
                client.images.generate(
                    model=model,
                    prompt=PROMPT,
                    size=f"{size}x{size}",
                    quality="standard",
                    extra_body={"seed": i},
                    **extra,
                )  # type: ignore[arg-type]
                t_e2e = time.perf_counter() - t0
                t_direct = direct(engine, size, i, True)
                if i:  # the first round warms both paths up
                    e2e.append(t_e2e)
                    base.append(t_direct)
            m_e2e, m_direct = statistics.median(e2e), statistics.median(base)
            print(
                f"  {size}x{size}: end-to-end {m_e2e * 1000:7.1f} ms, direct+encode {m_direct * 1000:7.1f} ms, "
                f"ratio {m_e2e / m_direct:.2f}"
            )


if __name__ == "__main__":
    main()
