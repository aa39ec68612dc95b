"""What a memory budget and LoRA adapters cost, measured side by side in one run.

    .venv/bin/python -m bench.bench_residency [--source FOLDER_OR_HUB_ID] [--device cpu|cuda]
                                              [--rounds 5] [--steps 4] [--size 64] [--compile]

1. **Swap cost.** Two models (two engines of the same checkpoint) under a budget that holds one: the
   time a batch waits when its model must be loaded and the other unloaded (`Residency.acquire`),
   against the model's own load time (`engine.load()` with nothing to unload), in alternating rounds.
2. **Adapter cost.** One pipeline call with an adapter in force against the same call on the base
   model; and the switch between two adapter sets (`set_adapters` under limner's AdapterSlots) with 1,
   4 and 16 adapters loaded. With `--compile`, the same under a compiled denoiser: adapters swapped
   into fixed slots (hotswap), and how many graphs were compiled after the warm-up (none, if no swap
   or scale change compiles again).

Adapters are made here with peft (rank 4 on the attention projections), for whatever `--source` is:
the tiny SD pipeline by default (built into a temporary folder), or a real checkpoint on a GPU:

    python -m bench.bench_residency --source /models/sdxl --device cuda --size 1024 --steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from limner.engines.diffusers import create_engine
from limner.engines.jobs import GenerateJob, JobContext
from limner.scheduler.residency import Residency


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed_call(engine: Any, loras: tuple[tuple[str, float | None], ...], size: int, steps: int) -> float:
    """Seconds of one pipeline call of one image, with `loras` in force."""
    job = GenerateJob(
        prompt="a lighthouse", width=size, height=size, seed=1, num_inference_steps=steps, loras=loras
    )
    started = time.perf_counter()
    engine.run_batch([job], [JobContext()])
    return time.perf_counter() - started


def swap_cost(source: str, device: str, rounds: int) -> tuple[float, float]:
    """(median ms of a load alone, median ms of a load that first unloads the other model)."""
    one = create_engine("one", {"source": source, "device": device})
    two = create_engine("two", {"source": source, "device": device})
    budget = int(one.memory().charge * 1.5)  # holds one of them, never two
    residency = Residency(
        {"one": one, "two": two}, {"one": ["one"], "two": ["two"]}, budgets={device: budget}
    )
    alone, swapped = [], []
    for _ in range(rounds):
        for engine in (one, two):
            engine.close()
        started = time.perf_counter()
        one.load()
        alone.append(time.perf_counter() - started)
        for key in ("two", "one"):  # each swaps the other out
            waited = residency.acquire(key)
            residency.release(key)
            assert waited is not None
            swapped.append(waited)
    return _median_ms(alone), _median_ms(swapped)


def adapter_cost(
    source: str, device: str, rounds: int, steps: int, size: int, work: Path
) -> dict[str, float]:
    from tests.support.loras import make_lora

    folder = work / "loras"
    for index in range(16):
        make_lora(Path(source), folder / f"a{index}.safetensors", seed=index + 1)
    engine = create_engine(
        "bench", {"source": source, "device": device, "lora_dir": str(folder), "max_loaded_loras": 16}
    )
    engine.load()

    def call(loras: tuple[tuple[str, float | None], ...]) -> float:
        return _timed_call(engine, loras, size, steps)

    call((("a0", 1.0),))  # warm-up: loads the adapter
    call(())
    base, adapted = [], []
    for _ in range(rounds):
        adapted.append(call((("a0", 1.0),)))
        base.append(call(()))
    out = {"base call ms": _median_ms(base), "adapter call ms": _median_ms(adapted)}
    assert engine.slots is not None and engine._loaded is not None
    pipes: list[Any] = [engine._loaded.base]
    for loaded in (1, 4, 16):
        engine.slots.reset()
        for pipe in pipes:  # start from no adapter in the pipeline
            pipe.delete_adapters(list({n for names in pipe.get_list_adapters().values() for n in names}))
        for index in range(loaded):
            with engine.slots.applied(pipes, ((f"a{index}", 1.0),)):
                pass
        switches = []
        for round_ in range(rounds * 4):
            # Every round changes the set in force: another adapter, or another scale.
            wanted = ((f"a{round_ % 2 * (loaded - 1)}", 0.9 if round_ % 2 else 0.8),)
            started = time.perf_counter()
            with engine.slots.applied(pipes, wanted):
                switches.append(time.perf_counter() - started)
        out[f"switch ms, {loaded} loaded"] = _median_ms(switches)
    return out


def compiled_adapter_cost(
    source: str, device: str, rounds: int, steps: int, size: int, work: Path
) -> dict[str, float]:
    """The same adapters under a compiled denoiser (`compile = true`: hotswap slots): a call with an
    adapter, a call on the base model, a swap between two adapters, and the graphs compiled after the
    warm-up (0: no swap or scale change compiles again)."""
    import torch._dynamo

    folder = work / "loras"  # made by adapter_cost
    engine = create_engine(
        "compiled",
        {
            "source": source,
            "device": device,
            "lora_dir": str(folder),
            "max_loras": 1,
            "compile": True,
            "sizes": [f"{size}x{size}"],
        },
    )
    engine.load()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    def call(loras: tuple[tuple[str, float | None], ...]) -> float:
        return _timed_call(engine, loras, size, steps)

    call((("a0", 1.0),))
    base, adapted = [], []
    for _ in range(rounds):
        adapted.append(call((("a0", 1.0),)))
        base.append(call(()))
    assert engine.slots is not None and engine._loaded is not None
    pipes: list[Any] = [engine._loaded.base]
    swaps = []
    for round_ in range(rounds * 4):
        wanted = ((f"a{round_ % 2}", 1.0),)  # another adapter into the slot every time
        started = time.perf_counter()
        with engine.slots.applied(pipes, wanted):
            swaps.append(time.perf_counter() - started)
    return {
        "compiled base call ms": _median_ms(base),
        "compiled adapter call ms": _median_ms(adapted),
        "compiled swap ms": _median_ms(swaps),
        "graphs compiled after the warm-up": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", help="a diffusers model folder or hub id (default: the tiny SD pipeline)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--compile", action="store_true", help="also the adapters under a compiled denoiser (hotswap)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            from tests.support.tiny_pipeline import save_tiny_pipeline

            source = str(save_tiny_pipeline(Path(tmp) / "tiny-sd"))
        alone, swapped = swap_cost(source, args.device, args.rounds)
        costs = adapter_cost(source, args.device, args.rounds, args.steps, args.size, Path(tmp))
        compiled = (
            compiled_adapter_cost(source, args.device, args.rounds, args.steps, args.size, Path(tmp))
            if args.compile
            else {}
        )
    print(f"source {args.source or 'tiny SD'} on {args.device}, {args.rounds} rounds")
    print("| measure | ms | ratio |")
    print("|---|---|---|")
    print(f"| load alone | {alone:.1f} | 1.00 |")
    print(
        f"| load after unloading the other model (what a request waits) | {swapped:.1f} | {swapped / alone:.2f} |"
    )
    base = costs.pop("base call ms")
    print(f"| pipeline call, base ({args.size}x{args.size}, {args.steps} steps) | {base:.1f} | 1.00 |")
    adapted = costs.pop("adapter call ms")
    print(f"| pipeline call, one adapter | {adapted:.1f} | {adapted / base:.2f} |")
    for name, value in costs.items():
        print(f"| {name} | {value:.2f} | {value / base:.3f} |")
    if compiled:
        fresh = compiled.pop("graphs compiled after the warm-up")
        for name, value in compiled.items():
            print(f"| {name} | {value:.2f} | {value / base:.3f} |")
        print(f"| graphs compiled after the warm-up (swaps and scales included) | {fresh:.0f} | |")


if __name__ == "__main__":
    main()
