"""An engine for scheduler tests, handed to `create_app(settings, engines=...)`: it draws a flat colour
chosen by the job's seed, batches jobs of one size, records every run, and holds each run at a gate
until the test lets it through, so that queues can be filled and inspected without timing anything."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence

from PIL import Image

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.jobs import Job, JobContext
from limner.errors import InvalidValue, JobCancelled


def colour_of(seed: int) -> tuple[int, int, int]:
    return (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)


class GateEngine(EngineBase):
    def __init__(
        self,
        *,
        max_batch: int = 8,
        batches: bool = True,
        max_side: int = 4096,
        fail_with: Exception | None = None,
    ) -> None:
        self._info = EngineInfo("gate", max_batch=max_batch, size_multiple=8)
        self.batches = batches
        self.max_side = max_side
        #: Raised by every run once it is let through: a job that fails while it runs.
        self.fail_with = fail_with
        self.permits = threading.Semaphore(0)  # one per run allowed to finish
        self.runs: list[list[int]] = []  # the seeds of each run, in the order the runs began
        self._lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        """Nothing to load."""

    def check(self, job: Job) -> None:
        if max(job.width, job.height) > self.max_side:
            raise InvalidValue(f"This engine draws at most {self.max_side} pixels a side.", param="size")

    def batch_key(self, job: Job) -> Hashable | None:
        return (job.width, job.height) if self.batches else None

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        with self._lock:
            self.runs.append([job.seed for job in jobs])
        while not self.permits.acquire(timeout=0.01):
            if all(ctx.cancelled for ctx in contexts):
                raise JobCancelled()
        if self.fail_with is not None:
            raise self.fail_with
        return [
            []
            if ctx.cancelled
            else [Image.new("RGB", (job.width, job.height), colour_of(job.seed + i)) for i in range(job.n)]
            for job, ctx in zip(jobs, contexts, strict=True)
        ]

    def let_through(self, runs: int = 1) -> None:
        self.permits.release(runs)

    def open(self) -> None:
        """Every run from now on finishes at once."""
        self.permits.release(10_000)

    async def began(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` runs have begun (a generous deadline; the event loop keeps serving)."""
        deadline = time.monotonic() + timeout
        while len(self.runs) < count:
            assert time.monotonic() < deadline, f"only {len(self.runs)} of {count} runs began"
            await asyncio.sleep(0.005)
