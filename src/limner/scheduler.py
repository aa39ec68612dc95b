"""The scheduler: the queues in front of the engines, batching, fairness, back-pressure, cancellation.

Built once at start-up from the configuration (`Scheduler.build`), so every limit holds whatever
request arrives first:

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

After the engine, each job's `finish` (encoding, composing) runs in the same worker thread, and the
result goes back to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from PIL import Image

from limner.engines.base import Engine
from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext
from limner.errors import JobCancelled, LimnerError, RateLimited

log = logging.getLogger("limner.scheduler")

T = TypeVar("T")

#: How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2


class Observer(Protocol):
    """What the scheduler reports as it works (limner.server.metrics.Metrics is one)."""

    def job_started(self, model: str, operation: str, queue_seconds: float) -> None: ...

    def batch_ran(self, model: str, operation: str, seconds: float, images: int) -> None: ...

    def images_made(self, model: str, operation: str, count: int) -> None: ...

    def model_loaded(self, model: str, seconds: float) -> None: ...


class _Unobserved:
    def job_started(self, model: str, operation: str, queue_seconds: float) -> None:
        """Nobody watches."""

    def batch_ran(self, model: str, operation: str, seconds: float, images: int) -> None:
        """Nobody watches."""

    def images_made(self, model: str, operation: str, count: int) -> None:
        """Nobody watches."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """Nobody watches."""


def operation_of(job: Job) -> str:
    return "generate" if isinstance(job, GenerateJob) else "edit" if isinstance(job, EditJob) else "vary"


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


@dataclass(eq=False)
class Ticket(Generic[T]):
    """One job in the scheduler: queued, then running in a batch, then finished."""

    model: str
    job: Job
    ctx: JobContext
    client: str
    finish: Callable[[list[Image.Image]], T]
    future: asyncio.Future[T]
    key: Hashable | None
    #: Set (on the event loop) when a worker picks the job.
    started: asyncio.Event = field(default_factory=asyncio.Event)
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued, running, ended
    #: Set when the job starts: how long it waited, and how many images its engine run held.
    queue_ms: int | None = None
    batch_size: int | None = None
    #: Set when it ends: how long its engine run took.
    run_ms: int | None = None

    @property
    def images(self) -> int:
        return self.job.n


@dataclass
class _Stats:
    """One model's counters, for /health and Retry-After."""

    queued: int = 0
    running: int = 0
    done: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    batch_images: int = 0
    job_seconds: float = 0.0
    #: Moving averages over recent batches: seconds a batch takes, jobs it holds.
    batch_seconds_avg: float | None = None
    jobs_per_batch_avg: float = 1.0

    def snapshot(self) -> dict[str, Any]:
        ended = self.done + self.failed
        return {
            "queued": self.queued,
            "running": self.running,
            "done": self.done,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "batches": self.batches,
            "mean_batch_size": round(self.batch_images / self.batches, 3) if self.batches else None,
            "mean_seconds_per_job": round(self.job_seconds / ended, 4) if ended else None,
        }


