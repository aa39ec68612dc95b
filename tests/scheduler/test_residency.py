"""Residency, the only caller of engine.load() and engine.close(): loads on first use (once, however
many workers ask), at start-up when asked, knows what is idle, closes at shutdown."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from PIL import Image

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.jobs import GenerateJob, Job, JobContext
from limner.scheduler import Lane, ModelLimits, Residency, Scheduler


class CountingEngine(EngineBase):
    """Counts its loads and closes; a run checks that it was loaded first."""

    def __init__(self, *, at_startup: bool = False) -> None:
        self.loads = 0
        self.closes = 0
        self.at_startup = at_startup
        self._loaded = False
        self.gate = threading.Event()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("counting")

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def load_at_startup(self) -> bool:
        return self.at_startup

    def load(self) -> None:
        self.gate.wait(10)
        self.loads += 1
        self._loaded = True

    def close(self) -> None:
        self.closes += 1
        self._loaded = False

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        assert self._loaded, "run before load"
        return [[Image.new("RGB", (job.width, job.height))] for job in jobs]


def test_one_load_however_many_workers_ask() -> None:
    engine = CountingEngine()
    residency = Residency({"e": engine}, {"e": ["m"]})
    threads = [threading.Thread(target=residency.ensure, args=("e",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    engine.gate.set()
    for thread in threads:
        thread.join()
    assert engine.loads == 1 and residency.snapshot()["e"]["loaded"]


def test_start_up_loads_only_what_asks_and_shutdown_closes_all() -> None:
    eager, lazy = CountingEngine(at_startup=True), CountingEngine()
    eager.gate.set()
    residency = Residency({"eager": eager, "lazy": lazy}, {})
    residency.load_at_startup()
    assert (eager.loads, lazy.loads) == (1, 0)
    residency.close_all()
    assert (eager.closes, lazy.closes) == (1, 1) and not residency.loaded("eager")


async def test_the_first_batch_loads_the_engine_through_residency_and_idleness_is_known() -> None:
    engine = CountingEngine()
    engine.gate.set()
    residency = Residency({"e": engine}, {"e": ["m"]})
    scheduler = Scheduler(
        {"e": Lane("e", engine, concurrency=1, max_batch=1)}, {"m": ModelLimits("e", 4)}, residency=residency
    )
    assert residency.snapshot()["e"] == {
        "loaded": False,
        "load_seconds": None,
        "running": 0,
        "idle_seconds": None,
    }
    ticket = scheduler.submit(
        "m", GenerateJob(prompt="x", width=8, height=8), JobContext(), lambda images: images, client="c"
    )
    assert len(await scheduler.result(ticket)) == 1
    scheduler.shutdown()
    state = residency.snapshot()["e"]
    assert engine.loads == 1 and state["loaded"] and state["running"] == 0 and state["idle_seconds"] >= 0
