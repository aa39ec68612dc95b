"""The request path's job-store writes, committed in groups on one thread (serving/writes.py): every
caller gets its own write's answer, a group is one commit, and a group that cannot be committed is
written again one by one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from limner.errors import JobStoreFull, JobStoreUnavailable
from limner.server.serving.writes import JobWrites
from limner.stores.jobs import JobRecord, KeyTaken, SqliteJobStore
from tests.stores.test_job_stores import record


@pytest.fixture(autouse=True)
def patient_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write on the loop is never "slow" here, however busy the machine (the test of a slow one sets
    its own bound): which thread makes a write must not depend on the machine's speed."""
    monkeypatch.setattr("limner.server.serving.writes.SLOW_WRITE_SECONDS", 60.0)


class CountingStore(SqliteJobStore):
    """Counts the batches (commits of groups); `fail_batches` makes the next batches fail to commit
    with `failure`."""

    batches = 0
    fail_batches = 0
    failure: Exception = JobStoreFull("the group does not fit")

    @contextmanager
    def batch(self, durable: bool = False) -> Iterator[None]:
        self.batches += 1
        with super().batch(durable):
            yield
            if self.fail_batches:
                self.fail_batches -= 1
                raise self.failure


def test_concurrent_writes_share_commits_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    store.insert(record("taken", key="k"))

    async def main() -> list[object]:
        writes = JobWrites(store)
        calls = [writes(store.insert, record(f"j{i}", mode="sync")) for i in range(40)]
        calls.append(writes(store.insert, record("dup", key="k", mode="sync")))
        calls.append(writes(store.insert, record("async"), durable=True))
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            writes.close()

    outcomes = asyncio.run(main())
    assert outcomes[:40] == [None] * 40 and outcomes[41] is None
    assert isinstance(outcomes[40], KeyTaken)
    assert all(store.get(f"j{i}") is not None for i in range(40)) and store.get("async") is not None
    assert store.get("dup") is None
    assert store.batches < 42  # grouped: fewer commits than writes


