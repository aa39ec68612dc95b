"""The scheduler: the queues in front of the engines, admission and back-pressure, cancellation.

Built once at start-up from the configuration (limner.server.app.build_scheduler), so every limit
holds whatever request arrives first:

* **Lanes.** One lane per engine (the shared sketch engine is one lane for every name it serves; each
  diffusers model is its own), with `concurrency` worker threads. Work never runs on the event loop.
* **Admission.** A model name admits at most `max_queue` waiting jobs (a job that can start at once
  always gets in); one more is a 429 whose Retry-After comes from the measured time per batch and the
  place in the queue. Optional per-key limits (`max_queued_per_key`, `max_running_per_key`) say which
  was exceeded.
* **Fairness.** Waiting jobs are kept per client (API key id, or the address when no keys are used);
  a free worker serves the clients in turn, so a client with 50 jobs queued delays another client's
  single job by at most one batch.
* **Batching.** The worker takes the head job of the next client, then every waiting job with the
  same `engine.batch_key`, clients in turn, up to the engine's `max_batch` images, and runs them as
  one `engine.run_batch`. With `batch_wait_ms` it waits that long for a fuller batch; by default it
  waits for nobody, so an idle server adds no latency.
* **Cancellation.** A client that leaves cancels its job: a waiting job is removed at once (its place
  is free for the next request), a running one is told through its context (an engine drops its
  images, and stops the run when every job in it has gone).
* **Residency.** A lane's engine is loaded by residency.py on first use (or at start-up), never by
  the lane or the engine itself.

The modules: tickets.py (a job in the scheduler), lanes.py (queues, fairness, batching, workers),
residency.py (which engines are loaded), and this one (admission, waiting, cancelling).

After the engine, each job's `finish` (encoding, composing) runs in the same worker thread, and the
result goes back to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from limner.engines.jobs import Job, JobContext
from limner.errors import JobCancelled, RateLimited
from limner.scheduler.lanes import Lane
from limner.scheduler.residency import Residency
from limner.scheduler.tickets import Observer, Ticket, Unobserved

log = logging.getLogger("limner.scheduler")

T = TypeVar("T")

#: How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2


@dataclass
class ModelLimits:
    """What the configuration says of one model name."""

    lane: str
    max_queue: int


@dataclass
class KeyLimits:
    """Per-client limits (None: unlimited)."""

    max_queued: int | None = None
    max_running: int | None = None


class Scheduler:
    def __init__(
        self,
        lanes: Mapping[str, Lane],
        models: Mapping[str, ModelLimits],
        *,
        residency: Residency,
        key_limits: KeyLimits | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.lanes = dict(lanes)
        self.observer: Observer = observer or Unobserved()
        self.residency = residency
        self.models = dict(models)
        self.key_limits = key_limits or KeyLimits()
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}
        self._started = False

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            for lane in self.lanes.values():
                lane.start(self)

    def shutdown(self) -> None:
        for lane in self.lanes.values():
            for ticket in lane.drain():
                self.ended(ticket, None, JobCancelled())

    # -- submitting -------------------------------------------------------------------------------

    def lane_of(self, model: str) -> Lane:
        return self.lanes[self.models[model].lane]

    def submit(
        self,
        model: str,
        job: Job,
        ctx: JobContext,
        finish: Callable[[list[Image.Image]], T],
        *,
        client: str = "-",
        admitted: bool = False,
    ) -> Ticket[T]:
        """Queue a job now, or raise RateLimited. `admitted`: a request already let in (the later
        images of a stream) is not refused halfway."""
        self.start()
        lane = self.lane_of(model)
        ticket: Ticket[T] = Ticket(
            model=model,
            job=job,
            ctx=ctx,
            client=client,
            finish=finish,
            future=asyncio.get_running_loop().create_future(),
            key=lane.engine.batch_key(job),
        )
        lane.enqueue(ticket, None if admitted else lambda: self._admit(lane, ticket))
        return ticket

    def _admit(self, lane: Lane, ticket: Ticket[Any]) -> None:
        """Refuse (429) a job beyond its model's queue or its client's limits (run by the lane under its
        lock, so its counters hold still)."""
        limits = self.models[ticket.model]
        client = ticket.client
        can_start = lane.busy < lane.concurrency and lane.queued() == 0 and self.may_run(client)
        if lane.queued_of(model=ticket.model) >= limits.max_queue and not can_start:
            busy = lane.busy + lane.queued()
            raise RateLimited(
                f"The engine for model '{ticket.model}' is busy: {busy} request"
                f"{' is' if busy == 1 else 's are'} in progress or queued. Please retry after a short wait.",
                retry_after=lane.retry_after(ticket.model, lane.queued()),
                reason="queue_full",
            )
        max_queued, max_running = self.key_limits.max_queued, self.key_limits.max_running
        if max_queued is not None and not can_start:
            mine = sum(other.queued_of(client=client) for other in self.lanes.values())
            if mine >= max_queued:
                raise RateLimited(
                    f"Too many queued requests for this API key: {mine} (max_queued_per_key is "
                    f"{max_queued}). Please retry after a short wait.",
                    retry_after=lane.retry_after(ticket.model, mine),
                    reason="max_queued_per_key",
                )
        if max_running is not None and max_queued is None and not self.may_run(client):
            # Nothing of this client may wait (no max_queued_per_key): its running limit is the limit.
            raise RateLimited(
                f"Too many running requests for this API key (max_running_per_key is {max_running}). "
                "Please retry after a short wait.",
                retry_after=lane.retry_after(ticket.model, 0),
                reason="max_running_per_key",
            )

    # -- running (called by lanes) ----------------------------------------------------------------

    def may_run(self, client: str, *, also: int = 0) -> bool:
        """Whether one more job of this client may start (`also`: jobs of it already picked)."""
        limit = self.key_limits.max_running
        with self._lock:
            return limit is None or self._running.get(client, 0) + also < limit

    def started(self, ticket: Ticket[Any]) -> None:
        with self._lock:
            self._running[ticket.client] = self._running.get(ticket.client, 0) + 1

    def ready(self, ticket: Ticket[Any]) -> None:
        """The job's engine is loaded and its batch about to run: a stream may answer now (with the
        time it waited for a load in its headers)."""
        loop = ticket.future.get_loop()
        if not loop.is_closed():
            loop.call_soon_threadsafe(ticket.started.set)

    def ended(self, ticket: Ticket[Any], value: Any, error: BaseException | None) -> None:
        if ticket.state == "running":
            with self._lock:
                self._running[ticket.client] -= 1
                if not self._running[ticket.client]:
                    del self._running[ticket.client]
            # A place for this client: wake the lanes whose workers skipped it.
            for lane in self.lanes.values():
                lane.wake()
        ticket.state = "ended"
        loop = ticket.future.get_loop()

        def resolve() -> None:
            ticket.started.set()  # one that ended without starting (cancelled, failed) wakes its waiter
            ticket.ended.set()
            if ticket.future.done():
                return
            if error is not None:
                ticket.future.set_exception(error)
                if isinstance(error, JobCancelled):
                    ticket.future.exception()  # nobody waits for a cancelled job: not an unread error
            else:
                ticket.future.set_result(value)

        if loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            resolve()
        else:
            loop.call_soon_threadsafe(resolve)

    # -- waiting and cancelling -------------------------------------------------------------------

    def cancel(self, ticket: Ticket[Any]) -> None:
        """The client left: a waiting job leaves the queue now; a running one is told to stop."""
        ticket.ctx.cancel()
        if self.lane_of(ticket.model).withdraw(ticket):
            self.ended(ticket, None, JobCancelled())

    async def result(
        self,
        ticket: Ticket[T],
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        *,
        outlive: bool = False,
    ) -> T:
        """The job's result. Cancelling the awaiting task, or the client leaving (when
        `is_disconnected` is given), cancels the job and raises JobCancelled; with `outlive`, a
        cancelled waiter leaves the job as it is (a job with a key: its retry will want it)."""
        if is_disconnected is None:
            if not ticket.future.done():
                await self._wait(ticket, ticket.ended, outlive)
            return ticket.future.result()
        await self._watch(ticket, ticket.future, is_disconnected)
        return ticket.future.result()

    async def wait_started(
        self,
        ticket: Ticket[Any],
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
        *,
        outlive: bool = False,
    ) -> None:
        """Until the job has started (its queue time and batch are known) or ended; cancels the job
        like `result` when the client leaves first."""
        if ticket.started.is_set():
            return
        if is_disconnected is None:
            await self._wait(ticket, ticket.started, outlive)
            return
        started = asyncio.ensure_future(ticket.started.wait())
        try:
            await self._watch(ticket, started, is_disconnected)
        finally:
            started.cancel()

    async def _wait(self, ticket: Ticket[Any], event: asyncio.Event, outlive: bool) -> None:
        # The event is set in the step of the loop that ends (or starts) the job, and wakes this task
        # in the next one, where asyncio.wait takes two more: under load each step of the loop gives the
        # GIL to the engine threads and waits to get it back.
        try:
            await event.wait()
        except asyncio.CancelledError:
            if not outlive:  # the awaiting task was cancelled: so is its job, unless it outlives it
                self.cancel(ticket)
            raise

    async def _watch(
        self,
        ticket: Ticket[Any],
        awaited: asyncio.Future[Any],
        is_disconnected: Callable[[], Awaitable[bool]],
    ) -> None:
        watcher = asyncio.ensure_future(_until(is_disconnected))
        try:
            await asyncio.wait({awaited, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the awaiting task was cancelled: the server is stopping
            self.cancel(ticket)
            raise
        finally:
            watcher.cancel()
        if not awaited.done():  # the client left first
            awaited.cancel()
            self.cancel(ticket)
            raise JobCancelled()

    def position(self, ticket: Ticket[Any]) -> int | None:
        """How many jobs a waiting job's worker will take before it (0: next), or None once started."""
        lane = self.lane_of(ticket.model)
        with lane.cond:
            if ticket.state != "queued":
                return None
            return sum(
                1 for queue in lane.waiting.values() for other in queue if other.enqueued < ticket.enqueued
            )

    # -- observing --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Per model: queued, running, done, cancelled, failed, batches, mean batch size, mean time."""
        out: dict[str, Any] = {}
        for model, limits in self.models.items():
            lane = self.lanes[limits.lane]
            with lane.cond:
                out[model] = lane.stat(model).snapshot()
        return out

    def pending_by_lane(self) -> dict[str, int]:
        """Jobs running or waiting per lane."""
        out = {}
        for key, lane in self.lanes.items():
            with lane.cond:
                out[key] = lane.queued() + sum(s.running for s in lane.stats.values())
        return out

    def ended_by_lane(self) -> dict[str, dict[str, int]]:
        out = {}
        for key, lane in self.lanes.items():
            with lane.cond:
                stats = list(lane.stats.values())
                out[key] = {
                    "done": sum(s.done for s in stats),
                    "cancelled": sum(s.cancelled for s in stats),
                    "failed": sum(s.failed for s in stats),
                }
        return out


async def _until(is_disconnected: Callable[[], Awaitable[bool]]) -> None:
    while not await is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
