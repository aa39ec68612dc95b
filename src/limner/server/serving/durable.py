"""Jobs that are never lost: Idempotency-Key, asynchronous jobs (`Prefer: respond-async`), and a queue
that survives a restart.

Every image request comes through `JobManager.respond`. A plain request (no Idempotency-Key, no
Prefer) is answered by `respond` (a body or a stream). Otherwise the request is checked (a 400 stores nothing), written to the
job store with its body, queued, and only then answered: 202 with the job for asynchronous requests;
for synchronous ones with a key, the ImagesResponse (or the stream) once the job is done. A retry
with the same key and body gets the same answer, attaching to the job while it runs; the same key
with another body is a 400 naming the header. A job with a key does not stop when its client leaves:
the retry will want it. A synchronous one is driven by its first client's handler, as a plain request
is (`_answer_driving`); an asynchronous job, a stream and a recovered job by a task of their own.

After a crash, `recover()` runs every job that was queued or running again, from the stored request,
through the same parsing code as a new request (create_app hands this layer the routes' parse
functions: it imports no route). Each job is one Run (run.py), as a plain request is.

A key costs the store its writes, and most keyed jobs are short synchronous ones (limner's client
sends a key with every call). While this process alone uses its SQLite store (stores/jobs/sole.py), such
a job is written once, at its end, with its answer: its key is claimed in memory meanwhile
(`_unrecorded`), and an index of the recorded keys' hashes (`_keys`) tells a new key from a retry
without a read. One that runs longer than DEFER_START_SECONDS is written as it is then, so that a
restart runs it again (counted: max_job_attempts); so is every such job when another server opens the
store (it waits until they are written) and when this one stops. What a crash loses is a job younger
than that: its client, whose connection the crash closed, retries with its key and runs it again.

A job's stored result is the ImagesResponse and, for each image, its completed event's fields but the
image (`completed`): a stream's replay and `/events` make the events again from them, with the one
builder a stream uses, so an event name has one shape wherever it is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from limner.errors import InvalidRequest, JobCancelled, LimnerError, ServiceUnavailable
from limner.scheduler import Scheduler
from limner.server import ids
from limner.server.errors import server_error
from limner.server.inputs.parsing import parsed_json_object
from limner.server.serving import callbacks, events
from limner.server.serving.callbacks import CALLBACK_HEADER, SIGNATURE_HEADER
from limner.server.serving.fingerprints import Fingerprint, fingerprint
from limner.server.serving.respond import STREAM_HEADERS, images_body, note, respond
from limner.server.serving.run import Run
from limner.server.serving.runners import RunnerLock
from limner.server.serving.work import Work, client_of, link_base
from limner.server.serving.writes import JobWrites
from limner.stores.jobs import ENDED, JobRecord, JobStore, KeyTaken, Lease

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("limner.jobs")

Parse = Callable[[Request], Awaitable[Work]]
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: How long a job's end is retried while the job store cannot be written.
END_WRITE_SECONDS = 60.0
#: How often a client waiting for a job's answer is checked for having left.
ANSWER_POLL_SECONDS = 0.2
#: How often a request waiting for a job that runs on another replica reads the store.
ELSEWHERE_POLL_SECONDS = 0.25
#: Bodies below this are fingerprinted on the event loop (a small JSON body hashes in microseconds).
INLINE_FINGERPRINT_BYTES = 64 * 1024
#: A job's write whose request body or images are at most this may be made on the event loop
#: (writes.py: `now`); a bigger one costs the loop more than the thread hop it saves.
WRITE_NOW_BYTES = 256 * 1024
#: A synchronous job with a key that ends within this is written once, at its end, while this process
#: alone uses the store (sole.py); one that runs longer is written now, as it is (its start counted).
DEFER_START_SECONDS = 0.25
#: How long a server that starts waits for the one using the store alone to share it.
HAND_OVER_SECONDS = 10.0
#: How often, at most, a request tries whether another process has knocked (the keeper's tick does too).
KNOCK_CHECK_SECONDS = 0.05
#: The in-memory index of recorded keys is read again from the store when it has grown to twice what
#: the last reading found (and at least this): the keys of expired answers leave it.
KEY_INDEX_REREAD = 4096


def owner_of(request: Request) -> str:
    """Who a job belongs to: the API key's id, or "-" on a server without keys."""
    return str(getattr(request.state, "key_id", None) or "-")


