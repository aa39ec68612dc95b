"""Time to the first partial image as a fraction of the whole streamed request.

    .venv/bin/python bench/bench_stream.py [--rounds 10] [--size 1024x1024] [--model gpt-image-1]

Streams generations with partial_images=3 through the official openai client against a real
`limner serve`, and prints the median time to the first partial_image event, to the completed
event, and their ratio.
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

from tests.support.server import start_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--model", default="gpt-image-1")
    parser.add_argument("--quality", default="high")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp)) as server:
        client = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0)
        firsts, totals = [], []
        for i in range(args.rounds + 1):
            t0 = time.perf_counter()
            first = None
            partials = 0
            stream = client.images.generate(
                model=args.model,
                prompt="a red sun over blue mountains",
                size=args.size,
                quality=args.quality,
                stream=True,
                partial_images=3,
                extra_body={"seed": i},
            )
            for event in stream:
                if event.type.endswith("partial_image"):
                    partials += 1
                    first = first or time.perf_counter() - t0
            total = time.perf_counter() - t0
            if i and first is not None:
                firsts.append(first)
                totals.append(total)
        f, t = statistics.median(firsts), statistics.median(totals)
        print(
            f"{args.model} {args.size} quality={args.quality} partial_images=3 ({partials} partials/request), "
            f"median of {args.rounds}:"
        )
        print(f"  first partial {f * 1000:.1f} ms, whole request {t * 1000:.1f} ms, fraction {f / t:.2f}")


if __name__ == "__main__":
    main()
