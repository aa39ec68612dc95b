"""limner.client against the official `openai` package, on the same real `limner serve`, in one run.

    .venv/bin/python -m bench.bench_client [--requests 60] [--rounds 6] [--windows 15] [--seconds 3]

Measures, for small images (dall-e-2, 256x256, b64_json):
  * requests/s at concurrency 1 and 8: sync clients driven by threads, async clients by asyncio;
  * the client process's CPU time per request (the server runs in another process, so this is the
    client's own cost, which the server's speed does not hide);
and peak traced memory (tracemalloc) while receiving one response with ten 1024x1024 images.
The two clients run back to back in each of --rounds rounds (which goes first alternates); a figure
is the median over the rounds, and the throughput ratio the median of the rounds' own ratios, limner /
openai (above 1 is better for throughput, below 1 is better for CPU and memory), printed with the
lowest and highest of the rounds' ratios.

Back to back, one round differs from the next by up to 20 % on a shared 2-core machine, and the
median of a few rounds by 5 %. So the sync clients also run at once: each with 8 threads against the
same server for --windows windows of --seconds, the ratio being each window's requests, limner over
openai. Both meet the same machine at the same moment, and the official client against itself (its
control) reads 1.00 within 1-2 %.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

from limner.client import ApiClient, AsyncApiClient, AsyncImagesApi, Configuration, ImagesApi
from tests.support.server import start_server

SMALL: dict[str, Any] = {
    "prompt": "a small red circle",
    "model": "dall-e-2",
    "size": "256x256",
    "response_format": "b64_json",
}
LARGE: dict[str, Any] = {
    "prompt": "ten big pictures",
    "model": "dall-e-2",
    "size": "1024x1024",
    "response_format": "b64_json",
    "n": 10,
}


def run_threads(call: Callable[[], Any], requests: int, concurrency: int) -> tuple[float, float]:
    """(requests per second, client CPU ms per request)."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for _ in range(requests):
            call()
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: call(), range(requests)))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return requests / wall, 1000 * cpu / requests


