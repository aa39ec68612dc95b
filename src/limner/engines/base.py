"""The Engine protocol: the one seam between the server and whatever draws the pictures.

The protocol holds what the server calls, and only that: `check` before anything is queued or
streamed, `batch_key` and `run_batch` by the scheduler's workers, `load` (at start-up or on first use)
and `close` (at shutdown, or to make room under a memory budget) by limner.scheduler.residency
alone, which reads `memory()` and `pinned` to decide what fits. `EngineBase` gives the defaults an
engine that does not batch needs, and `generate` / `edit` / `vary`, a one-job convenience for such
engines and for direct use (tests, benchmarks); the server never calls those.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from limner.engines.jobs import EditJob, GenerateJob, Job, JobContext, VaryJob


@dataclass(frozen=True)
class EngineInfo:
    """What an engine can do, for the rule table, the scheduler and /v1/models."""

    name: str
    operations: frozenset[str] = frozenset({"generate", "edit", "vary"})
    #: Sizes the engine accepts as (width, height); None means any size within max_pixels and a
    #: multiple of `size_multiple` on each side.
    sizes: tuple[tuple[int, int], ...] | None = None
    size_multiple: int = 1
    max_pixels: int = 3840 * 2160
    #: The images one edit takes: 1 edits that image alone; more are used together (references).
    max_images: int = 16
    #: What the engine honours, advertised on /v1/models and refused up front where False:
    #: an edit's mask, `input_fidelity=high`, `negative_prompt`, `guidance_scale`,
    #: `background=transparent`.
    mask: bool = True
    input_fidelity: bool = True
    negative_prompt: bool = True
    guidance_scale: bool = True
    transparency: bool = True
    #: The most images one engine run may hold (the scheduler fills batches up to it).
    max_batch: int = 1
    #: Whether requests may name LoRA adapters (`lora`, or the model name `NAME:ADAPTER`).
    adapters: bool = False
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineMemory:
    """What an engine holds on a device, for a memory budget (limner.scheduler.residency)."""

    #: The device whose memory it takes ("cuda:0", "cpu"); None: none worth counting (the sketch engine).
    device: str | None = None
    #: Bytes expected once loaded, known before loading (from the checkpoint's files).
    estimated: int = 0
    #: Bytes measured on the device once loaded (parameters and buffers); None while not loaded.
    measured: int | None = None
    #: Bytes set aside beside the weights for what is loaded on demand (LoRA adapters, a prompt cache).
    reserved: int = 0
    #: On CUDA: what the allocator's figure grew by while the model loaded (weights, buffers and the
    #: allocator's rounding); None elsewhere.
    allocated: int | None = None

    @property
    def charge(self) -> int:
        """What the engine counts against a budget: its weights (measured once known) and its reserve."""
        return (self.measured if self.measured is not None else self.estimated) + self.reserved


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

    @property
    def loaded(self) -> bool: ...

    @property
    def load_at_startup(self) -> bool:
        """Whether the server loads this engine before it starts serving."""
        ...

    @property
    def pinned(self) -> bool:
        """Whether a memory budget may never unload this engine to make room for another."""
        ...

    def memory(self) -> EngineMemory:
        """What the engine takes (or will take) on its device."""
        ...

    def adapters(self) -> list[str]:
        """The names of the LoRA adapters a request may name (none for most engines)."""
        ...

    def counters(self) -> dict[str, float]:
        """What the engine counts for /metrics (name -> value; `_total` is added to counters)."""
        ...

    def load(self) -> None:
        """Make the engine ready (load weights). Idempotent; may be slow."""
        ...

    def close(self) -> None:
        """Release what load() took (weights, device memory). The engine is not used afterwards."""
        ...

    def check(self, job: Job) -> None:
        """Raise limner.errors.InvalidRequest for a job this engine cannot do (a size the model cannot
        make): the server calls it before queueing, so the client gets a plain 400, never a failure in
        the middle of a stream."""
        ...

    def batch_key(self, job: Job) -> Hashable | None:
        """Jobs with equal keys may share one engine run; None: this job always runs alone."""
        ...

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        """Run jobs (of one batch key) at once; return each job's own images, in order. A job whose
        context is cancelled may be dropped (its entry is then empty); when every job is cancelled the
        run stops and raises limner.errors.JobCancelled."""
        ...


class EngineBase:
    """Defaults for an engine that needs no loading, checks nothing beyond its operations' own
    checks, and runs each job alone."""

    @property
    def load_at_startup(self) -> bool:
        return False

    @property
    def pinned(self) -> bool:
        return False

    def memory(self) -> EngineMemory:
        """Nothing worth counting."""
        return EngineMemory()

    def adapters(self) -> list[str]:
        return []

    def counters(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        """Nothing to release."""

    def check(self, job: Job) -> None:
        """Nothing to refuse up front."""

    def batch_key(self, job: Job) -> Hashable | None:
        return None

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        return [self.run_one(job, ctx) for job, ctx in zip(jobs, contexts, strict=True)]

    def run_one(self, job: Job, ctx: JobContext) -> list[Image.Image]:
        if isinstance(job, GenerateJob):
            return self.generate(job, ctx)
        if isinstance(job, EditJob):
            return self.edit(job, ctx)
        return self.vary(job, ctx)

    def generate(self, job: GenerateJob, ctx: JobContext) -> list[Image.Image]:
        raise NotImplementedError

    def edit(self, job: EditJob, ctx: JobContext) -> list[Image.Image]:
        raise NotImplementedError

    def vary(self, job: VaryJob, ctx: JobContext) -> list[Image.Image]:
        raise NotImplementedError
