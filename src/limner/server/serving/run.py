"""THE run path: one Run per request, whatever carries its answer (a body, a stream, a stored job,
a job replayed after a restart).

A Run hands the request's job to the scheduler (a stream's as one job per image with seed + i, so
that events come image after image; otherwise one job of n), builds the partial and completed events
with the one builder (`events.py`) when someone will read them, and collects the encoded images. Its
`feed` holds the events so far: a stream's client, an idempotent retry and `/events` follow it.

After the engine, each job's `finish` runs in the worker: the masked-edit guarantee (pixels outside
the mask come back exactly as sent, whatever the engine did) and the encoding. This is its one owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from limner import imaging
from limner.engines.jobs import EditJob, Job, JobContext
from limner.errors import JobCancelled, LimnerError
from limner.scheduler import Scheduler, Ticket
from limner.server.errors import log, server_error
from limner.server.metrics import Metrics
from limner.server.serving import events
from limner.server.serving.work import Work

Disconnected = Callable[[], Awaitable[bool]]


def kept_outside_mask(job: Job, image: Image.Image) -> Image.Image:
    """A masked edit's image (or preview) with every pixel outside the mask as it was sent."""
    if isinstance(job, EditJob) and job.mask is not None and job.images:
        return imaging.keep_outside_mask(job.images[0], job.mask, image)
    return image


def finisher(work: Work, job: Job, metrics: Metrics | None) -> Callable[[list[Image.Image]], list[bytes]]:
    """What runs in the worker after the engine: the masked-edit guarantee, then encoding."""
    resolved = work.resolved

    def finish(images: list[Image.Image]) -> list[bytes]:
        started = time.perf_counter()
        images = [kept_outside_mask(job, image) for image in images]
        encoded = [
            imaging.encode_image(
                image, output_format=resolved.output_format, compression=resolved.output_compression
            )
            for image in images
        ]
        if metrics is not None:
            metrics.encoded(resolved.profile.name, resolved.operation, time.perf_counter() - started)
        return encoded

    return finish


