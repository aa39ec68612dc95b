"""Engine work off the event loop: one bounded queue per engine, cancellation when the client leaves.

Each engine gets its own thread pool sized to its concurrency (the sketch engine: the cores; a
diffusers pipeline: one job at a time), so a slow model never starves health checks or other models.
In front of the pool, at most `max_queue` jobs wait; one more is refused with 429 and Retry-After
instead of piling up (the serial queues of other servers drop or stall requests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

from limner.engines.jobs import JobContext
from limner.errors import RateLimited

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

    @property
    def pending(self) -> int:
        return self._pending

    def _done(self, _: object) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, fn: Callable[[], T], ctx: JobContext) -> asyncio.Future[T]:
        """Queue fn in this engine's pool now (429 at once when full); await the returned future."""
        with self._lock:
            if self._pending >= self.concurrency + self.max_queue:
                raise RateLimited(
                    f"The engine for this model is busy: {self._pending} requests are in progress or "
                    "queued. Please retry after a short wait.",
                    retry_after=1 + self._pending // self.concurrency,
                )
            self._pending += 1

        def guarded() -> T:
            ctx.check()  # a job whose client left while it queued never starts
            return fn()

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
