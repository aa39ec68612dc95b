"""Replicas on Ray Serve: 1 against 2 replicas, and Ray Serve's proxy against plain `limner serve`,
side by side in one run.

    .venv/bin/python bench/bench_replicas.py [--source FOLDER] [--size 128] [--steps 4] [--requests 32]

A tiny diffusers model (built into a temporary folder unless --source is given) with one torch thread
per replica (OMP_NUM_THREADS=1), on the CPU:

* throughput (images/s) of `limner serve --ray --replicas 1` and `--replicas 2`, closed loop at
  concurrency 8 through the official openai package (async). Goal: 2 replicas >= 1.8x one;
* at concurrency 1, the mean latency through Ray Serve's proxy (1 replica) against plain
  `limner serve` (one torch thread too). Goal: <= 1.05.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai

from tests.support.server import RunningServer, start_server


async def closed_loop(
    server: RunningServer, size: int, steps: int, clients: int, requests: int
) -> tuple[float, list[float]]:
    api = openai.AsyncOpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=3600)
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        for seed in counter:
            started = time.perf_counter()
            await api.images.generate(
                model="bench",
                prompt=f"a lighthouse {seed}",
                size=f"{size}x{size}",  # type: ignore[arg-type]
                extra_body={"seed": seed, "num_inference_steps": steps},
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    await api.close()
    return requests / seconds, latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    args = parser.parse_args()
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = args.source
        if source is None:
            from tests.support.tiny_pipeline import save_tiny_pipeline

            source = str(save_tiny_pipeline(tmp / "tiny-sd"))
        config = tmp / "limner.toml"
        config.write_text(
            f'[models.bench]\nengine = "diffusers"\nsource = "{source}"\ndevice = "cpu"\nload = "startup"\n'
            "max_queue = 1000\nmax_size = 1024\n"
        )
        results: dict[str, tuple[float, list[float]]] = {}
        ray_bin = str(Path(sys.executable).parent / "ray")

        def measure(label: str, *extra: str) -> None:
            with start_server(
                tmp / label, "--config", str(config), "--log-level", "warning", *extra, env=env, timeout=600
            ) as server:
                asyncio.run(closed_loop(server, args.size, args.steps, 2, 4))  # warm-up
                results[f"{label} c1"] = asyncio.run(
                    closed_loop(server, args.size, args.steps, 1, args.requests // 2)
                )
                results[f"{label} c8"] = asyncio.run(
                    closed_loop(server, args.size, args.steps, 8, args.requests)
                )
            subprocess.run([ray_bin, "stop", "--force"], capture_output=True)

        measure("plain")
        measure("ray-1", "--ray", "--replicas", "1", "--cpus-per-replica", "1")
        measure("ray-2", "--ray", "--replicas", "2", "--cpus-per-replica", "1")

    print(
        f"\n{args.size}x{args.size}, {args.steps} steps, tiny diffusers model, one torch thread per replica"
    )
    for label, (throughput, latencies) in results.items():
        print(f"{label:<10} {throughput:6.2f} img/s   mean {statistics.fmean(latencies):.3f} s")
    ratio = results["ray-2 c8"][0] / results["ray-1 c8"][0]
    overhead = statistics.fmean(results["ray-1 c1"][1]) / statistics.fmean(results["plain c1"][1])
    print(f"2 replicas / 1 replica at concurrency 8: x{ratio:.2f}   (goal >= 1.8)")
    print(f"Ray Serve proxy / plain limner serve at concurrency 1: x{overhead:.2f}   (goal <= 1.05)")


if __name__ == "__main__":
    main()