class Lane:
    """The queue and workers of one engine."""

    def __init__(
        self,
        key: str,
        engine: Engine,
        *,
        concurrency: int,
        max_batch: int,
        batch_wait_ms: int = 0,
    ) -> None:
        self.key = key
        self.engine = engine
        self.concurrency = max(1, concurrency)
        self.max_batch = max(1, max_batch)
        self.batch_wait = max(0, batch_wait_ms) / 1000
        self.cond = threading.Condition()
        #: Waiting tickets per client; clients take turns, least recently served first.
        self.waiting: dict[str, deque[Ticket[Any]]] = {}
        self._last_served: dict[str, int] = {}
        self._tick = 0
        self.busy = 0  # workers running a batch
        self.stats: dict[str, _Stats] = {}
        self.closed = False
        self._threads: list[threading.Thread] = []

    # -- counting (under cond) --------------------------------------------------------------------

    def queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def queued_of(self, *, model: str | None = None, client: str | None = None) -> int:
        return sum(
            1
            for c, q in self.waiting.items()
            if client is None or c == client
            for t in q
            if model is None or t.model == model
        )

    def stat(self, model: str) -> _Stats:
        return self.stats.setdefault(model, _Stats())

    def retry_after(self, model: str, ahead: int) -> int:
        """Seconds until a place is likely free: the batches ahead of one more job, over the workers,
        at the measured time per batch (a second until something was measured)."""
        stats = self.stat(model)
        per_batch = stats.batch_seconds_avg if stats.batch_seconds_avg is not None else 1.0
        per_round = self.concurrency * max(1.0, stats.jobs_per_batch_avg)
        return max(1, math.ceil(per_batch * math.ceil((ahead + 1) / per_round)))

    # -- workers ----------------------------------------------------------------------------------

    def start(self, scheduler: Scheduler) -> None:
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(scheduler,), name=f"limner-{self.key}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _work(self, scheduler: Scheduler) -> None:
        while True:
            with self.cond:
                batch = self._take(scheduler)
                if batch is None:
                    return
            self._run(scheduler, batch)

    def _take(self, scheduler: Scheduler) -> list[Ticket[Any]] | None:
        """The next batch (under cond): the head job of the next client in turn, then compatible jobs
        from every client in turn. None when the lane is closed."""
        while True:
            if self.closed:
                return None
            head = self._next_head(scheduler)
            if head is not None:
                break
            self.cond.wait()
        batch = [head]
        self._gather(batch, scheduler)
        if self.batch_wait and head.key is not None:
            deadline = time.monotonic() + self.batch_wait
            while sum(t.images for t in batch) < self.max_batch and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
                self._gather(batch, scheduler)
        started = time.monotonic()
        images = sum(t.images for t in batch)
        for ticket in batch:
            ticket.state = "running"
            ticket.queue_ms = int((started - ticket.enqueued) * 1000)
            ticket.batch_size = images
            stats = self.stat(ticket.model)
            stats.queued -= 1
            stats.running += 1
            scheduler.started(ticket)
        self.busy += 1
        return batch

    def _turns(self) -> list[str]:
        """Waiting clients, least recently served first (never served: first, in arrival order)."""
        return sorted(self.waiting, key=lambda client: self._last_served.get(client, -1))

    def _next_head(self, scheduler: Scheduler) -> Ticket[Any] | None:
        for client in self._turns():
            queue = self.waiting[client]
            if not queue or not scheduler.may_run(client):
                continue
            ticket = queue.popleft()
            if not queue:
                del self.waiting[client]
            self._served(client)
            return ticket
        return None

    def _served(self, client: str) -> None:
        self._tick += 1
        self._last_served[client] = self._tick
        if len(self._last_served) > 10_000:  # forget clients that wait for nothing
            self._last_served = {c: t for c, t in self._last_served.items() if c in self.waiting}

    def _gather(self, batch: list[Ticket[Any]], scheduler: Scheduler) -> None:
        """Add waiting jobs with the head's batch key, one per client in turn, up to max_batch images."""
        key = batch[0].key
        if key is None:
            return
        room = self.max_batch - sum(t.images for t in batch)
        while room > 0:
            added = False
            for client in self._turns():
                if not scheduler.may_run(client, also=sum(t.client == client for t in batch)):
                    continue
                queue = self.waiting[client]
                mate = next((t for t in queue if t.key == key and t.images <= room), None)
                if mate is None:
                    continue
                queue.remove(mate)
                if not queue:
                    del self.waiting[client]
                batch.append(mate)
                self._served(client)
                room -= mate.images
                added = True
                if room <= 0:
                    break
            if not added:
                return

    def _run(self, scheduler: Scheduler, batch: list[Ticket[Any]]) -> None:
        live = [t for t in batch if not t.ctx.cancelled]
        outcomes: list[tuple[Ticket[Any], Any, BaseException | None]] = []
        observer = scheduler.observer
        operation = operation_of(batch[0].job)
        for ticket in batch:
            observer.job_started(ticket.model, operation_of(ticket.job), (ticket.queue_ms or 0) / 1000)
        seconds = 0.0
        try:
            if live:
                self._load(scheduler)
                started = time.perf_counter()
                drawn = self._draw(live)
                seconds = time.perf_counter() - started
                observer.batch_ran(batch[0].model, operation, seconds, sum(t.images for t in batch))
                outcomes = [self._finish(t, d) for t, d in zip(live, drawn, strict=True)]
        except BaseException as exc:  # a whole-batch failure: every job in it gets the error
            outcomes = [(t, None, exc) for t in live]
        for ticket, _, error in outcomes:
            ticket.run_ms = int(seconds * 1000)
            if error is None:
                observer.images_made(ticket.model, operation_of(ticket.job), ticket.images)
        ended = {id(t) for t, _, _ in outcomes}
        outcomes += [(t, None, JobCancelled()) for t in batch if id(t) not in ended]
        with self.cond:
            self.busy -= 1
            head = self.stat(batch[0].model)
            head.batches += 1
            head.batch_images += sum(t.images for t in batch)
            head.batch_seconds_avg = (
                seconds if head.batch_seconds_avg is None else 0.8 * head.batch_seconds_avg + 0.2 * seconds
            )
            head.jobs_per_batch_avg = 0.8 * head.jobs_per_batch_avg + 0.2 * len(batch)
            for ticket, _, error in outcomes:
                stats = self.stat(ticket.model)
                stats.running -= 1
                if isinstance(error, JobCancelled) or ticket.ctx.cancelled:
                    stats.cancelled += 1
                else:
                    stats.job_seconds += seconds
                    if error is None:
                        stats.done += 1
                    else:
                        stats.failed += 1
            self.cond.notify_all()
        for ticket, value, error in outcomes:
            scheduler.ended(ticket, value, error)

    def _load(self, scheduler: Scheduler) -> None:
        """Load the engine on first use (idempotent), and say how long it took."""
        if self.engine.loaded:
            return
        started = time.perf_counter()
        self.engine.load()
        seconds = time.perf_counter() - started
        for model, limits in scheduler.models.items():
            if limits.lane == self.key:
                scheduler.observer.model_loaded(model, seconds)

    def _draw(self, live: list[Ticket[Any]]) -> list[list[Image.Image] | LimnerError]:
        """Each live job's images (or the error that was its alone)."""
        try:
            return list(self.engine.run_batch([t.job for t in live], [t.ctx for t in live]))
        except LimnerError:
            if len(live) == 1:
                raise
            # One job the engine refused should not fail the others: run each alone, so that only
            # the one at fault gets the error.
            results: list[list[Image.Image] | LimnerError] = []
            for ticket in live:
                try:
                    results.extend(self.engine.run_batch([ticket.job], [ticket.ctx]))
                except LimnerError as exc:
                    results.append(exc)
            return results

    @staticmethod
    def _finish(
        ticket: Ticket[Any], drawn: list[Image.Image] | LimnerError
    ) -> tuple[Ticket[Any], Any, BaseException | None]:
        if isinstance(drawn, LimnerError):
            return ticket, None, drawn
        if ticket.ctx.cancelled:
            return ticket, None, JobCancelled()
        try:
            return ticket, ticket.finish(drawn), None
        except BaseException as exc:
            return ticket, None, exc