def peak_memory(call: Callable[[], Any]) -> tuple[float, int]:
    """Peak traced MiB while one call runs and its result is alive; and the images received."""
    call()  # warm: imports, connection, lazy tables
    gc.collect()
    tracemalloc.start()
    result = call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    count = len(result.data)
    del result
    return peak / 2**20, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--windows", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "data") as server:
        base = server.api_base
        limner_sync = ImagesApi(ApiClient(Configuration(host=base, access_token="unused")))
        openai_sync = openai.OpenAI(base_url=base, api_key="unused")

        sync_calls: dict[str, Callable[[], Any]] = {
            "limner": lambda: limner_sync.create_image(**SMALL),
            "openai": lambda: openai_sync.images.generate(**SMALL),
        }
        samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        ratios: dict[tuple[str, int], list[float]] = {}

        for call in sync_calls.values():
            call()  # warm up each client once
        for round_ in range(args.rounds):
            # The two clients back to back, in turns (the one that goes first alternates): each round's
            # ratio compares runs a second apart, so the machine's slower moments hit both.
            order = ("limner", "openai") if round_ % 2 == 0 else ("openai", "limner")
            for concurrency in (1, 8):
                for mode in ("sync", "async"):
                    for name in order:
                        figures = (
                            run_threads(sync_calls[name], args.requests, concurrency)
                            if mode == "sync"
                            else async_round(name, base, args.requests, concurrency)
                        )
                        samples.setdefault((mode, name, concurrency), []).append(figures)
                    pair = [samples[(mode, n, concurrency)][-1][0] for n in ("limner", "openai")]
                    ratios.setdefault((mode, concurrency), []).append(pair[0] / pair[1])

        def median(mode: str, name: str, concurrency: int, index: int) -> float:
            return statistics.median(s[index] for s in samples[(mode, name, concurrency)])

        print(
            f"limner.client vs openai {openai.__version__}; server: limner serve (sketch engine), "
            f"{args.requests} requests x {args.rounds} alternating rounds (medians)"
        )
        print("small images (dall-e-2 256x256 b64_json):")
        print(
            f"  {'mode':6} {'conc':>4} {'limner req/s':>13} {'openai req/s':>13} {'ratio':>6} {'rounds':>10}"
            f"  {'limner CPU ms/req':>17} {'openai CPU ms/req':>17} {'ratio':>6}"
        )
        for mode in ("sync", "async"):
            for concurrency in (1, 8):
                lr, orr = (median(mode, n, concurrency, 0) for n in ("limner", "openai"))
                lc, oc = (median(mode, n, concurrency, 1) for n in ("limner", "openai"))
                ratio = statistics.median(ratios[(mode, concurrency)])
                # The rounds' own ratios, lowest to highest: how far one round is from the next on this
                # machine, against which the median is read.
                spread = f"{min(ratios[(mode, concurrency)]):.2f}-{max(ratios[(mode, concurrency)]):.2f}"
                print(
                    f"  {mode:6} {concurrency:>4} {lr:>13.1f} {orr:>13.1f} {ratio:>6.2f} {spread:>10}"
                    f"  {lc:>17.2f} {oc:>17.2f} {lc / oc:>6.2f}"
                )

        openai_too = openai.OpenAI(base_url=base, api_key="unused")
        print(
            f"at once, sync, 8 threads each, {args.windows} windows of {args.seconds:g} s (median, lowest-highest):"
        )
        pairs = (
            ("limner / openai", sync_calls),
            (
                "openai / openai (control)",
                {**sync_calls, "limner": lambda: openai_too.images.generate(**SMALL)},
            ),
        )
        for label, calls in pairs:
            shares = at_once(calls["limner"], calls["openai"], 8, args.windows, args.seconds)
            print(f"  {label:26} {statistics.median(shares):.3f}  {min(shares):.2f}-{max(shares):.2f}")
        openai_too.close()

        limner_mem, n1 = peak_memory(lambda: limner_sync.create_image(**LARGE))
        openai_mem, n2 = peak_memory(lambda: openai_sync.images.generate(**LARGE))
        assert n1 == n2 == 10
        print("one response with ten 1024x1024 images (b64_json):")
        print(
            f"  peak traced memory: limner {limner_mem:.1f} MiB, openai {openai_mem:.1f} MiB, "
            f"ratio {limner_mem / openai_mem:.2f}"
        )
        limner_sync.api_client.close()
        openai_sync.close()


def at_once(
    first: Callable[[], Any], second: Callable[[], Any], concurrency: int, windows: int, seconds: float
) -> list[float]:
    """Both callers at once, `concurrency` threads each: for each window, first's requests over second's."""
    counts = [0, 0]
    lock, stop = threading.Lock(), threading.Event()

    def worker(index: int, call: Callable[[], Any]) -> None:
        while not stop.is_set():
            call()
            with lock:
                counts[index] += 1

    threads = [
        threading.Thread(target=worker, args=(index, call), daemon=True)
        for index, call in enumerate((first, second))
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)  # both at full load before the first window
    ratios = []
    for _ in range(windows):
        with lock:
            counts[:] = [0, 0]
        time.sleep(seconds)
        with lock:
            ratios.append(counts[0] / max(1, counts[1]))
    stop.set()
    for thread in threads:
        thread.join()
    return ratios


def async_round(name: str, base: str, requests: int, concurrency: int) -> tuple[float, float]:
    """One timed async run with a fresh client (async clients belong to one event loop)."""

    async def make_and_run() -> tuple[float, float]:
        if name == "limner":
            async with AsyncApiClient(Configuration(host=base, access_token="unused")) as client:
                api = AsyncImagesApi(client)
                return await timed_async(lambda: api.create_image(**SMALL), requests, concurrency)
        async with openai.AsyncOpenAI(base_url=base, api_key="unused") as oa:
            return await timed_async(lambda: oa.images.generate(**SMALL), requests, concurrency)

    return asyncio.run(make_and_run())


async def timed_async(call: Callable[[], Any], requests: int, concurrency: int) -> tuple[float, float]:
    await call()  # warm the connection
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await call()

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return requests / wall, 1000 * cpu / requests


if __name__ == "__main__":
    main()
