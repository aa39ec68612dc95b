"""The scheduler without HTTP: its lanes, admission, fairness, batching and cancellation, driven
directly with tests/support/engines.GateEngine (each run waits until the test lets it through)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image

from limner.engines.jobs import GenerateJob, JobContext
from limner.errors import JobCancelled, RateLimited
from limner.scheduler import KeyLimits, Lane, ModelLimits, Residency, Scheduler, Ticket
from tests.support.engines import GateEngine


@contextmanager
def scheduler_with(
    engine: GateEngine, *, max_queue: int = 8, concurrency: int = 1, **limits: Any
) -> Iterator[Scheduler]:
    lane = Lane("gate", engine, concurrency=concurrency, max_batch=engine.info.max_batch)
    residency = Residency({"gate": engine}, {"gate": ["m"]})
    scheduler = Scheduler(
        {"gate": lane},
        {"m": ModelLimits("gate", max_queue)},
        residency=residency,
        key_limits=KeyLimits(**limits),
    )
    try:
        yield scheduler
    finally:
        engine.open()
        scheduler.shutdown()


def submit(scheduler: Scheduler, seed: int, client: str = "a", n: int = 1) -> Ticket[list[Image.Image]]:
    job = GenerateJob(prompt="x", width=64, height=64, n=n, seed=seed)
    return scheduler.submit("m", job, JobContext(), lambda images: images, client=client)


async def test_jobs_with_one_batch_key_share_a_run() -> None:
    engine = GateEngine()
    with scheduler_with(engine) as scheduler:
        blocker = submit(scheduler, 100)
        await engine.began(1)
        waiting = [submit(scheduler, seed, client=f"c{seed}") for seed in (1, 2, 3)]
        engine.open()
        results = [await scheduler.result(t) for t in (blocker, *waiting)]
    assert engine.runs == [[100], [1, 2, 3]]  # the three waiting jobs ran as one batch
    assert [len(r) for r in results] == [1, 1, 1, 1] and waiting[0].batch_size == 3


async def test_clients_take_turns() -> None:
    engine = GateEngine(batches=False)
    with scheduler_with(engine) as scheduler:
        blocker = submit(scheduler, 100, client="busy")
        await engine.began(1)
        tickets = [submit(scheduler, seed, client="busy") for seed in (1, 2, 3)]
        other = submit(scheduler, 9, client="other")
        engine.open()
        for ticket in (blocker, *tickets, other):
            await scheduler.result(ticket)
    # "other" has never been served and "busy" just was: other's one job goes before busy's next.
    assert [run[0] for run in engine.runs] == [100, 9, 1, 2, 3]


async def test_a_full_queue_refuses_with_retry_after_and_a_cancelled_job_frees_its_place() -> None:
    engine = GateEngine(batches=False)
    with scheduler_with(engine, max_queue=1) as scheduler:
        running = submit(scheduler, 1)
        await engine.began(1)
        queued = submit(scheduler, 2)
        with pytest.raises(RateLimited) as refused:
            submit(scheduler, 3)
        assert int((refused.value.headers or {})["Retry-After"]) >= 1 and refused.value.reason == "queue_full"
        scheduler.cancel(queued)
        with pytest.raises(JobCancelled):
            await scheduler.result(queued)
        again = submit(scheduler, 4)  # the place is free at once
        engine.open()
        await scheduler.result(running)
        await scheduler.result(again)


async def test_per_key_running_limit() -> None:
    engine = GateEngine(batches=False)
    with scheduler_with(engine, concurrency=2, max_running=1) as scheduler:
        first = submit(scheduler, 1, client="k")
        await engine.began(1)
        with pytest.raises(RateLimited) as refused:
            submit(scheduler, 2, client="k")
        assert refused.value.reason == "max_running_per_key"
        other = submit(scheduler, 3, client="j")  # another key still runs beside it
        await engine.began(2)
        engine.open()
        await scheduler.result(first)
        await scheduler.result(other)


@pytest.mark.parametrize("outlive", [False, True])
async def test_a_cancelled_waiter_cancels_its_job_unless_the_job_outlives_it(outlive: bool) -> None:
    """A job with a key outlives the task that waits for it: that task cancelled, the job goes on and
    the next waiter gets its result; any other job is cancelled with its waiter."""
    engine = GateEngine(batches=False)
    with scheduler_with(engine) as scheduler:
        blocker = submit(scheduler, 100)
        await engine.began(1)
        queued = submit(scheduler, 1)
        for wait in (scheduler.wait_started, scheduler.result):
            waiter = asyncio.ensure_future(wait(queued, outlive=outlive))
            await asyncio.sleep(0.05)  # the task waits now: its job is queued behind the blocker
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            if not outlive:
                break
        engine.open()
        await scheduler.result(blocker)
        if outlive:
            assert len(await scheduler.result(queued)) == 1
            assert [run[0] for run in engine.runs] == [100, 1]
        else:
            with pytest.raises(JobCancelled):
                await scheduler.result(queued)
            assert [run[0] for run in engine.runs] == [100]