@dataclass(eq=False)
class Run:
    """One request's work from the scheduler to its images and events.

    `with_events`: build partial and completed events (a stream, an asynchronous job); a plain body
    needs none. `image_by_image`: one job per image, so each image's events come before the next.
    """

    work: Work
    scheduler: Scheduler
    client: str
    metrics: Metrics | None
    with_events: bool = False
    image_by_image: bool = False
    #: The job outlives a cancelled driver (a synchronous job with a key, driven by its client's handler:
    #: its retry will want it): a cancelled `drive` leaves it queued or running, and `done` unset, for
    #: the next `drive` to take up where it was. One job only (not `image_by_image`).
    outlives_driver: bool = False
    ctx: JobContext = field(init=False)
    jobs: list[Job] = field(init=False)
    ticket: Ticket[list[bytes]] | None = None
    tickets: list[Ticket[list[bytes]]] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    #: Each image's completed event but its image (what a durable job keeps with its result).
    completed: list[dict[str, Any]] = field(default_factory=list)
    progress: tuple[int, int] | None = None
    #: The first job has started (`on_start` was called): once only, whichever `drive` saw it.
    began: bool = False
    #: How it ended when not with images: an error (the envelope's), or cancelled (the client left,
    #: DELETE, or the server is stopping).
    error: LimnerError | None = None
    cancelled: bool = False
    #: The events so far (partial images, completed images), for followers.
    feed: list[bytes] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        resolved, job = self.work.resolved, self.work.job
        self.ctx = JobContext(partial_images=resolved.partial_images if self.with_events else 0)
        self.ctx.on_progress = self._on_progress
        if self.with_events:
            loop = asyncio.get_running_loop()

            def on_partial(_image: int, index: int, preview: Image.Image) -> None:
                preview = kept_outside_mask(job, preview)
                data = imaging.encode_preview(preview, output_format=resolved.output_format)
                chunk = events.partial_event(self.work.kind, resolved, index, data)
                loop.call_soon_threadsafe(self.publish, chunk)

            self.ctx.on_partial = on_partial
        self.jobs = (
            [replace(job, n=1, seed=job.seed + i) for i in range(resolved.n)]
            if self.image_by_image
            else [job]
        )

    def _on_progress(self, done: int, total: int) -> None:
        self.progress = (done, total)

    def _submit(self, job: Job, *, admitted: bool) -> Ticket[list[bytes]]:
        ticket = self.scheduler.submit(
            self.work.model,
            job,
            self.ctx,
            finisher(self.work, job, self.metrics),
            client=self.client,
            admitted=admitted,
        )
        self.ticket = ticket
        self.tickets.append(ticket)
        return ticket

    def start(self, *, admitted: bool = False) -> None:
        """Queue the first job now: a full queue raises RateLimited here, before anything is accepted."""
        self._submit(self.jobs[0], admitted=admitted)

    async def drive(
        self,
        *,
        disconnected: Disconnected | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run every job (the first was queued by start()); sets `error` rather than raising, and
        `done` at the end. `disconnected` is watched while waiting: a client that leaves cancels."""
        assert not (self.outlives_driver and self.image_by_image)
        current = self.ticket
        handed_on = False
        outlive = self.outlives_driver
        try:
            for index, job in enumerate(self.jobs):
                current = self.ticket if index == 0 else self._submit(job, admitted=True)
                assert current is not None
                await self.scheduler.wait_started(current, disconnected, outlive=outlive)
                if index == 0 and not self.began:
                    self.began = True
                    if on_start is not None:
                        await on_start()
                images = await self.scheduler.result(current, disconnected, outlive=outlive)
                self.encoded += images
                for data in images:
                    fields = events.completed_fields(
                        self.work.kind, self.work.resolved, self.work.input_sizes
                    )
                    self.completed.append(fields)
                    if self.with_events:
                        self.publish(events.completed_event(fields, {"b64_json": events.b64(data)}))
            current = None
        except asyncio.CancelledError:
            if outlive:
                handed_on = True  # the job goes on, for the next drive()
            else:
                self.cancelled = True  # and its engine run is stopped (below)
            raise
        except JobCancelled:
            self.cancelled = True
        except LimnerError as exc:
            self.error = exc
        except Exception:
            log.exception("an image job failed")
            self.error = server_error()
        finally:
            if not handed_on:
                if current is not None:  # the client left, a failure, or a cancellation: stop the engine
                    self.scheduler.cancel(current)
                self.done.set()
                self.publish()

    def cancel(self) -> None:
        self.ctx.cancel()
        if self.ticket is not None:
            self.scheduler.cancel(self.ticket)

    def publish(self, chunk: bytes | None = None) -> None:
        if chunk is not None:
            self.feed.append(chunk)
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self, start: int = 0) -> AsyncGenerator[bytes, None]:
        """Every event from `start` on, until the run is done."""
        index = start
        while True:
            changed = self.changed
            while index < len(self.feed):
                yield self.feed[index]
                index += 1
            if self.done.is_set():
                return
            await changed.wait()

    def observed(self) -> dict[str, str]:
        """The scheduler's view of the first job, as response headers."""
        first = self.tickets[0] if self.tickets else None
        headers = {
            "x-limner-queue-ms": str(first.queue_ms if first and first.queue_ms is not None else 0),
            "x-limner-batch-size": str(first.batch_size or 0 if first else 0),
        }
        load_ms = self.load_ms()
        if load_ms is not None:  # its model had to be loaded first (and maybe another unloaded)
            headers["x-limner-load-ms"] = str(load_ms)
        return headers

    def load_ms(self) -> int | None:
        """How long the jobs waited for their model to be loaded; None when it was resident."""
        waits = [t.load_ms for t in self.tickets if t.load_ms is not None]
        return max(waits) if waits else None

    def timings(self) -> tuple[int | None, int | None]:
        """(queue ms of the first job, run ms of all), for the access record."""
        first = self.tickets[0].queue_ms if self.tickets else None
        runs = [t.run_ms for t in self.tickets if t.run_ms is not None]
        return first, sum(runs) if runs else None
