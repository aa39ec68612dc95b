"""The job store's writes from the request path, on one thread of their own, committed in groups.

    writes = JobWrites(store)
    await writes(store.insert, record)      # returns (or raises) once committed
    writes.close()                          # at shutdown, after what is queued

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from limner.errors import JobStoreFull
from limner.stores.jobs import BatchAborted, JobStore

log = logging.getLogger("limner.jobs")

#: The most writes one transaction takes (a longer queue is committed in several).
GROUP = 64

_Write = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any], bool]


class JobWrites:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def __call__(
        self, call: Callable[..., Any], *args: Any, durable: bool = False, **kwargs: Any
    ) -> Any:
        """Run `call(*args, **kwargs)` (a method of the store) in the next group; its result.
        `durable`: a write the store makes durable (an asynchronous job's insert): its group syncs."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._start()
        self._queue.put((call, args, kwargs, future, durable))
        return await future

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
            self._write(group)

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
