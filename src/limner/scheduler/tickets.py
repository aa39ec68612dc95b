"""A job in the scheduler (its Ticket), and what the scheduler reports as it works (Observer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from PIL import Image

from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext

T = TypeVar("T")


class Observer(Protocol):
    """What the scheduler reports as it works (limner.server.metrics.Metrics is one)."""

    def job_started(self, model: str, operation: str, queue_seconds: float) -> None: ...

    def batch_ran(self, model: str, operation: str, seconds: float, images: int) -> None: ...

    def images_made(self, model: str, operation: str, count: int) -> None: ...

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def model_unloaded(self, model: str) -> None: ...

    def model_load_failed(self, model: str) -> None: ...


class Unobserved:
    """An Observer that records nothing."""

    def job_started(self, model: str, operation: str, queue_seconds: float) -> None:
        """Nobody watches."""

    def batch_ran(self, model: str, operation: str, seconds: float, images: int) -> None:
        """Nobody watches."""

    def images_made(self, model: str, operation: str, count: int) -> None:
        """Nobody watches."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """Nobody watches."""

    def model_unloaded(self, model: str) -> None:
        """Nobody watches."""

    def model_load_failed(self, model: str) -> None:
        """Nobody watches."""


def operation_of(job: Job) -> str:
    return "generate" if isinstance(job, GenerateJob) else "edit" if isinstance(job, EditJob) else "vary"


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
    #: Set (on the event loop) when a worker picks the job, or when it ends without starting.
    started: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set (on the event loop) when its future is.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued, running, ended
    #: Set when the job starts: how long it waited, and how many images its engine run held.
    queue_ms: int | None = None
    batch_size: int | None = None
    #: Set when it ends: how long its engine run took.
    run_ms: int | None = None
    #: Set when its batch had to wait for the model to be loaded: for how long.
    load_ms: int | None = None

    @property
    def images(self) -> int:
        return self.job.n
