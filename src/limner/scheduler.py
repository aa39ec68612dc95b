"""Engine work off the event loop: one bounded queue per engine, cancellation when the client leaves.

Each engine gets its own thread pool sized to its concurrency (the sketch engine: the cores; a
diffusers pipeline: one job at a time), so a slow model never starves health checks or other models.
In front of the pool, at most `max_queue` jobs wait; one more is refused with 429 and Retry-After
instead of piling up (the serial queues of other servers drop or stall requests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from limner.engines.jobs import JobContext
from limner.errors import JobCancelled, RateLimited

T = TypeVar("T")


class EngineQueue:
    def __init__(self, name: str, concurrency: int, max_queue: int) -> None:
        self.name = name
        self.concurrency = max(1, concurrency)
        self.max_queue = max(0, max_queue)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix=f"limner-{name}"
        )
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        #: Moving average of the seconds a job takes here (None until one has run): Retry-After.
        self.seconds_per_job: float | None = None
        #: Jobs that ended, by how: what /health reports (and tests count instead of timing).
        self.done = 0
        self.cancelled = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        return self._pending

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1
            if future.cancelled() or isinstance(future.exception(), JobCancelled):
                self.cancelled += 1
            elif future.exception() is not None:
                self.failed += 1
            else:
                self.done += 1

    def _measured(self, seconds: float) -> None:
        with self._lock:
            last = self.seconds_per_job
            self.seconds_per_job = seconds if last is None else 0.8 * last + 0.2 * seconds

    def retry_after(self, waiting: int) -> int:
        """Seconds until a place is likely free: the jobs ahead, over the workers, at the measured
        time per job (one second until a job has been measured)."""
        per_job = self.seconds_per_job if self.seconds_per_job is not None else 1.0
        return max(1, math.ceil(per_job * (waiting + 1) / self.concurrency))

    def submit(self, fn: Callable[[], T], ctx: JobContext) -> asyncio.Future[T]:
        """Queue fn in this engine's pool now (429 at once when full); await the returned future."""
        with self._lock:
            if self._pending >= self.concurrency + self.max_queue:
                busy = self._pending
                raise RateLimited(
                    f"The engine for this model is busy: {busy} request{' is' if busy == 1 else 's are'} "
                    "in progress or queued. Please retry after a short wait.",
                    retry_after=self.retry_after(busy - self.concurrency),
                )
            self._pending += 1

        def guarded() -> T:
            ctx.check()  # a job whose client left while it queued never starts
            started = time.perf_counter()
            result = fn()
            self._measured(time.perf_counter() - started)
            return result

        future = self._pool.submit(guarded)
        future.add_done_callback(self._done)
        return asyncio.wrap_future(future)

    async def run(self, fn: Callable[[], T], ctx: JobContext) -> T:
        """Run fn in this engine's pool. Cancelling the awaiting task cancels the job."""
        return await wait_cancelling(self.submit(fn, ctx), ctx)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def wait_cancelling(future: asyncio.Future[T], ctx: JobContext) -> T:
    """Await a submitted job; if the awaiting task is cancelled (the client left), stop the job too:
    a queued job is dropped, a running one stops at its engine's next ctx.check()."""
    try:
        return await future
    except asyncio.CancelledError:
        ctx.cancel()
        future.cancel()
        raise


class Scheduler:
    def __init__(self) -> None:
        self.queues: dict[str, EngineQueue] = {}

    def queue(self, key: str, concurrency: int, max_queue: int) -> EngineQueue:
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = EngineQueue(key, concurrency, max_queue)
        return q

    def shutdown(self) -> None:
        for q in self.queues.values():
            q.shutdown()
