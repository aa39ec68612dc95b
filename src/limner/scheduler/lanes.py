"""Lanes: the queue and workers of one engine, its fairness between clients and its batching.

A lane keeps waiting jobs per client; a free worker serves the clients in turn (least recently served
first), so a client with 50 jobs queued delays another client's single job by at most one batch. The
worker takes the head job of the next client, then every waiting job with the same batch key, clients
in turn, up to the engine's max_batch images; with batch_wait_ms it waits that long for a fuller batch.
What the lane needs of the scheduler above it (per-key running limits, the life of a ticket, the
observer and residency) it reaches through LaneHost, never through the scheduler's own state.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from limner.engines.base import Engine
from limner.errors import EngineUnavailable, JobCancelled, LimnerError
from limner.scheduler.residency import NoRoom, Residency
from limner.scheduler.tickets import Observer, Ticket, operation_of


class LaneHost(Protocol):
    """What a lane's workers ask of the scheduler that owns them."""

    observer: Observer
    residency: Residency

    def may_run(self, client: str, *, also: int = 0) -> bool: ...

    def started(self, ticket: Ticket[Any]) -> None: ...

    def ready(self, ticket: Ticket[Any]) -> None: ...

    def ended(self, ticket: Ticket[Any], value: Any, error: BaseException | None) -> None: ...


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

    # -- the queue (what the scheduler asks of it) --------------------------------------------------

    def enqueue(self, ticket: Ticket[Any], admit: Callable[[], None] | None = None) -> None:
        """Queue a ticket; `admit` runs first under the lane's lock and may refuse it (RateLimited)."""
        with self.cond:
            if admit is not None:
                admit()
            self.waiting.setdefault(ticket.client, deque()).append(ticket)
            self.stat(ticket.model).queued += 1
            self.cond.notify()

    def withdraw(self, ticket: Ticket[Any]) -> bool:
        """Take a waiting ticket out of the queue (its client left); False once it has started."""
        with self.cond:
            if ticket.state != "queued":
                return False
            queue = self.waiting.get(ticket.client)
            if queue is not None and ticket in queue:
                queue.remove(ticket)
                if not queue:
                    del self.waiting[ticket.client]
            stats = self.stat(ticket.model)
            stats.queued -= 1
            stats.cancelled += 1
            self.cond.notify_all()
        return True

    def drain(self) -> list[Ticket[Any]]:
        """Stop the workers and hand back every waiting ticket (the server is stopping)."""
        with self.cond:
            self.closed = True
            waiting = [t for q in self.waiting.values() for t in q]
            self.waiting.clear()
            self.cond.notify_all()
        return waiting

    def wake(self) -> None:
        """A client may run again: workers that skipped it look once more."""
        with self.cond:
            self.cond.notify_all()

    # -- workers ----------------------------------------------------------------------------------

    def start(self, host: LaneHost) -> None:
        for index in range(self.concurrency):
            thread = threading.Thread(
                target=self._work, args=(host,), name=f"limner-{self.key}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _work(self, host: LaneHost) -> None:
        while True:
            with self.cond:
                batch = self._take(host)
                if batch is None:
                    return
            self._run(host, batch)

    def _take(self, host: LaneHost) -> list[Ticket[Any]] | None:
        """The next batch (under cond): the head job of the next client in turn, then compatible jobs
        from every client in turn. None when the lane is closed."""
        while True:
            if self.closed:
                return None
            head = self._next_head(host)
            if head is not None:
                break
            self.cond.wait()
        batch = [head]
        self._gather(batch, host)
        if self.batch_wait and head.key is not None:
            deadline = time.monotonic() + self.batch_wait
            while sum(t.images for t in batch) < self.max_batch and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
                self._gather(batch, host)
        started = time.monotonic()
        images = sum(t.images for t in batch)
        for ticket in batch:
            ticket.state = "running"
            ticket.queue_ms = int((started - ticket.enqueued) * 1000)
            ticket.batch_size = images
            stats = self.stat(ticket.model)
            stats.queued -= 1
            stats.running += 1
            host.started(ticket)
        self.busy += 1
        return batch

    def _turns(self) -> list[str]:
        """Waiting clients, least recently served first (never served: first, in arrival order)."""
        return sorted(self.waiting, key=lambda client: self._last_served.get(client, -1))

    def _next_head(self, host: LaneHost) -> Ticket[Any] | None:
        for client in self._turns():
            queue = self.waiting[client]
            if not queue or not host.may_run(client):
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

    def _gather(self, batch: list[Ticket[Any]], host: LaneHost) -> None:
        """Add waiting jobs with the head's batch key, one per client in turn, up to max_batch images."""
        key = batch[0].key
        if key is None:
            return
        room = self.max_batch - sum(t.images for t in batch)
        while room > 0:
            added = False
            for client in self._turns():
                if not host.may_run(client, also=sum(t.client == client for t in batch)):
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

    def _run(self, host: LaneHost, batch: list[Ticket[Any]]) -> None:
        live = [t for t in batch if not t.ctx.cancelled]
        outcomes: list[tuple[Ticket[Any], Any, BaseException | None]] = []
        observer = host.observer
        operation = operation_of(batch[0].job)
        for ticket in batch:
            observer.job_started(ticket.model, operation_of(ticket.job), (ticket.queue_ms or 0) / 1000)
        seconds = 0.0
        try:
            if live:
                # Loads the engine on first use (within the memory budget, which may unload others).
                try:
                    waited = host.residency.acquire(self.key)
                except NoRoom:
                    raise  # the model is fine, there was no room in time: the jobs behind may find some
                except EngineUnavailable as exc:
                    # The load failed: the jobs waiting behind this batch would only fail the same way
                    # (one load at a time), so they get the error now; the next job tries again.
                    self._fail_waiting(host, exc)
                    raise
                if waited is not None:
                    for ticket in batch:
                        ticket.load_ms = int(waited * 1000)
                for ticket in batch:
                    host.ready(ticket)
                try:
                    started = time.perf_counter()
                    drawn = self._draw(live)
                    seconds = time.perf_counter() - started
                finally:
                    host.residency.release(self.key)
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
            host.ended(ticket, value, error)

    def _fail_waiting(self, host: LaneHost, error: BaseException) -> None:
        with self.cond:
            failed = [t for q in self.waiting.values() for t in q]
            self.waiting.clear()
            for ticket in failed:
                ticket.state = "running"
                stats = self.stat(ticket.model)
                stats.queued -= 1
                stats.failed += 1
            self.cond.notify_all()
        for ticket in failed:
            host.started(ticket)
            host.ended(ticket, None, error)

    def backlog(self) -> int:
        """Jobs queued or held by a worker (read without the lock: a snapshot for residency)."""
        return sum(len(q) for q in list(self.waiting.values())) + self.busy

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
