"""The job store's writes from the request path: on one thread of their own, committed in groups, or,
when small and nothing makes them wait, at once on the event loop.

    writes = JobWrites(store)
    await writes(store.insert, record)            # returns (or raises) once committed
    await writes(store.end, job_id, ..., now=True) # made on the loop if the store can, else as above
    writes.close()                                # at shutdown, after what is queued

Every Idempotency-Key request writes its job twice (its start, its end). Made one by one from the
shared executor, those writes queued behind response encoding (and held it up), each paid a thread hop
and a commit of its own, and SQLite let one of them in at a time anyway: at concurrency 8 a key cost
17 % of the server's throughput. Here one thread takes whatever is queued when it wakes, runs it in
one transaction (`JobStore.batch`: a savepoint per write, so a write that fails, such as a key already
taken, fails alone) and answers every caller of the group in one call to the event loop.

When the group does not fit (a full store) or one write's error rolled all of it back (SQLite on a
full disk), each of its writes is made again on its own, so each caller gets its own write's answer;
when the store cannot be written at all (down, read-only), every write of the group fails at once.
A group never waits to fill: a job stays in memory until its end is written (lingering kept ended
jobs live, and their event replays different, for nothing measurable).

A small write that need not reach the disk (`now=True`: a synchronous job's start and end) is made at
once on the event loop when the store can make it without waiting (`JobStore.write_now`: SQLite whose
lock is free; never a database across a network). Since a write became one statement, that costs the
loop a fraction of a millisecond, less than the thread hop there and back: under load, where engine
threads hold the GIL, each wake-up of the writes thread and of the loop is a wait, and the hops, not
SQLite, were what a key still cost (keyed requests/s at concurrency 8, side by side with both writes
through the thread: 1.04x). Those writes never checkpoint the WAL on the loop; every
`CHECKPOINT_EVERY` of them the thread does. A disk that stalls would hold the loop up: a write made now
that is slow sends every write to the thread for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from limner.errors import JobStoreFull
from limner.stores.jobs import BatchAborted, JobStore

log = logging.getLogger("limner.jobs")

#: The most writes one transaction takes (a longer queue is committed in several).
GROUP = 64
#: Writes made now between two checkpoints that the thread makes (a few pages each: SQLite's own
#: automatic checkpoint comes at 1000 pages).
CHECKPOINT_EVERY = 100
#: A write made now that takes longer than this (a disk that stalls) stops writes being made now for
#: `SLOW_PAUSE_SECONDS`: the loop is held up once, not at every write, while the disk is slow.
SLOW_WRITE_SECONDS = 0.02
SLOW_PAUSE_SECONDS = 30.0

#: (call, args, kwargs, the caller's future, durable); no future: a checkpoint, made after the group.
_Write = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any] | None", bool]


class JobWrites:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._made_now = 0
        self._now_paused_until = 0.0

    async def __call__(
        self, call: Callable[..., Any], *args: Any, durable: bool = False, now: bool = False, **kwargs: Any
    ) -> Any:
        """Run `call(*args, **kwargs)` (a method of the store) in the next group; its result.
        `durable`: a write the store makes durable (an asynchronous job's insert): its group syncs.
        `now`: a small write, made at once on the loop if the store can make it without waiting."""
        if now and not durable and time.monotonic() >= self._now_paused_until:
            started = time.monotonic()
            try:
                made, result = self.store.write_now(call, *args, **kwargs)
            finally:
                self._paused_if_slow(time.monotonic() - started)
            if made:
                self._made_now += 1
                if self._made_now % CHECKPOINT_EVERY == 0:
                    self._start()
                    self._queue.put((self.store.checkpoint, (), {}, None, False))
                return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.put((call, args, kwargs, future, durable))
        return await future

    def _paused_if_slow(self, took: float) -> None:
        if took > SLOW_WRITE_SECONDS:
            self._now_paused_until = time.monotonic() + SLOW_PAUSE_SECONDS
            log.warning(
                "job store: a write took %.0f ms on the event loop; for %.0f s every write goes to the "
                "writer thread",
                took * 1000,
                SLOW_PAUSE_SECONDS,
            )

    def close(self) -> None:
        """Stop the thread once what is queued is written."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name="limner-job-writes", daemon=True)
                    self._thread.start()

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < GROUP:  # what is queued now (nobody waits for a group to fill)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(item)
            after = [item for item in group if item[3] is None]  # checkpoints: outside a transaction
            if len(after) < len(group):
                self._write([item for item in group if item[3] is not None])
            for call, args, kwargs, *_ in after:
                ok, value = _alone(call, args, kwargs)
                if not ok:
                    log.info("job store: %s failed: %s", getattr(call, "__name__", call), value)

    def _write(self, group: list[_Write]) -> None:
        if len(group) == 1:  # a transaction of its own, without the batch's savepoints
            call, args, kwargs, *_ = group[0]
            self._answer_all(group, [_alone(call, args, kwargs)])
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.store.batch(durable=any(write[4] for write in group)):
                for call, args, kwargs, *_ in group:
                    try:
                        outcomes.append((True, call(*args, **kwargs)))
                    except BatchAborted:
                        raise
                    except Exception as exc:  # this write alone (its savepoint is rolled back)
                        outcomes.append((False, exc))
        except (BatchAborted, JobStoreFull) as exc:
            # Nothing of the group is written, maybe for one write's sake (one too big for the room
            # left): each write again, on its own, so that the others are kept.
            log.info("job store: a group of %d writes failed (%s); writing them one by one", len(group), exc)
            outcomes = [_alone(call, args, kwargs) for call, args, kwargs, *_ in group]
        except Exception as exc:  # the store cannot be written (down, read-only): every write fails now
            outcomes = [(False, exc)] * len(group)
        self._answer_all(group, outcomes)

    @staticmethod
    def _answer_all(group: list[_Write], outcomes: list[tuple[bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, _, _, future, _), (ok, value) in zip(group, outcomes, strict=True):
            assert future is not None  # only checkpoints have none, and they are not in a group
            by_loop.setdefault(future.get_loop(), []).append((future, ok, value))
        for loop, answers in by_loop.items():  # one wake-up of each loop for its whole share
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_answer, answers)


def _alone(call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, call(*args, **kwargs)
    except Exception as exc:
        return False, exc


def _answer(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        if future.done():
            continue  # its caller was cancelled
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