class Scheduler:
    def __init__(
        self,
        lanes: Mapping[str, Lane],
        models: Mapping[str, ModelLimits],
        *,
        key_limits: KeyLimits | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.lanes = dict(lanes)
        self.observer: Observer = observer or _Unobserved()
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
            lane.stop()
            with lane.cond:
                waiting = [t for q in lane.waiting.values() for t in q]
                lane.waiting.clear()
            for ticket in waiting:
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
        with lane.cond:
            if not admitted:
                self._admit(lane, ticket)
            lane.waiting.setdefault(client, deque()).append(ticket)
            lane.stat(model).queued += 1
            lane.cond.notify()
        return ticket

    def _admit(self, lane: Lane, ticket: Ticket[Any]) -> None:
        """Refuse (429) a job beyond its model's queue or its client's limits (under lane.cond)."""
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
                with lane.cond:
                    lane.cond.notify_all()
        ticket.state = "ended"
        loop = ticket.future.get_loop()

        def resolve() -> None:
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
        lane = self.lane_of(ticket.model)
        with lane.cond:
            if ticket.state != "queued":
                return
            queue = lane.waiting.get(ticket.client)
            if queue is not None and ticket in queue:
                queue.remove(ticket)
                if not queue:
                    del lane.waiting[ticket.client]
            stats = lane.stat(ticket.model)
            stats.queued -= 1
            stats.cancelled += 1
            lane.cond.notify_all()
        self.ended(ticket, None, JobCancelled())

    async def result(
        self, ticket: Ticket[T], is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> T:
        """The job's result. Cancelling the awaiting task, or the client leaving (when
        `is_disconnected` is given), cancels the job and raises JobCancelled."""
        await self._watch(ticket, ticket.future, is_disconnected)
        return ticket.future.result()

    async def wait_started(
        self, ticket: Ticket[Any], is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Until the job has started (its queue time and batch are known) or ended; cancels the job
        like `result` when the client leaves first."""
        started = asyncio.ensure_future(ticket.started.wait())
        try:
            await self._watch(ticket, asyncio.ensure_future(_first(started, ticket.future)), is_disconnected)
        finally:
            started.cancel()

    async def _watch(
        self,
        ticket: Ticket[Any],
        awaited: asyncio.Future[Any],
        is_disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        watcher = asyncio.ensure_future(_until(is_disconnected)) if is_disconnected else None
        try:
            await asyncio.wait(
                {awaited} | ({watcher} if watcher else set()), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the awaiting task was cancelled: the server is stopping
            self.cancel(ticket)
            raise
        finally:
            if watcher is not None:
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


async def _first(*futures: asyncio.Future[Any]) -> None:
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


async def _until(is_disconnected: Callable[[], Awaitable[bool]]) -> None:
    while not await is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