@dataclass
class _Claim:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Claims:
    """The lock of each Idempotency-Key with requests in flight (one request per key at a time), and
    how many hold or wait for it: forgotten once none does, so the table never keeps every key sent."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, str], _Claim] = {}

    def __len__(self) -> int:
        return len(self._claims)

    def take(self, owner: str, key: str | None) -> _Claim:
        if key is None:
            return _Claim()  # no key: nothing to serialise
        claim = self._claims.setdefault((owner, key), _Claim())
        claim.users += 1
        return claim

    def give_back(self, owner: str, key: str | None, claim: _Claim) -> None:
        if key is None:
            return
        claim.users -= 1
        if not claim.users:
            self._claims.pop((owner, key), None)


@dataclass
class Live:
    """A job running in this process: its record as it changes, and its Run (events, progress)."""

    record: JobRecord
    run: Run
    #: Set once the job's end is written to the store (a waiting retry then replays it).
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once the job's answer can be given from `record`: a completed job's at once (its clients are
    #: answered from memory while the end is written), any other's once stored (a retry after a 5xx must
    #: find its key released).
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    #: The write that records the job's start: off the request's path, awaited before its end is written.
    start_write: asyncio.Future[None] | None = None
    #: Its first run was counted when it was recorded (a synchronous job): nothing to write at its start.
    counted: bool = False
    #: Another replica took the job over (this one stopped renewing in time): its run stops, unrecorded.
    lost: bool = False
    #: A completed job's images, in the order of its response's data (b64_json responses only).
    images: list[bytes] | None = None
    #: Its row is in the store. A short synchronous job's is written only at its end (`_defer`).
    recorded: bool = True
    #: The futures of the clients waiting for its answer (`_until_answered`), resolved by `answer`.
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def answer(self) -> None:
        """Its answer can be given (`answered`): wake whoever waits for it."""
        self.answered.set()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class JobManager:
    def __init__(self, app: FastAPI, store: JobStore, parsers: Mapping[str, Parse]) -> None:
        """`parsers`: each operation's parse function (generate, edit, vary), for requests replayed
        after a restart."""
        self.app = app
        self.store = store
        self.parsers = dict(parsers)
        self.live: dict[str, Live] = {}
        self._claims = Claims()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        settings = app.state.settings
        self.lease_seconds: float = settings.job_lease_seconds
        self.runner = RunnerLock(settings.data_dir / "runners")
        self._keeper: asyncio.Task[None] | None = None
        #: The request path's writes: one thread, committed in groups (writes.py).
        self._write = JobWrites(store)
        #: While this process alone uses the store (sole.py), a short synchronous job with a key is
        #: written once, at its end: its key is claimed in memory (`_unrecorded`), and `_keys` (a hash
        #: of each recorded key, and maybe of some no longer recorded) tells a new key from a retry
        #: without reading the store. A key that may be recorded takes the insert's path.
        self._sole = store.sole_use()
        self._deferring = False
        self._knock_checked = 0.0  # when `_defers` last tried the knock (time.monotonic)
        self._unrecorded: dict[tuple[str, str], Live] = {}
        self._keys: set[int] = set()
        self._keys_read = 0  # how many the last reading found
        self._keys_meanwhile: set[int] | None = None  # recorded while the store's are read
        self._hand_over: asyncio.Task[None] | None = None
        #: Whether the last job written could be: a job is written only at its end while it is (else
        #: its answer, served, might not be kept for its retry: a full disk is refused at the start).
        self._store_writable = True

    def stop(self) -> None:
        """The server is shutting down: jobs still queued or running stay so in the store, and the
        next start (or another replica) runs them (the same as after a crash, without the crash)."""
        self._stopping = True
        if self._keeper is not None:
            self._keeper.cancel()
        self._write.close()

    async def gathered_written(self) -> None:
        """Insert the ended jobs gathered for one statement (writes.py) now, for a read of the store.
        First a step of the loop: a job whose client was just answered is gathered by its end's task
        (`_answer_driving`), which then takes its first step."""
        await asyncio.sleep(0)
        self._write.insert_gathered_now()

    async def release(self) -> None:
        """After stop(): record the jobs only this process knew (the next start runs them), give this
        runner's claims up, so that they are taken over at once, and stop using the store alone."""
        await self._record_unrecorded()
        with contextlib.suppress(Exception):  # a store that is down: the leases expire instead
            await asyncio.to_thread(self.store.release, self.runner.id)
        self.runner.close()
        if self._sole is not None:
            self._sole.close()

    def _lease_end(self) -> int:
        return int((time.time() + self.lease_seconds) * 1000)

    @property
    def scheduler(self) -> Scheduler:
        scheduler: Scheduler = self.app.state.scheduler
        return scheduler

    # -- the image routes -----------------------------------------------------------------------

    async def respond(self, request: Request, operation: str, parse: Parse) -> Response:
        key = request.headers.get(IDEMPOTENCY_HEADER)
        asynchronous = "respond-async" in request.headers.get("prefer", "").lower()
        if key is None and not asynchronous:
            return await respond(request, await parse(request))
        if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
            raise InvalidRequest(
                f"The {IDEMPOTENCY_HEADER} header must be 1 to 255 printable characters.",
                param=IDEMPOTENCY_HEADER,
            )
        content_type = request.headers.get("content-type", "")
        body, print_ = await _read_printed(request, content_type)
        owner = owner_of(request)
        claim = self._claims.take(owner, key)
        try:
            # One request per key at a time here; across replicas the store's unique index decides. The
            # key is not looked up first: the insert finds it taken (one write, not a read and a write,
            # for the new request that nearly every key is).
            async with claim.lock:
                work = await parse(request)  # a request that is not valid is refused here; nothing is stored
                digest = await _digest(print_, body, request)
                now = int(time.time())
                record = JobRecord(
                    id="imgjob_" + ids.token_hex(12),
                    owner=owner,
                    idempotency_key=key,
                    fingerprint=digest,
                    mode="async" if asynchronous else "sync",
                    operation=operation,
                    route=request.scope["path"],
                    model=work.model,
                    status="queued",
                    created_at=now,
                    updated_at=now,
                    expires_at=None,
                    content_type=content_type,
                    body=body,
                    base_url=link_base(request),
                    callback_url=self._callback(request),
                    stream=work.resolved.stream and not asynchronous,
                    runner=self.runner.id,
                    lease_until=self._lease_end(),
                    # A synchronous job starts now (or waits in the queue with its client): its first run
                    # is counted here, in the one write it costs, instead of in a write of its own.
                    attempts=0 if asynchronous else 1,
                    created_ns=time.time_ns(),
                )
                unrecorded = self._unrecorded.get((owner, key)) if key is not None else None
                if unrecorded is not None:  # a retry of a job this process has not written yet
                    self._check_same(unrecorded.record, digest)
                    return await self._answer(request, unrecorded.record, asynchronous)
                small = len(body) <= WRITE_NOW_BYTES
                deferred = key is not None and not asynchronous and small and self._defers(owner, key)
                if not deferred:
                    try:
                        # The group syncs when the insert does: an asynchronous job's (a 202 promises it).
                        await self._insert(record, durable=asynchronous, now=not asynchronous and small)
                    except KeyTaken:  # a retry, or a duplicate on another replica: the first job answers
                        existing = await asyncio.to_thread(self.store.by_idempotency_key, owner, key or "")
                        if existing is None:
                            raise
                        self._check_same(existing, digest)
                        return await self._answer(request, existing, asynchronous)
                    self._key_recorded(owner, key)
                # A synchronous job's answer is its client's to drive (a stream's is the stream's reader).
                driven_here = not asynchronous and not record.stream
                try:
                    live = self._start(
                        record, work, client_of(request), admitted=False, driven_here=driven_here
                    )
                    live.counted = not asynchronous
                except LimnerError:  # the queue is full: nothing was accepted
                    if not deferred:
                        await self._write(self.store.delete, record.id, now=True)
                    raise
                if deferred:
                    self._defer(live)
        finally:
            self._claims.give_back(owner, key, claim)
        if asynchronous:
            return self._job_response(record, live, status=202)
        if driven_here:
            return await self._answer_driving(request, live)
        return await self._answer_live(request, live)

    # -- short synchronous jobs, written once (while this process alone uses the store) ----------

    def _defers(self, owner: str, key: str) -> bool:
        """Whether this key's job may be written only at its end: this process alone uses the store,
        and the key is new (not in `_keys`: a retry's must be looked up)."""
        if not self._deferring or self._sole is None or not self._store_writable:
            return False
        # Another process has come: nothing more in memory only. Tried at most every
        # KNOCK_CHECK_SECONDS: the lock calls let the GIL go (a wait each under load), and a job kept in
        # memory after the knock is written by the hand-over anyway, which the newcomer waits for.
        now = time.monotonic()
        if now >= self._knock_checked + KNOCK_CHECK_SECONDS:
            self._knock_checked = now
            if self._sole.knocked():
                self._start_hand_over()
                return False
        return hash((owner, key)) not in self._keys

    def _defer(self, live: Live) -> None:
        record = live.record
        live.recorded = False
        self._unrecorded[(record.owner, record.idempotency_key or "")] = live
        asyncio.get_running_loop().call_later(DEFER_START_SECONDS, self._record_start, live)

    def _record_start(self, live: Live) -> None:
        """The job runs longer than a moment (or this process stops being alone): write it as it is now,
        so that a restart or another replica sees it (and counts its run: max_job_attempts)."""
        if live.recorded or live.start_write is not None or live.record.status in ENDED:
            return  # written, being written, or its end will be
        live.start_write = asyncio.ensure_future(self._insert_started(live))

    async def _insert_started(self, live: Live) -> None:
        await self._insert(replace(live.record), now=True)
        live.recorded = True  # only now: the lease watcher must not take it for a lost job before
        self._key_recorded(live.record.owner, live.record.idempotency_key)

    async def _insert(
        self, record: JobRecord, images: list[bytes] | None = None, *, gathered: bool = False, **how: bool
    ) -> None:
        """Write a new job (writes.py: `how`; `gathered`: an ended one, inserted with others), and
        remember whether the store could be written."""
        try:
            if gathered:
                await self._write.insert_gathered(record, images)
            else:
                await self._write(self.store.insert, record, images, **how)
        except KeyTaken:
            self._store_writable = True
            raise
        except Exception:
            self._store_writable = False
            raise
        self._store_writable = True

    def _key_recorded(self, owner: str, key: str | None) -> None:
        if key is None or (not self._deferring and self._keys_meanwhile is None):
            return
        hashed = hash((owner, key))
        self._keys.add(hashed)
        if self._keys_meanwhile is not None:
            self._keys_meanwhile.add(hashed)

    async def _read_keys(self) -> None:
        """The index of recorded keys, from the store (the keys of expired answers leave it)."""
        self._keys_meanwhile = set()
        try:
            stored = await asyncio.to_thread(self.store.idempotency_keys)
        finally:
            meanwhile, self._keys_meanwhile = self._keys_meanwhile, None
        self._keys = {hash(pair) for pair in stored} | meanwhile
        self._keys_read = len(stored)

    async def _take_sole_use(self) -> None:
        """At start-up: use the store alone if no other process does; if one does alone, wait (up to
        HAND_OVER_SECONDS) for it to write what only it knows and share."""
        if self._sole is None:
            return
        deadline = time.monotonic() + HAND_OVER_SECONDS
        while (alone := self._sole.take()) is None:
            if time.monotonic() > deadline:
                # Stopped or stuck: it sees this one's knock when it goes on, and shares then. Until
                # then a key sent to both within a moment of each other may run on both (each answer
                # is kept; the key's answer is the first one written).
                log.warning(
                    "another server uses the job store alone and did not share it within %.0f s; "
                    "starting without waiting for it",
                    HAND_OVER_SECONDS,
                )
                return
            await asyncio.sleep(0.05)
        if alone:
            await self._read_keys()
            self._deferring = True  # only with every recorded key in the index

    def _start_hand_over(self) -> None:
        self._deferring = False
        if self._hand_over is None:
            self._hand_over = asyncio.create_task(self._share())

    async def _share(self) -> None:
        """Another process has come: write every job only this one knows, then share the store."""
        await self._record_unrecorded()
        assert self._sole is not None
        self._sole.share()
        self._keys = set()
        log.info("another server uses this job store now: every job with a key is written when it starts")

    async def _record_unrecorded(self) -> None:
        """Write each job not written yet (a running one as it is; an ended one's end is being written)
        and wait until each is in the store (for up to END_WRITE_SECONDS)."""
        deadline = time.monotonic() + END_WRITE_SECONDS
        while True:
            waiting = [live for live in self._unrecorded.values() if not live.recorded]
            if not waiting or time.monotonic() > deadline:
                return
            for live in waiting:
                if live.start_write is not None and live.start_write.done():
                    live.start_write = None  # it failed (the store cannot be written): again
                self._record_start(live)  # an ended one's end is being written: it leaves when written
            await asyncio.sleep(0.01)

    @staticmethod
    def _check_same(existing: JobRecord, digest: str) -> None:
        if existing.fingerprint != digest:
            raise InvalidRequest(
                f"This {IDEMPOTENCY_HEADER} was already used with a different request. Use a new key for a "
                "new request.",
                param=IDEMPOTENCY_HEADER,
                code="idempotency_key_reused",
            )

    def _callback(self, request: Request) -> str | None:
        url = request.headers.get(CALLBACK_HEADER)
        return None if url is None else callbacks.checked_callback(url, self.app.state.callback_allow)

    # -- running ----------------------------------------------------------------------------------

    def _start(
        self, record: JobRecord, work: Work, client: str, *, admitted: bool, driven_here: bool = False
    ) -> Live:
        """Queue the job's first engine run now (a full queue raises at once), and drive it in a task of
        its own; `driven_here`: by the caller (`_answer_driving`)."""
        run = Run(
            work,
            self.scheduler,
            client,
            self.app.state.metrics,
            with_events=record.stream or record.mode == "async",
            image_by_image=record.stream,
            outlives_driver=driven_here,
        )
        run.start(admitted=admitted)
        live = Live(record, run)
        self.live[record.id] = live
        if not driven_here:
            self._spawn(self._drive(live))
        return live

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, live: Live) -> None:
        """Run the job, then record its end: a task of its own (an asynchronous job, a stream, a job
        recovered or taken over)."""
        try:
            try:
                await self._run(live)
            except asyncio.CancelledError:  # the server is stopping
                self._cancelled(live)
        finally:
            await self._ended(live)

    async def _answer_driving(self, request: Request, live: Live) -> Response:
        """A synchronous job's first client drives it in its own handler, as a plain request does: the
        answer needs no task to wake this one (a step of the loop, and under load a wait for the GIL,
        each). Its end is recorded in a task meanwhile. The job still outlives its client: the client's
        leaving is not watched, and a handler cancelled on the way (a proxy that cancels the request of a
        client that left, as Ray Serve does; the server stopping) hands the job, where it is, to a task."""
        record = live.record
        try:
            await self._run(live)
        except asyncio.CancelledError:
            live.run.outlives_driver = False  # its last driver: the task, cancelled (a stop), stops the run
            self._spawn(self._drive(live))
            raise
        self._spawn(self._ended(live))  # answers a retry that waits for it, and writes the end
        if record.status != "completed":  # answered once its end is in the store (a 5xx frees its key)
            await _until_answered(request, live)
        return await self._answer_run(request, live)

    def _cancelled(self, live: Live) -> None:
        live.run.cancelled = True
        if not (self._stopping or live.lost) and live.record.status not in ENDED:
            live.record.status = "cancelled"

    async def _run(self, live: Live) -> None:
        """Run the job to its outcome, in `record` (status, result or error); left active when the
        server stops or another replica took it over."""
        record, run = live.record, live.run
        state = self.app.state

        async def started() -> None:
            # Once per run, a recovered job's too: counted, so that one that takes the server down each
            # time it runs is stopped (max_job_attempts) instead of being run at every start.
            if live.counted:  # the client waiting for it is its progress report: memory is enough
                live.counted, record.status = False, "in_progress"
                run.publish()
                return
            record.status, record.attempts = "in_progress", record.attempts + 1
            live.start_write = asyncio.ensure_future(
                self._write(
                    self.store.update, record.id, status="in_progress", attempts=record.attempts, now=True
                )
            )
            run.publish()

        try:
            if not run.done.is_set():  # else its driver was cancelled after the run (_answer_driving)
                await run.drive(on_start=started)
            if run.cancelled:
                self._cancelled(live)
            elif run.error is not None:
                self._set_failed(record, run.error.to_dict(), run.error.status_code)
            else:
                # Stream events carry the bytes themselves, so a stream's response is b64_json.
                work = run.work
                if record.stream:
                    work = replace(work, resolved=replace(work.resolved, response_format="b64_json"))
                response = await asyncio.to_thread(
                    images_body,
                    work,
                    run.encoded,
                    store=state.store,
                    base=record.base_url,
                    metrics=state.metrics,
                )
                record.status, record.result = "completed", {"response": response, "completed": run.completed}
                if work.resolved.response_format == "b64_json":
                    live.images = run.encoded  # stored as they are: no decoding of the base64 again
                record.status_code = 200
        except Exception:
            log.exception("job %s failed", record.id)
            self._set_failed(record, server_error().to_dict(), 500)

    async def _ended(self, live: Live) -> None:
        """After the run: record the job's end (unless it was left active), answer whoever waits, let
        go of its key's claim, and call its callback."""
        record = live.record
        # Whoever waits is answered once the end is in the store, or from memory if the first write
        # fails; the live entry (what GET reads) stays until the end is in the store (_write_end).
        if record.status == "completed":
            live.answer()
        if live.start_write is not None:
            try:
                await live.start_write
            except Exception as exc:  # the store cannot be written now: the end is retried below
                log.warning("job %s: its start cannot be recorded: %s", record.id, exc)
        if record.status in ENDED:
            await self._write_end(live)
        live.answer()
        live.done.set()
        live.run.publish()
        self.live.pop(record.id, None)
        claimed = (record.owner, record.idempotency_key or "")
        # Unless stopped unwritten (release() writes it); never another job's claim of the key.
        if (live.recorded or record.status in ENDED) and self._unrecorded.get(claimed) is live:
            del self._unrecorded[claimed]
        if record.callback_url and record.status in ENDED:
            await self._call_back(record)

    @staticmethod
    def _set_failed(record: JobRecord, error: dict[str, Any], status_code: int) -> None:
        record.status, record.error, record.status_code = "failed", error, status_code

    async def _write_end(self, live: Live) -> None:
        """Record the job's end, retrying while the store cannot be written (a full disk, PostgreSQL
        restarting) for up to `END_WRITE_SECONDS`; after that the job stays active in the store, and the
        next start runs it again (an attempt counted), rather than lose it. `live.answered` is set after
        the first attempt: a waiting client is not kept waiting by the retries."""
        record = live.record
        delay, deadline = 0.25, time.monotonic() + END_WRITE_SECONDS
        while True:
            try:
                await self._end(record, live.images, recorded=live.recorded)
                return
            except Exception as exc:  # the store's error (LimnerError) or anything a driver raises
                live.answer()
                live.run.publish()
                if time.monotonic() + delay > deadline:
                    log.error(
                        "job %s ended %s but its end cannot be recorded: %s", record.id, record.status, exc
                    )
                    return
                if delay == 0.25:
                    log.warning("job %s: its end cannot be recorded yet (retrying): %s", record.id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _end(
        self, record: JobRecord, images: list[bytes] | None = None, *, recorded: bool = True
    ) -> None:
        """Write the ended record. Only a final outcome (2xx, 4xx) stays its Idempotency-Key's answer:
        after a server error (5xx: storage, a database or an engine down for a while) the key is
        released, so a retry with it runs the request again, as Stripe's idempotency does; the failed
        job stays readable."""
        settings = self.app.state.settings
        # An asynchronous job's result is fetched later: kept as long as its links. A synchronous answer
        # is kept only for a retry with its key, which comes within minutes (the disk it costs: README).
        ttl = settings.url_ttl_seconds
        if record.mode == "sync":
            ttl = min(ttl, settings.idempotency_ttl_seconds)
        outcome = _outcome(record)
        images = images if record.status == "completed" else None
        released = record.status == "failed" and (record.status_code or 500) >= 500
        if not recorded:
            await self._insert_ended(record, images, ttl, outcome, released)
            return
        await self._write(
            self.store.end,
            record.id,
            record.status,
            ttl=ttl,
            images=images,
            now=_small_end(images),
            **outcome,
        )
        if released and record.idempotency_key:
            await self._write(self.store.update, record.id, idempotency_key=None, now=True)

    async def _insert_ended(
        self,
        record: JobRecord,
        images: list[bytes] | None,
        ttl: int,
        outcome: dict[str, Any],
        released: bool,
    ) -> None:
        """The end of a job not written yet: its one row, with its answer (the row `_end` leaves)."""
        now = int(time.time())
        ended = replace(
            record,
            idempotency_key=None if released else record.idempotency_key,
            updated_at=now,
            expires_at=now + ttl,
            body=None,
            **outcome,
        )
        try:
            # Gathered with others (writes.py) when small: its client has its answer, and a retry
            # meanwhile finds the job in memory.
            await self._insert(ended, images, gathered=_small_end(images))
        except KeyTaken:
            # Written by another server that started while this one could not hand over (it was
            # stopped or stuck: _take_sole_use): the key's answer is that one; this job stays readable.
            await self._insert(replace(ended, idempotency_key=None), images)
            return
        self._key_recorded(ended.owner, ended.idempotency_key)

    async def recover(self) -> int:
        """At start-up: use the store alone if no other server does (`_take_sole_use`); run again every
        job that was queued or running when its runner stopped (this server before a restart, or a
        replica that is gone), then keep this runner's leases (_keep); return how many were taken over."""
        await self._take_sole_use()
        taken = await self._take_over(await asyncio.to_thread(self.store.leases))
        if taken:
            log.info("resumed %d job(s) that were queued or running", taken)
        self._keeper = asyncio.create_task(self._keep())
        return taken

    async def _keep(self) -> None:
        """Every tick: cancel the live jobs whose cancel was asked on any replica, stop those another
        replica took over, take over jobs whose runner is gone; every third of a lease, renew ours."""
        tick = min(1.0, self.lease_seconds / 6)
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            try:
                if self._deferring and self._sole is not None and self._sole.knocked():
                    self._start_hand_over()  # first: it needs no store that answers
                if time.monotonic() - renewed >= self.lease_seconds / 3:
                    await asyncio.to_thread(self.store.renew, self.runner.id, self._lease_end())
                    renewed = time.monotonic()
                leases = await self._watch_live()
                taken = await self._take_over(leases)
                if taken:
                    log.info("took over %d job(s) whose runner stopped", taken)
                if self._deferring and len(self._keys) > max(KEY_INDEX_REREAD, 2 * self._keys_read):
                    await self._read_keys()
            except Exception as exc:  # a store that is down: try again next tick
                log.warning("job leases: %s", exc)

    async def _watch_live(self) -> list[Lease]:
        """Cancel the live jobs whose cancel was asked on any replica, stop those another replica took
        over; return every active job's lease."""
        # Jobs started after the read below are not in it yet; nor is one not written yet (`_defer`).
        known = {job_id for job_id, live in self.live.items() if live.recorded}
        leases = await asyncio.to_thread(self.store.leases)
        ours = {lease.id: lease for lease in leases if lease.runner == self.runner.id}
        for job_id in known:
            live = self.live.get(job_id)
            if live is None or live.done.is_set() or live.record.status in ENDED:
                continue  # an ended job's row is no longer active: not a lost one
            if job_id not in ours:  # taken over (and maybe ended) by another replica
                live.lost = True
                log.warning("job %s was taken over by another runner; its run here stops", job_id)
                live.run.cancel()
            elif ours[job_id].cancel_requested:
                live.run.cancel()
        return leases

    def _orphaned(self, lease: Lease) -> bool:
        if lease.runner == self.runner.id:
            return False
        if lease.runner is None or not lease.lease_until or lease.lease_until < time.time() * 1000:
            return True
        return self.runner.dead_here(lease.runner)

    async def _take_over(self, leases: list[Lease]) -> int:
        taken = 0
        for lease in leases:
            if self._stopping or not self._orphaned(lease):
                continue
            if not await asyncio.to_thread(self.store.claim, lease, self.runner.id, self._lease_end()):
                continue  # another replica was first
            record = await asyncio.to_thread(self.store.get, lease.id)
            if record is None:
                continue
            taken += 1
            await self._resume(record)
        return taken

    async def _resume(self, record: JobRecord) -> None:
        if record.cancel_requested:
            record.status = "cancelled"
            await self._end(record)
            return
        if record.attempts >= self.app.state.settings.max_job_attempts:
            error = LimnerError(
                f"This job was started {record.attempts} times and each time the server stopped before it "
                "finished (it may need more memory than the server has); it is not run again.",
                code="job_attempts_exceeded",
            )
            self._set_failed(record, error.to_dict(), error.status_code)
            await self._end(record)
            log.warning("job %s failed after %d attempts", record.id, record.attempts)
            return
        request = replayed_request(self.app, record)
        try:
            work = await self._parse_for(record)(request)
            self._start(record, work, record.owner, admitted=True)
        except LimnerError as exc:
            self._set_failed(record, exc.to_dict(), exc.status_code)
            await self._end(record)

    def _parse_for(self, record: JobRecord) -> Parse:
        return self.parsers[record.operation]

    async def _call_back(self, record: JobRecord) -> None:
        """POST the ended job to its callback URL, signed with the callback secret (callbacks.py)."""
        from limner.server.inputs.fetch import default_policy  # httpx2 stays off the start-up path

        state = self.app.state
        delivered = await callbacks.deliver(
            record.callback_url or "",
            job_object(record, None),
            secret=state.callback_secret,
            policy=default_policy(state.settings.callback_allow_private),
        )
        if not delivered:
            log.warning("the callback for job %s was not delivered", record.id)

    # -- answers ----------------------------------------------------------------------------------

    async def _answer(self, request: Request, record: JobRecord, asynchronous: bool) -> Response:
        live = self.live.get(record.id)
        if live is not None and live.answered.is_set():  # ended; its end may not be in the store yet
            record, live = live.record, None
        if asynchronous:
            return self._job_response(live.record if live else record, live, status=202 if live else 200)
        if live is not None:
            return await self._answer_live(request, live)
        if record.status not in ENDED:
            return await self._answer_elsewhere(request, record)
        return self._replay(record)

    async def _answer_elsewhere(self, request: Request, record: JobRecord) -> Response:
        """The job runs on another replica (or waits to be taken over): wait for its stored end, as a
        retry here waits for a job live here, and replay it."""
        while True:
            live = self.live.get(record.id)
            if live is not None:  # taken over by this replica meanwhile
                return await self._answer_live(request, live)
            current = await asyncio.to_thread(self.store.get, record.id)
            if current is None or current.status in ENDED:
                return self._replay(current or record)
            if await request.is_disconnected():
                raise JobCancelled()
            await asyncio.sleep(ELSEWHERE_POLL_SECONDS)

    async def _answer_live(self, request: Request, live: Live) -> Response:
        record = live.record
        if record.stream:
            return StreamingResponse(
                self._stream(live), media_type="text/event-stream", headers=STREAM_HEADERS
            )
        if not live.answered.is_set():
            await _until_answered(request, live)
        return await self._answer_run(request, live)

    async def _answer_run(self, request: Request, live: Live) -> Response:
        """The answer of a job run here, once answered: its own; or, taken over by another replica,
        that one's (never a false "cancelled")."""
        if live.lost:
            return await self._answer_elsewhere(request, live.record)
        note(request, live.run)  # the access record's queue and run times, as for a plain request
        if live.record.status not in ENDED:  # left for the next start: the server stops
            raise ServiceUnavailable(
                f"The server is stopping; send the request again with the same {IDEMPOTENCY_HEADER} "
                "to get this job's answer (it runs when the server is back).",
                code="server_stopping",
                headers={"Retry-After": "1"},
            )
        response = self._replay(live.record)
        response.headers.update(live.run.observed())
        return response

    async def _stream(self, live: Live) -> AsyncIterator[bytes]:
        async for chunk in live.run.follow():
            yield chunk
        await live.done.wait()
        if live.record.status == "failed":
            yield events.sse("error", live.record.error)

    def _replay(self, record: JobRecord) -> Response:
        if record.status == "completed":
            if record.stream:
                chunks = completed_events(record)

                async def replayed() -> AsyncIterator[bytes]:
                    for chunk in chunks:
                        yield chunk

                return StreamingResponse(replayed(), media_type="text/event-stream", headers=STREAM_HEADERS)
            return JSONResponse(response_of(record))
        if record.status == "failed":
            return JSONResponse(record.error, status_code=record.status_code or 500)
        return JSONResponse(
            {
                "error": {
                    "message": f"The job for this {IDEMPOTENCY_HEADER} was cancelled; send the request "
                    "again with a new key.",
                    "type": "invalid_request_error",
                    "param": IDEMPOTENCY_HEADER,
                    "code": "job_cancelled",
                }
            },
            status_code=409,
        )

    def _job_response(self, record: JobRecord, live: Live | None, *, status: int = 200) -> JSONResponse:
        return JSONResponse(
            job_object(record, live, position=self.position(live)),
            status_code=status,
            headers={"Location": f"/v1/images/jobs/{record.id}"},
        )

    def position(self, live: Live | None) -> int | None:
        if live is None or live.run.ticket is None or live.record.status != "queued":
            return None
        return self.scheduler.position(live.run.ticket)


async def _until_answered(request: Request, live: Live) -> None:
    """Until the job's answer can be given; JobCancelled if the client leaves first. The job goes on
    then (its retry will want it): only the waiting stops. The answer wakes this waiter directly, one
    step of the loop, where a task around `answered.wait()` under `asyncio.wait` took three: under load
    each step of the loop gives the GIL to the engine threads and waits to get it back."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    live.waiters.append(waiter)

    async def watch() -> None:
        while not waiter.done():
            await asyncio.sleep(ANSWER_POLL_SECONDS)
            if not waiter.done() and await request.is_disconnected() and not waiter.done():
                waiter.set_exception(JobCancelled())

    watcher = asyncio.ensure_future(watch())
    try:
        await waiter
    finally:
        watcher.cancel()
        if waiter in live.waiters:
            live.waiters.remove(waiter)


def _outcome(record: JobRecord) -> dict[str, Any]:
    """What an ended job keeps: a completed one's result, a failed one's error, and its status code
    (a cancelled job has none)."""
    return {
        "result": record.result if record.status == "completed" else None,
        "error": record.error if record.status == "failed" else None,
        "status_code": record.status_code if record.status != "cancelled" else None,
    }


def _small_end(images: list[bytes] | None) -> bool:
    """Whether a job's end is small enough to be written on the event loop: a b64_json answer's images
    (`Live.images`, always handed over) at most WRITE_NOW_BYTES; an end without images (links, an
    error, a cancel) is small."""
    return images is None or sum(map(len, images)) <= WRITE_NOW_BYTES


async def _read_printed(request: Request, content_type: str) -> tuple[bytes, Fingerprint]:
    """The body, and its fingerprint fed while it arrives (the body limit still applies: this reads
    through it)."""
    print_ = Fingerprint(request.scope["path"], content_type)
    chunks = []
    async for chunk in request.stream():
        chunks.append(chunk)
        print_.feed(chunk)
    body = b"".join(chunks)
    # Starlette's own cache of a read body: the route's parsing (form or JSON) reads it from there.
    request._body = body
    return body, print_


async def _digest(print_: Fingerprint, body: bytes, request: Request) -> str:
    """The fingerprint, once the route's parsing has read the body (a JSON body is not parsed again)."""
    parsed = parsed_json_object(request)
    if len(body) < INLINE_FINGERPRINT_BYTES or print_.kind == "multipart/form-data":
        return print_.hexdigest(body, parsed)  # microseconds (multipart was hashed as it came)
    return await asyncio.to_thread(print_.hexdigest, body, parsed)  # a large JSON body is written out


def replayed_request(app: FastAPI, record: JobRecord) -> Request:
    """A request object over the stored body, as the routes' parsing code reads it."""
    body = record.body or b""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": record.route,
        "raw_path": record.route.encode(),
        "query_string": b"",
        "headers": [(b"content-type", record.content_type.encode("latin-1"))],
        "app": app,
        "state": {"key_id": None if record.owner == "-" else record.owner, "request_id": record.id},
        "client": None,
        "server": None,
        "scheme": "http",
        "root_path": "",
    }
    return Request(scope, receive)


