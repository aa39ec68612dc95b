"""What an Idempotency-Key costs: disk per 100 idempotent requests, the disk given back once their
answers expire, and the time a key adds to a small request, measured side by side in one run.

    .venv/bin/python -m bench.bench_job_disk [--requests 100] [--size 1024x1024] [--n 1]

The app runs in this process on the sketch engine, with its SQLite job store in a fresh data dir.
Figures: the job store's files (database and WAL) after the requests; after a sweep past their expiry;
and requests/s for 256x256 b64 requests with a fresh key each against the same requests without one
(alternating rounds, best of each).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from limner.server.settings import Settings
from tests.support.inprocess import app_client


def disk(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("jobs.sqlite3*"))


async def main(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="limner-bench-"))
    big: dict[str, Any] = {
        "model": "dall-e-2",
        "prompt": "a lighthouse at night",
        "size": args.size,
        "n": args.n,
        "response_format": "b64_json",
    }
    small: dict[str, Any] = {**big, "size": "256x256", "n": 1}
    async with app_client(Settings(data_dir=data)) as client:
        empty = disk(data)
        for _ in range(args.requests):
            answer = await client.post(
                "/v1/images/generations", json=big, headers={"idempotency-key": uuid.uuid4().hex}
            )
            assert answer.status_code == 200, answer.text
        used = disk(data) - empty
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        store.sweep(now=time.time() + 10 * 24 * 3600)  # past every answer's expiry
        left = disk(data) - empty

        best = {"plain": 0.0, "keyed": 0.0}
        for _ in range(args.rounds):
            for mode in ("plain", "keyed"):
                started = time.perf_counter()
                for _ in range(args.small):
                    headers = {"idempotency-key": uuid.uuid4().hex} if mode == "keyed" else {}
                    assert (
                        await client.post("/v1/images/generations", json=small, headers=headers)
                    ).is_success
                best[mode] = max(best[mode], args.small / (time.perf_counter() - started))
    mb = 1024 * 1024
    print(f"{args.requests} idempotent requests ({args.size}, n={args.n}, b64_json) on the SQLite job store:")
    print(f"  disk used           {used / mb:8.1f} MiB  ({used / args.requests / 1024:.0f} KiB a request)")
    print(f"  after they expire   {left / mb:8.1f} MiB  (a sweep past their expiry)")
    print(f"small requests (256x256), {args.small} in sequence, best of {args.rounds}:")
    print(
        f"  without a key {best['plain']:6.1f} req/s, with a fresh key {best['keyed']:6.1f} req/s: "
        f"ratio {best['keyed'] / best['plain']:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--small", type=int, default=100, help="small requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
