"""The job store's writes from the request path: on one thread of their own, committed in groups, or,
when small and nothing makes them wait, at once on the event loop.

    writes = JobWrites(store)
    await writes(store.insert, record)            # returns (or raises) once committed
    await writes(store.end, job_id, ..., now=True) # made on the loop if the store can, else as above
    await writes.insert_gathered(ended, images)   # with the others that end within GATHER_SECONDS
    writes.close()                                # at shutdown, after what is queued and gathered

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

Each statement made on the loop lets the GIL go while SQLite runs it, and taking it back from the
engine threads is a wait, not the statement's own cost: at concurrency 8 a keyed request's one insert
cost 0.3-0.5 ms of the server's CPU where the same insert alone costs 0.1 ms, and each more statement
(a transaction's savepoint) cost as much again. So a short synchronous job's one row, written once it
has ended (its client has its answer; a retry meanwhile finds it in memory: durable.py), is gathered
with the rows of the jobs that end within GATHER_SECONDS and inserted with them in one statement on
the loop (`insert_gathered`: keyed requests/s against plain ones, 0.98x where it was 0.95x). If that
statement cannot be made (the lock taken, a key already recorded, a full disk) nothing of it is written,
and each row goes to the thread on its own, with its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from limner.errors import JobStoreFull
from limner.stores.jobs import BatchAborted, JobRecord, JobStore

log = logging.getLogger("limner.jobs")

#: The most writes one transaction takes (a longer queue is committed in several).
GROUP = 64
#: How long an ended job waits for others to be inserted with (`insert_gathered`).
GATHER_SECONDS = 0.02
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
        #: Ended jobs held on the loop (`insert_gathered`) and the timer that inserts them.
        self._gathered: list[tuple[JobRecord, Sequence[bytes] | None, asyncio.Future[None]]] = []
        self._gather_timer: asyncio.TimerHandle | None = None

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
                self._counted_now(1)
                return result
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.put((call, args, kwargs, future, durable))
        return await future

    async def insert_gathered(self, job: JobRecord, images: Sequence[bytes] | None) -> None:
        """Insert an ended job that no client's answer waits for (a short synchronous one: durable.py),
        held for up to GATHER_SECONDS with those that come meanwhile, then all inserted with one
        statement on the loop. Each statement made on the loop lets the GIL go while SQLite runs it,
        and under load, where engine threads hold it, taking it back is a wait: one statement for
        several jobs, rather than one for each. KeyTaken when the job's key is recorded already."""
        if time.monotonic() < self._now_paused_until:
            return await self(self.store.insert, job, images)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gathered.append((job, images, future))
        if len(self._gathered) >= GROUP:
            self.insert_gathered_now()
        elif self._gather_timer is None:
            self._gather_timer = asyncio.get_running_loop().call_later(
                GATHER_SECONDS, self.insert_gathered_now
            )
        return await future

    def insert_gathered_now(self) -> None:
        """Insert what is gathered, without waiting for the timer (a read that must see it, the close)."""
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        gathered, self._gathered = self._gathered, []
        if not gathered:
            return
        started = time.monotonic()
        try:
            made, _ = self.store.write_now(
                self.store.insert_all, [(job, images) for job, images, _ in gathered]
            )
        except Exception:  # a key taken, a full disk: each again alone, by the thread
            made = False
        finally:
            self._paused_if_slow((time.monotonic() - started) / len(gathered))
        if not made:  # nothing was written: each on its own, with its own outcome
            self._start()
            for job, images, future in gathered:
                self._queue.put((self.store.insert, (job, images), {}, future, False))
            return
        self._counted_now(len(gathered))
        _answer([(future, True, None) for _, _, future in gathered])

    def _counted_now(self, writes: int) -> None:
        """Every CHECKPOINT_EVERY writes made on the loop, the thread checkpoints the WAL."""
        before, self._made_now = self._made_now, self._made_now + writes
        if before // CHECKPOINT_EVERY != self._made_now // CHECKPOINT_EVERY:
            self._start()
            self._queue.put((self.store.checkpoint, (), {}, None, False))

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
        """Insert what is gathered; stop the thread once what is queued is written."""
        self.insert_gathered_now()
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