def _eight_inserts(store: CountingStore) -> list[object]:
    async def main() -> list[object]:
        writes = JobWrites(store)
        store.fail_batches = 1
        try:
            calls = [writes(store.insert, record(f"j{i}", mode="sync")) for i in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            writes.close()

    return asyncio.run(main())


def test_a_group_that_does_not_fit_is_written_one_by_one(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    assert _eight_inserts(store) == [None] * 8
    assert all(store.get(f"j{i}") is not None for i in range(8))


def test_a_store_that_cannot_be_written_fails_every_write_of_its_group_at_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    store.failure = JobStoreUnavailable("the store is down")
    outcomes = _eight_inserts(store)
    assert any(isinstance(o, JobStoreUnavailable) for o in outcomes)
    # The failed group's writes were not tried again one by one: none of them is in the store.
    assert all(store.get(f"j{i}") is None for i, o in enumerate(outcomes) if o is not None)


def test_writes_after_close_start_the_thread_again(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")

    async def main() -> None:
        writes = JobWrites(store)
        await writes(store.insert, record("a", mode="sync"))
        writes.close()
        await asyncio.wait_for(writes(store.insert, record("b", mode="sync")), timeout=30)
        writes.close()

    asyncio.run(main())
    deadline = time.monotonic() + 30
    while store.get("b") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.get("a") is not None and store.get("b") is not None


@pytest.mark.parametrize("count", [1, 3])
def test_a_write_that_fails_alone_fails_only_its_caller(tmp_path: Path, count: int) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")

    def broken() -> None:
        raise ValueError("this write is broken")

    async def main() -> list[object]:
        writes = JobWrites(store)
        others = [writes(store.insert, record(f"j{i}", mode="sync")) for i in range(count)]
        try:
            return await asyncio.gather(writes(broken), *others, return_exceptions=True)
        finally:
            writes.close()

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], ValueError) and outcomes[1:] == [None] * count


def test_a_full_disk_in_a_group_fails_only_the_write_that_needs_room(tmp_path: Path) -> None:
    """SQLite rolls the whole transaction back when a write finds the file full: the group's other
    writes are made again, alone, and succeed."""
    from tests.server.test_job_store_faults import FillableJobStore

    store = FillableJobStore(tmp_path / "jobs.sqlite3")
    big = record("big", mode="sync")
    big.body = b"x" * 200_000  # more than the file's free pages

    async def main() -> list[object]:
        writes = JobWrites(store)
        store.full = True
        try:
            return await asyncio.gather(
                writes(store.insert, record("small", mode="sync")),
                writes(store.insert, big),
                return_exceptions=True,
            )
        finally:
            writes.close()

    small, full = asyncio.run(main())
    assert small is None and isinstance(full, JobStoreFull)
    store.full = False
    assert store.get("small") is not None and store.get("big") is None


def _threads_of(store: SqliteJobStore, names: list[str]) -> Callable[[JobRecord], None]:
    """store.insert, noting the thread that makes each write."""

    def insert(job: JobRecord) -> None:
        names.append(threading.current_thread().name)
        store.insert(job)

    return insert


def test_a_small_write_is_made_on_the_loop_unless_it_would_wait(tmp_path: Path) -> None:
    """`now=True`: made on the event loop's thread (no hop to the writer thread and back) while the
    store's lock is free; through the writer thread when a group holds it, and always for a durable
    write (an asynchronous job's insert syncs)."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    names: list[str] = []
    insert = _threads_of(store, names)
    loop_thread = threading.current_thread().name

    async def main() -> None:
        writes = JobWrites(store)
        try:
            await writes(insert, record("now", mode="sync"), now=True)
            await writes(insert, record("async"), durable=True, now=True)
            with store._write_lock:  # a group being committed: the write is queued behind it
                queued = asyncio.ensure_future(writes(insert, record("queued", mode="sync"), now=True))
                await asyncio.sleep(0.1)
                assert not queued.done()
            await asyncio.wait_for(queued, timeout=30)
        finally:
            writes.close()

    asyncio.run(main())
    assert names == [loop_thread, "limner-job-writes", "limner-job-writes"]
    assert all(store.get(job_id) is not None for job_id in ("now", "async", "queued"))


def test_the_writer_thread_checkpoints_what_writes_made_now_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CheckpointedStore(SqliteJobStore):
        checkpoints: list[str] = []

        def checkpoint(self) -> None:
            self.checkpoints.append(threading.current_thread().name)
            super().checkpoint()

    monkeypatch.setattr("limner.server.serving.writes.CHECKPOINT_EVERY", 5)
    store = CheckpointedStore(tmp_path / "jobs.sqlite3")

    async def main() -> None:
        writes = JobWrites(store)
        try:
            for i in range(11):
                await writes(store.insert, record(f"j{i}", mode="sync"), now=True)
            deadline = time.monotonic() + 30
            while len(store.checkpoints) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            writes.close()

    asyncio.run(main())
    assert store.checkpoints == ["limner-job-writes"] * 2  # after the 5th and the 10th, off the loop


def test_a_slow_write_on_the_loop_sends_the_next_ones_to_the_writer_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that stalls holds the loop up once, not at every write."""
    monkeypatch.setattr("limner.server.serving.writes.SLOW_WRITE_SECONDS", 0.05)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    names: list[str] = []
    insert = _threads_of(store, names)

    def slow_insert(job: JobRecord) -> None:
        time.sleep(0.1)  # more than the bound set above
        insert(job)

    async def main() -> None:
        writes = JobWrites(store)
        try:
            await writes(slow_insert, record("slow", mode="sync"), now=True)
            await writes(insert, record("next", mode="sync"), now=True)
        finally:
            writes.close()

    with caplog.at_level("WARNING", logger="limner.jobs"):
        asyncio.run(main())
    assert names == [threading.current_thread().name, "limner-job-writes"]
    assert "every write goes to the writer thread" in caplog.text


async def test_a_keyed_request_writes_on_the_loop_unless_its_answer_is_big(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the server: a short synchronous job is written once, at its end (this process alone uses
    the store), on the event loop's thread (gathered with any others that end meanwhile); an end with more than WRITE_NOW_BYTES of images (three
    1024x1024 PNGs) goes to the writer thread."""
    from limner.server.settings import Settings
    from tests.server.test_jobs import until
    from tests.support.inprocess import app_client

    made: list[tuple[str, str]] = []

    class WatchedStore(SqliteJobStore):
        def insert_all(self, jobs: Any, *, durable: bool = False) -> None:  # `insert` too
            made.extend((f"insert {job.status}", threading.current_thread().name) for job, _ in jobs)
            super().insert_all(jobs, durable=durable)

        def end(self, job_id: str, *args: Any, **kwargs: Any) -> None:
            made.append(("end", threading.current_thread().name))
            super().end(job_id, *args, **kwargs)

    stores: list[WatchedStore] = []

    def open_store(data_dir: Path, url: str | None = None) -> WatchedStore:
        stores.append(WatchedStore(data_dir / "jobs.sqlite3"))
        return stores[-1]

    monkeypatch.setattr("limner.server.app.open_job_store", open_store)
    # However slow the machine: the big job is not written at its start for running long.
    monkeypatch.setattr("limner.server.serving.durable.DEFER_START_SECONDS", 600.0)
    small = {"model": "dall-e-2", "prompt": "a red circle", "size": "256x256", "response_format": "b64_json"}
    big = {**small, "size": "1024x1024", "n": 3}
    async with app_client(Settings(data_dir=tmp_path)) as client:
        (store,) = stores
        for name, request in (("small", small), ("big", big)):
            answer = await client.post(
                "/v1/images/generations", json=request, headers={"idempotency-key": name}
            )
            assert answer.status_code == 200, answer.text

            def ended(name: str = name) -> bool:  # the end is written after the answer
                kept = store.by_idempotency_key("-", name)
                return kept is not None and kept.status == "completed" and not client.app.state.jobs.live

            await until(ended)
        replay = await client.post("/v1/images/generations", json=big, headers={"idempotency-key": "big"})
        assert replay.json() == answer.json()
    loop = threading.current_thread().name
    # The retry's key is in the index of recorded keys: its insert finds it taken, on the loop too.
    assert made == [
        ("insert completed", loop),
        ("insert completed", "limner-job-writes"),
        ("insert queued", loop),
    ]


class TracedStore(SqliteJobStore):
    """Notes each statement that writes (INSERT), with the thread that runs it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.inserts: list[tuple[str, str]] = []

    def insert_all(self, jobs: Any, *, durable: bool = False) -> None:
        self.inserts.append((",".join(job.id for job, _ in jobs), threading.current_thread().name))
        super().insert_all(jobs, durable=durable)


def _ended(job_id: str, key: str | None = None) -> JobRecord:
    job = record(job_id, key=key, mode="sync")
    job.status, job.result, job.status_code = "completed", {"response": {"created": 1, "data": []}}, 200
    return job


def test_ended_jobs_are_gathered_into_one_statement_on_the_loop(tmp_path: Path) -> None:
    """Ended jobs that come within GATHER_SECONDS of each other are inserted together, with one
    statement made on the event loop's thread; each caller is answered once its job is in the store."""
    store = TracedStore(tmp_path / "jobs.sqlite3")
    loop_thread = threading.current_thread().name

    async def main() -> None:
        writes = JobWrites(store)
        try:
            inserts = [asyncio.ensure_future(writes.insert_gathered(_ended(f"e{i}"), None)) for i in range(5)]
            await asyncio.sleep(0)
            assert store.inserts == [] and not any(i.done() for i in inserts)  # held for the others
            await asyncio.wait_for(asyncio.gather(*inserts), timeout=30)
        finally:
            writes.close()

    asyncio.run(main())
    assert store.inserts == [("e0,e1,e2,e3,e4", loop_thread)]
    assert all(store.get(f"e{i}").status == "completed" for i in range(5))  # type: ignore[union-attr]


def test_a_gathered_job_whose_key_is_taken_fails_alone(tmp_path: Path) -> None:
    """One statement inserts all or none: a key already recorded sends each job of the group to the
    writer thread, on its own, so that the others are kept and only that one's caller gets KeyTaken."""
    store = TracedStore(tmp_path / "jobs.sqlite3")
    store.insert(_ended("first", key="k"))

    async def main() -> list[object]:
        writes = JobWrites(store)
        try:
            inserts = [writes.insert_gathered(_ended(f"e{i}"), None) for i in range(3)]
            inserts.insert(1, writes.insert_gathered(_ended("retry", key="k"), None))
            return await asyncio.wait_for(asyncio.gather(*inserts, return_exceptions=True), timeout=30)
        finally:
            writes.close()

    outcomes = asyncio.run(main())
    assert outcomes[0] is None and isinstance(outcomes[1], KeyTaken) and outcomes[2:] == [None, None]
    assert all(store.get(f"e{i}") is not None for i in range(3)) and store.get("retry") is None
    assert [names for names, _ in store.inserts[1:]] == ["e0,retry,e1,e2", "e0", "retry", "e1", "e2"]
    assert {thread for _, thread in store.inserts[2:]} == {"limner-job-writes"}


def test_gathered_jobs_wait_for_nobody_when_the_store_is_busy_or_the_writes_close(tmp_path: Path) -> None:
    """Another writer holding SQLite's lock: the gathered jobs go to the writer thread (the loop never
    waits for the lock). Closing the writes inserts what is gathered at once, timer or not."""
    store = TracedStore(tmp_path / "jobs.sqlite3")

    async def main() -> None:
        writes = JobWrites(store)
        with store._write_lock:  # a group being committed
            busy = asyncio.ensure_future(writes.insert_gathered(_ended("busy"), None))
            await asyncio.sleep(0.2)
            assert not busy.done()
        await asyncio.wait_for(busy, timeout=30)
        closing = asyncio.ensure_future(writes.insert_gathered(_ended("closing"), None))
        await asyncio.sleep(0)
        writes.close()
        assert store.get("closing") is not None  # before the timer fired
        await asyncio.wait_for(closing, timeout=30)

    asyncio.run(main())
    assert [thread for _, thread in store.inserts] == ["limner-job-writes", threading.current_thread().name]