def completed_events(record: JobRecord) -> list[bytes]:
    """A completed job's `*.completed` events, made again from its stored result with the one builder
    (the image from the response: b64_json, or the url of a url-mode job)."""
    result = record.result or {}
    data = response_of(record)["data"]
    if "completed" in result:
        return [
            events.completed_event(fields, {k: v for k, v in item.items() if k in ("b64_json", "url")})
            for fields, item in zip(result["completed"], data, strict=False)
        ]
    if "events" in result:  # a stream stored before completed events were kept as fields
        return [chunk.encode() for chunk in result["events"]]
    kind = "image_generation" if record.operation == "generate" else "image_edit"
    return [events.sse(f"{kind}.completed", {"type": f"{kind}.completed", **item}) for item in data]


def response_of(record: JobRecord) -> dict[str, Any]:
    """A completed job's ImagesResponse (kept beside its completed events' fields; a result stored by
    an older limner may be the response itself)."""
    result: dict[str, Any] = record.result
    return dict(result.get("response", result))


def job_object(record: JobRecord, live: Live | None, *, position: int | None = None) -> dict[str, Any]:
    """The job as the API shows it (`object: "image.job"`)."""
    body: dict[str, Any] = {
        "id": record.id,
        "object": "image.job",
        "status": record.status,
        "created_at": record.created_at,
        "model": record.model,
        "operation": record.operation,
        "mode": record.mode,
    }
    if position is not None:
        body["queue_position"] = position
    if live is not None and live.run.progress is not None and record.status == "in_progress":
        body["progress"] = {"step": live.run.progress[0], "steps": live.run.progress[1]}
    if record.status == "completed":
        body["result"] = response_of(record)
    if record.status == "failed":
        body["error"] = (record.error or {}).get("error")
    if record.expires_at is not None:
        body["expires_at"] = record.expires_at
    return body


__all__ = [
    "CALLBACK_HEADER",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "JobManager",
    "fingerprint",
    "job_object",
]
