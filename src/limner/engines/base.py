"""The Engine protocol: the one seam between the server and whatever draws the pictures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from limner.engines.jobs import EditJob, GenerateJob, JobContext, VaryJob


@dataclass(frozen=True)
class EngineInfo:
    """What an engine can do, for the rule table and /v1/models."""

    name: str
    operations: frozenset[str] = frozenset({"generate", "edit", "vary"})
    #: Sizes the engine accepts as (width, height); None means any size within max_pixels and a
    #: multiple of `size_multiple` on each side.
    sizes: tuple[tuple[int, int], ...] | None = None
    size_multiple: int = 1
    max_pixels: int = 3840 * 2160
    #: How many reference images edits use beyond the first (0: only the first is used).
    extra_reference_images: bool = True
    extras: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """Draws images. Methods are synchronous and run off the event loop (limner.scheduler).

    Each returns exactly `job.n` images of exactly `job.width` x `job.height`, RGBA when
    `job.transparent` else RGB. They call `ctx.check()` between steps and `ctx.report_partial()` for
    previews, and raise limner.errors.InvalidRequest for inputs they cannot honour (never a silent
    fallback).
    """

    @property
    def info(self) -> EngineInfo: ...

    def load(self) -> None:
        """Make the engine ready (load weights). Idempotent; may be slow."""
        ...

    @property
    def loaded(self) -> bool: ...

    # Optional: `def check(self, job) -> None` raising limner.errors.InvalidRequest for a job the
    # engine cannot do (a size the model cannot make). The server calls it before queueing the job,
    # so such a request is a plain 400, never a failure in the middle of a stream.

    def generate(self, job: GenerateJob, ctx: JobContext) -> list[Image.Image]: ...

    def edit(self, job: EditJob, ctx: JobContext) -> list[Image.Image]: ...

    def vary(self, job: VaryJob, ctx: JobContext) -> list[Image.Image]: ...
