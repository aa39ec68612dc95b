"""Residency, the only caller of engine.load() and engine.close(): loads on first use (once, however
many workers ask), at start-up when asked, knows what is idle, closes at shutdown."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from PIL import Image

from limner.engines.base import EngineBase, EngineInfo, EngineMemory
from limner.engines.jobs import GenerateJob, Job, JobContext
from limner.errors import EngineUnavailable
from limner.scheduler import Lane, ModelLimits, Residency, Scheduler
from limner.scheduler.residency import NoRoom, parse_amount


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
    before = residency.snapshot()["e"]
    assert (before["state"], before["loaded"], before["load_seconds"], before["idle_seconds"]) == (
        "unloaded",
        False,
        None,
        None,
    )
    ticket = scheduler.submit(
        "m", GenerateJob(prompt="x", width=8, height=8), JobContext(), lambda images: images, client="c"
    )
    assert len(await scheduler.result(ticket)) == 1
    scheduler.shutdown()
    state = residency.snapshot()["e"]
    assert engine.loads == 1 and state["loaded"] and state["running"] == 0 and state["idle_seconds"] >= 0


# -- a memory budget ---------------------------------------------------------------------------------


class SizedEngine(EngineBase):
    """An engine of `size` bytes on the CPU; its load checks that the budget holds (what is loaded
    beside it fits), and can be made to fail."""

    def __init__(
        self, size: int, world: dict[str, SizedEngine], *, budget: int, pinned: bool = False
    ) -> None:
        self.size, self.world, self.budget, self._pinned = size, world, budget, pinned
        self.loads = self.closes = 0
        self.fail_next = False
        self._loaded = False

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("sized")

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def pinned(self) -> bool:
        return self._pinned

    @property
    def load_at_startup(self) -> bool:
        return self._pinned

    def memory(self) -> EngineMemory:
        return EngineMemory(device="cpu", estimated=self.size, measured=self.size if self._loaded else None)

    def load(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise EngineUnavailable("Model 'broken' could not be loaded on this server.")
        beside = sum(e.size for e in self.world.values() if e.loaded)
        assert beside + self.size <= self.budget, "loaded beyond the budget"
        self.loads += 1
        self._loaded = True

    def close(self) -> None:
        self.closes += 1
        self._loaded = False

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        assert self._loaded, "run before load"
        return [[Image.new("RGB", (job.width, job.height))] for job in jobs]


def sized(budget: int, **sizes: int) -> tuple[dict[str, SizedEngine], dict[str, list[str]]]:
    world: dict[str, SizedEngine] = {}
    for name, size in sizes.items():
        world[name] = SizedEngine(size, world, budget=budget)
    return world, {name: [name] for name in world}


async def test_two_models_in_a_budget_for_one_take_turns_and_never_overlap() -> None:
    world, models = sized(150, a=100, b=100)
    lanes = {k: Lane(k, e, concurrency=1, max_batch=1) for k, e in world.items()}
    residency = Residency(
        world, models, budgets={"cpu": 150}, work=lambda key: lanes[key].backlog(), load_wait_seconds=30
    )
    scheduler = Scheduler(lanes, {k: ModelLimits(k, 16) for k in world}, residency=residency)
    tickets = [
        scheduler.submit(
            name,
            GenerateJob(prompt="x", width=8, height=8),
            JobContext(),
            lambda images: images,
            client=f"c{i}",
        )
        for i, name in enumerate(["a", "b"] * 4)
    ]
    for ticket in tickets:
        assert len(await scheduler.result(ticket)) == 1
    scheduler.shutdown()
    state = residency.snapshot()
    assert state["a"]["loads"] >= 1 and state["b"]["loads"] >= 1
    assert state["a"]["evictions"] + state["b"]["evictions"] >= 1
    assert not (world["a"].loaded and world["b"].loaded)
    assert any(t.load_ms is not None for t in tickets)


def test_a_model_with_work_is_not_unloaded_and_the_wait_is_bounded() -> None:
    world, models = sized(150, a=100, b=100)
    busy = {"a": 1}
    residency = Residency(
        world, models, budgets={"cpu": 150}, work=lambda key: busy.get(key, 0), load_wait_seconds=0.3
    )
    residency.ensure("a")
    with pytest.raises(NoRoom) as refused:
        residency.ensure("b")
    assert refused.value.status_code == 503 and int(refused.value.headers["Retry-After"]) >= 1
    assert "'b'" in refused.value.message and "'a'" in refused.value.message
    assert world["a"].loaded and world["a"].closes == 0
    busy["a"] = 0  # its queue drained
    residency.ensure("b")
    assert world["b"].loaded and not world["a"].loaded and residency.snapshot()["a"]["evictions"] == 1


def test_a_pinned_model_is_never_unloaded() -> None:
    world: dict[str, SizedEngine] = {}
    world["p"] = SizedEngine(100, world, budget=160, pinned=True)
    world["b"] = SizedEngine(50, world, budget=160)
    world["c"] = SizedEngine(50, world, budget=160)
    residency = Residency(world, {k: [k] for k in world}, budgets={"cpu": 160})
    residency.load_at_startup()
    for name in ["b", "c"] * 3:
        residency.ensure(name)
    assert world["p"].loads == 1 and world["p"].closes == 0 and world["p"].loaded
    assert world["b"].loads == 3 and world["c"].loads == 3


def test_a_model_that_cannot_fit_is_a_start_up_error() -> None:
    world: dict[str, SizedEngine] = {}
    world["p"] = SizedEngine(100, world, budget=160, pinned=True)
    world["big"] = SizedEngine(80, world, budget=160)
    with pytest.raises(ValueError, match=r"'big' needs about .* beside the pinned 'p'.*memory budget of cpu"):
        Residency(world, {k: [k] for k in world}, budgets={"cpu": 160})


def test_a_failed_load_frees_what_it_took_and_the_next_request_tries_again() -> None:
    world, models = sized(150, a=100)
    residency = Residency(world, models, budgets={"cpu": 150})
    world["a"].fail_next = True
    with pytest.raises(EngineUnavailable):
        residency.ensure("a")
    state = residency.snapshot()["a"]
    assert (state["state"], state["load_failures"], world["a"].closes) == ("unloaded", 1, 1)
    residency.ensure("a")
    assert residency.snapshot()["a"]["state"] == "loaded"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("512 MiB", 512 * 2**20),
        ("50%", 500),
        ("auto", 900),
        (4096, 4096),
    ],
)
def test_budget_amounts(text: object, expected: int) -> None:
    assert parse_amount(text, lambda: 1000) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1GiB", "0", "150%", True, "20 parsecs"])
def test_bad_budget_amounts_name_the_setting(text: object) -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        parse_amount(text, lambda: 1000)
