"""Batching across requests under load: `max_batch = 1` against `max_batch = 8`, side by side in one run.

    .venv/bin/python bench/bench_load.py [--source FOLDER_OR_HUB_ID] [--device cpu|cuda] [--steps 4]
                                         [--sizes 64,256] [--concurrency 1,4,8] [--requests 32]

Two real `limner serve` processes on 127.0.0.1 serve the same diffusers model (the tiny random
pipeline from tests/support unless --source is given), one with `max_batch = 1`, one with
`max_batch = 8`; they take turns, so drift on the machine hits both alike. The official `openai`
package (async) drives each in two modes:

* closed loop: C clients, each sending its next request when the last one answered (C = 1, 4, 8);
* open loop: Poisson arrivals at two rates, 0.5x and 1.5x the measured capacity of `max_batch = 1`
  at concurrency 1 (below and above what one-at-a-time serving can keep up with).

For each it prints throughput (images/s), p50/p95/p99 latency, and the mean batch size (from the
`x-limner-batch-size` header), then the ratios batched/unbatched. Goals (CPU, tiny model, 4 steps):
at concurrency 8, at least 2x the throughput at 64x64, no worse at 256x256; p95 at concurrency 1 no
worse than without batching.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import openai

from tests.support.server import RunningServer, start_server


@dataclass
class Result:
    seconds: float
    latencies: list[float]
    batch_sizes: list[int]
    images: int

    @property
    def throughput(self) -> float:
        return self.images / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def mean_batch(self) -> float:
        return statistics.fmean(self.batch_sizes)


async def one(client: openai.AsyncOpenAI, size: int, steps: int, seed: int) -> tuple[float, int]:
    started = time.perf_counter()
    raw = await client.images.with_raw_response.generate(
        model="bench",
        prompt=f"a lighthouse at dusk, number {seed}",
        size=f"{size}x{size}",  # type: ignore[arg-type]
        extra_body={"seed": seed, "num_inference_steps": steps},
    )
    return time.perf_counter() - started, int(raw.headers["x-limner-batch-size"])


async def closed_loop(server: RunningServer, size: int, steps: int, clients: int, requests: int) -> Result:
    api = openai.AsyncOpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=3600)
    done: list[tuple[float, int]] = []
    counter = iter(range(requests))

    async def client_loop() -> None:
        for seed in counter:
            done.append(await one(api, size, steps, seed))

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    seconds = time.perf_counter() - started
    await api.close()
    return Result(seconds, [d[0] for d in done], [d[1] for d in done], len(done))


async def open_loop(server: RunningServer, size: int, steps: int, rate: float, requests: int) -> Result:
    api = openai.AsyncOpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=3600)
    arrivals = random.Random(7)
    done: list[tuple[float, int]] = []

    async def arrive(delay: float, seed: int) -> None:
        await asyncio.sleep(delay)
        done.append(await one(api, size, steps, seed))

    delays, at = [], 0.0
    for _ in range(requests):
        at += arrivals.expovariate(rate)
        delays.append(at)
    started = time.perf_counter()
    await asyncio.gather(*(arrive(d, seed) for seed, d in enumerate(delays)))
    seconds = time.perf_counter() - started
    await api.close()
    return Result(seconds, [d[0] for d in done], [d[1] for d in done], len(done))


def row(label: str, unbatched: Result, batched: Result) -> str:
    def cell(r: Result) -> str:
        return (
            f"{r.throughput:7.2f} img/s  p50 {r.percentile(50):6.2f}  p95 {r.percentile(95):6.2f}  "
            f"p99 {r.percentile(99):6.2f}  batch {r.mean_batch:4.2f}"
        )

    ratio = batched.throughput / unbatched.throughput
    p95 = batched.percentile(95) / unbatched.percentile(95)
    return f"{label:<22} | 1: {cell(unbatched)} | 8: {cell(batched)} | x{ratio:4.2f}  p95 x{p95:4.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", help="a diffusers model folder or hub id (default: build the tiny one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--requests", type=int, default=32, help="requests per measurement")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = args.source
        if source is None:
            from tests.support.tiny_pipeline import save_tiny_pipeline

            source = str(save_tiny_pipeline(tmp / "tiny-sd"))
        servers = {}
        for batch in (1, 8):
            config = tmp / f"batch{batch}.toml"
            config.write_text(
                f'[models.bench]\nengine = "diffusers"\nsource = "{source}"\ndevice = "{args.device}"\n'
                f'load = "startup"\nmax_batch = {batch}\nmax_queue = 1000\nmax_size = 1024\n'
            )
            servers[batch] = start_server(
                tmp / f"data{batch}", "--config", str(config), "--log-level", "warning", timeout=600
            )
        running = {batch: cm.__enter__() for batch, cm in servers.items()}
        try:
            for size in sizes:
                for batch in (1, 8):  # warm-up: the first calls of a process are slow
                    asyncio.run(closed_loop(running[batch], size, args.steps, 2, 4))
                print(
                    f"\n{size}x{size}, {args.steps} steps, {args.requests} requests per row, device {args.device}"
                )
                capacity = None
                for clients in levels:
                    results = {
                        b: asyncio.run(closed_loop(running[b], size, args.steps, clients, args.requests))
                        for b in (1, 8)
                    }
                    if clients == 1:
                        capacity = results[1].throughput
                    print(row(f"closed, concurrency {clients}", results[1], results[8]))
                rate_base = capacity or 1.0
                for factor in (0.5, 1.5):
                    rate = rate_base * factor
                    results = {
                        b: asyncio.run(open_loop(running[b], size, args.steps, rate, args.requests))
                        for b in (1, 8)
                    }
                    print(row(f"open, {rate:5.2f} req/s", results[1], results[8]))
        finally:
            for cm in servers.values():
                cm.__exit__(None, None, None)


if __name__ == "__main__":
    main()
