"""The job store's protocol: every accepted asynchronous job (and every request with an
Idempotency-Key) is written here, with the request as it arrived, before the client gets an answer.

What a row holds is enough to run the job again after a crash: the request's method-independent parts
(route, content type, body, the host it was addressed to, the key that owns it). Results and inputs
are deleted when the job expires (the url TTL after it ended).

The queries are written once, here, against the backend's declared placeholder (`PLACEHOLDER`); each
backend owns its connections and its schema (sqlite.py, postgres.py).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from limner.errors import JobStoreFull, JobStoreUnavailable, LimnerError
from limner.stores.jobs.sole import SoleUse

ENDED = ("completed", "failed", "cancelled")
#: What /health writes (and gives back) to see that a job fits: a request with a small upload.
PROBE_ROOM = bytes(64 * 1024)


@dataclass
class JobRecord:
    id: str
    owner: str
    idempotency_key: str | None
    fingerprint: str
    mode: str
    operation: str
    route: str
    model: str | None
    status: str
    created_at: int
    updated_at: int
    expires_at: int | None
    content_type: str
    body: bytes | None
    base_url: str
    callback_url: str | None = None
    stream: bool = False
    result: Any = None
    error: Any = None
    status_code: int | None = None
    #: How many runs of this job started (a restart that finds it unfinished starts another).
    attempts: int = 0
    #: The process running it (a replica's runner id) and until when (epoch ms) its claim holds
    #: unless renewed: replicas that share the store run only jobs whose lease has expired.
    runner: str | None = None
    lease_until: int | None = None
    #: DELETE on any replica sets it; the runner polls it and cancels the run.
    cancel_requested: bool = False
    #: When it was accepted, in nanoseconds (orders jobs made within one second); None: when written.
    created_ns: int | None = None


@dataclass(frozen=True)
class Lease:
    """An active job's claim, as replicas see it (without the request's body)."""

    id: str
    runner: str | None
    lease_until: int | None
    cancel_requested: bool


class BatchAborted(Exception):
    """A write in a batch failed in a way that rolled back the whole batch (`JobStore.batch`)."""


class KeyTaken(Exception):
    """Another request (on this replica or another) recorded a job with this Idempotency-Key first."""


COLUMNS = (
    "id, owner, idempotency_key, fingerprint, mode, operation, route, model, status, created_at, "
    "updated_at, expires_at, content_type, body, base_url, callback_url, stream, result, error, status_code, "
    "attempts, runner, lease_until, cancel_requested, result_images"
)
ACTIVE = "status IN ('queued', 'in_progress')"


def pack(result: Any, raw: Sequence[bytes] | None = None) -> tuple[Any, bytes | None]:
    """A result to store: each image's base64 (`b64_json`) moved out of the JSON into one binary value
    of the raw bytes, a quarter smaller than the base64 and not escaped by the JSON encoder. `raw`: the
    images' bytes, in the order of the data, when the caller has them (no decoding then)."""
    data = result.get("response", {}).get("data") if isinstance(result, dict) else None
    if not isinstance(data, list) or not any(isinstance(i, dict) and "b64_json" in i for i in data):
        return result, None
    given = iter(raw) if raw is not None and len(raw) == len(data) else None
    images, packed = bytearray(), []
    for item in data:
        known = next(given) if given is not None else None
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            raw_image = known if known is not None else base64.b64decode(item["b64_json"])
            item = {**item, "b64_json": {"$image": [len(images), len(raw_image)]}}
            images += raw_image
        packed.append(item)
    return {**result, "response": {**result["response"], "data": packed}}, bytes(images)


def _row(job: JobRecord, images: Sequence[bytes] | None) -> tuple[Any, ...]:
    """A new job's values, in the order of COLUMNS and created_ns."""
    result, images_blob = pack(job.result, images)
    return (
        job.id,
        job.owner,
        job.idempotency_key,
        job.fingerprint,
        job.mode,
        job.operation,
        job.route,
        job.model,
        job.status,
        job.created_at,
        job.updated_at,
        job.expires_at,
        job.content_type,
        job.body,
        job.base_url,
        job.callback_url,
        int(job.stream),
        json.dumps(result) if result is not None else None,
        json.dumps(job.error) if job.error is not None else None,
        job.status_code,
        job.attempts,
        job.runner,
        job.lease_until,
        int(job.cancel_requested),
        images_blob,
        job.created_ns or time.time_ns(),
    )


def unpack(result: Any, images: bytes | None) -> Any:
    """The stored result with each image's base64 back in place."""
    if images is None:
        return result
    data = []
    for item in result["response"]["data"]:
        ref = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(ref, dict) and "$image" in ref:
            start, size = ref["$image"]
            item = {**item, "b64_json": base64.b64encode(images[start : start + size]).decode()}
        data.append(item)
    return {**result, "response": {**result["response"], "data": data}}


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    images = values.pop()
    if isinstance(images, memoryview):
        images = bytes(images)
    if isinstance(values[13], memoryview):  # a driver's view of a binary column
        values[13] = bytes(values[13])
    values[16] = bool(values[16])
    values[17] = json.loads(values[17]) if values[17] is not None else None
    values[18] = json.loads(values[18]) if values[18] is not None else None
    values[23] = bool(values[23])
    values[17] = unpack(values[17], images)
    return JobRecord(*values)


class JobStore(abc.ABC):
    """Where durable jobs live: SQLite in the data dir, or PostgreSQL shared by replicas."""

    kind: str
    #: Each thread's connection, and its open batch (`batch`).
    _local: threading.local
    #: The backend driver's parameter placeholder ("?" for sqlite3, "%s" for psycopg).
    PLACEHOLDER: str

    @abc.abstractmethod
    def _connect(self, durable: bool = False) -> AbstractContextManager[Any]:
        """This thread's connection; what is written in the block is committed when it ends (in one
        transaction where the driver makes one, or `_begin` opens it). `durable`: the commit reaches the
        disk before it returns (an accepted asynchronous job survives a power cut); other writes survive
        a crash of the server, and may be lost with the machine's power, like the client waiting for
        them."""

    @abc.abstractmethod
    def _failure(self, exc: Exception) -> LimnerError | None:
        """What a driver's error means for a client (use `_full` or `_unavailable`), or None to let it
        through (an integrity error: an idempotency key taken by another request)."""

    def _full(self) -> JobStoreFull:
        return JobStoreFull(
            "The server cannot record this job: its job store is full. Plain requests (without "
            "Idempotency-Key or Prefer: respond-async) are still served; retry later."
        )

    def _unavailable(self) -> JobStoreUnavailable:
        return JobStoreUnavailable(
            "The server cannot record this job: its job store cannot be written. Plain requests (without "
            "Idempotency-Key or Prefer: respond-async) are still served; retry later."
        )

    def _writing(self) -> AbstractContextManager[Any]:
        """Held around each write transaction (SQLite: one writer at a time in this process)."""
        return contextlib.nullcontext()

    def write_now(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """`(True, call(*args, **kwargs))` when the store can make this write on the calling thread
        without waiting for anything (a lock, the network); `(False, None)` when it cannot, and nothing
        was written. A database across a network always waits: never."""
        return False, None

    def checkpoint(self) -> None:  # noqa: B027  (only a write-ahead log needs it)
        """Move what writes made now (`write_now`) logged into the database proper."""

    def _run(self, sql: str, args: tuple[Any, ...] | list[Any] = (), *, durable: bool = False) -> Any:
        batch = getattr(self._local, "batch", None)
        try:
            if batch is not None:
                db, batch_durable = batch
                if durable and not batch_durable:
                    raise RuntimeError("a durable write in a batch that is not durable")
                return self._in_batch(db, sql, args)
            with self._writing(), self._connect(durable) as db:
                return db.execute(sql, args)
        except Exception as exc:
            raise self._failure(exc) or exc from exc

    @contextlib.contextmanager
    def batch(self, durable: bool = False) -> Iterator[None]:
        """The writes this thread makes inside, as one transaction: one commit (one sync) for them all.
        Each write runs in a savepoint of its own, so one that fails (a key taken) leaves the others.
        `durable`: the commit reaches the disk before it returns (a write that needs it and comes in a
        batch that is not is refused: SQLite sets the sync level before a transaction, never in one)."""
        try:
            with self._writing(), self._connect(durable) as db:
                self._begin(db)
                self._local.batch = (db, durable)
                try:
                    yield
                finally:
                    self._local.batch = None
        except Exception as exc:
            raise self._failure(exc) or exc from exc

    def _in_batch(self, db: Any, sql: str, args: tuple[Any, ...] | list[Any]) -> Any:
        db.execute("SAVEPOINT limner_write")
        try:
            cursor = db.execute(sql, args)
        except Exception as exc:
            try:
                db.execute("ROLLBACK TO SAVEPOINT limner_write")
                db.execute("RELEASE SAVEPOINT limner_write")
            except Exception:
                failure = self._failure(exc)
                if isinstance(failure, JobStoreUnavailable):  # the connection is gone: so is the store
                    raise failure from exc
                # The error took the whole transaction with it (SQLite rolls back on a full disk): the
                # batch's other writes are gone too, and each must be made again on its own.
                raise BatchAborted(exc) from exc
            raise
        db.execute("RELEASE SAVEPOINT limner_write")
        return cursor

    def _begin(self, db: Any) -> None:  # noqa: B027  (most drivers need nothing here)
        """Open the transaction of several statements (a batch's, the probe's), where the driver leaves
        it to the caller."""

    def _rows(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connect() as db:
                rows: list[tuple[Any, ...]] = db.execute(sql, args).fetchall()
        except Exception as exc:
            raise self._failure(exc) or exc from exc
        return rows

    def _records(
        self, where: str, args: tuple[Any, ...] | list[Any] = (), tail: str = ""
    ) -> Iterator[JobRecord]:
        for row in self._rows(f"SELECT {COLUMNS} FROM limner_jobs WHERE {where} {tail}", args):
            yield _record(row)

    def check(self) -> str | None:
        """None when the store can be written, else why (for /health): a write, not a read, since a full
        disk or a read-only data dir still answers SELECT 1 while no job can be recorded."""
        p = self.PLACEHOLDER
        try:
            with self._writing(), self._connect() as db:
                # Room for a typical job, taken and given back in one transaction: rewriting a row in
                # place succeeds on a full disk, where recording a new job does not.
                self._begin(db)
                db.execute(
                    f"UPDATE limner_probe SET at = {p}, room = {p} WHERE id = 1", (time.time_ns(), PROBE_ROOM)
                )
                db.execute("UPDATE limner_probe SET room = NULL WHERE id = 1")
        except Exception as exc:  # whatever the database says, for /health
            failure = self._failure(exc)
            if isinstance(failure, JobStoreFull):
                return "the job store is full"
            if failure is not None:
                return "the job store cannot be written"
            return f"the job store does not answer: {type(exc).__name__}"
        return None

    def insert(self, job: JobRecord, images: Sequence[bytes] | None = None) -> None:
        """Write a new job; KeyTaken when its Idempotency-Key is already recorded (by any replica). A job
        may be written first when it has ended (durable.py: a short synchronous one), with its answer
        (`images`: as for `end`)."""
        self.insert_all([(job, images)], durable=job.mode == "async")  # a 202 promises the job

    def insert_all(
        self, jobs: Sequence[tuple[JobRecord, Sequence[bytes] | None]], *, durable: bool = False
    ) -> None:
        """Write new jobs (each with its images, as for `insert`) with one statement: all of them, or
        none (KeyTaken when one's key is recorded already)."""
        p = self.PLACEHOLDER
        rows = [_row(job, images) for job, images in jobs]
        one = f"({', '.join([p] * len(rows[0]))})"
        try:
            self._run(
                f"INSERT INTO limner_jobs ({COLUMNS}, created_ns) VALUES {', '.join([one] * len(rows))}",
                [value for row in rows for value in row],
                durable=durable,
            )
        except Exception as exc:
            keys = [job.idempotency_key for job, _ in jobs if job.idempotency_key is not None]
            if keys and self._is_key_taken(exc):
                raise KeyTaken(keys[0] if len(keys) == 1 else ", ".join(keys)) from exc
            raise

    @abc.abstractmethod
    def _is_key_taken(self, exc: Exception) -> bool:
        """Whether an insert failed on the idempotency index (the driver's unique violation)."""

    def idempotency_keys(self) -> list[tuple[str, str]]:
        """Every recorded Idempotency-Key, with its owner."""
        rows = self._rows("SELECT owner, idempotency_key FROM limner_jobs WHERE idempotency_key IS NOT NULL")
        return [(owner, key) for owner, key in rows]

    def sole_use(self) -> SoleUse | None:
        """How processes that open this store agree on which one uses it alone (sole.py), or None where
        none can (a database across a network is shared by design)."""
        return None

    def get(self, job_id: str) -> JobRecord | None:
        return next(self._records(f"id = {self.PLACEHOLDER}", (job_id,)), None)

    def by_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        p = self.PLACEHOLDER
        return next(self._records(f"owner = {p} AND idempotency_key = {p}", (owner, key)), None)

    def of_owner(
        self,
        owner: str,
        *,
        limit: int = 20,
        before: int | None = None,
        mode: str | None = None,
        after: str | None = None,
    ) -> list[JobRecord]:
        """The owner's jobs, newest first; `mode` "async" or "sync" keeps only those; `after`, a job id
        (the last of the previous page), continues behind it: no job is skipped, however many were
        made in one second (jobs are ordered by their creation in nanoseconds, then id)."""
        p = self.PLACEHOLDER
        where, args = [f"owner = {p}"], list[Any]([owner])
        if mode is not None:
            where.append(f"mode = {p}")
            args.append(mode)
        if before is not None:
            where.append(f"created_at < {p}")
            args.append(before)
        if after is not None:
            cursor = self._rows(
                f"SELECT created_ns FROM limner_jobs WHERE id = {p} AND owner = {p}", (after, owner)
            )
            if not cursor:
                return []  # a job that expired, or another owner's: nothing behind it is known
            where.append(f"(created_ns < {p} OR (created_ns = {p} AND id < {p}))")
            args += [cursor[0][0], cursor[0][0], after]
        return list(
            self._records(" AND ".join(where), [*args, limit], f"ORDER BY created_ns DESC, id DESC LIMIT {p}")
        )

    def active(self) -> list[JobRecord]:
        """Jobs that were queued or running: what a restart must run again, oldest first."""
        return list(self._records(ACTIVE, (), "ORDER BY created_ns"))

    # -- leases: which replica runs an active job ------------------------------------------------

    def leases(self) -> list[Lease]:
        """Every active job's claim, oldest first (a small read: no body, no result)."""
        rows = self._rows(
            f"SELECT id, runner, lease_until, cancel_requested FROM limner_jobs WHERE {ACTIVE} ORDER BY created_ns"
        )
        return [Lease(i, runner, until, bool(cancel)) for i, runner, until, cancel in rows]

    def claim(self, lease: Lease, runner: str, until: int) -> bool:
        """Take an active job for `runner` if its claim is still `lease` (compare and set: of replicas
        that try at once, exactly one wins)."""
        p = self.PLACEHOLDER
        cur = self._run(
            f"UPDATE limner_jobs SET runner = {p}, lease_until = {p} WHERE id = {p} AND {ACTIVE} "
            f"AND COALESCE(runner, '') = {p} AND COALESCE(lease_until, 0) = {p}",
            (runner, until, lease.id, lease.runner or "", lease.lease_until or 0),
        )
        return bool(cur.rowcount)

    def renew(self, runner: str, until: int) -> None:
        """Extend every active job's claim that `runner` holds."""
        p = self.PLACEHOLDER
        self._run(
            f"UPDATE limner_jobs SET lease_until = {p} WHERE runner = {p} AND {ACTIVE}", (until, runner)
        )

    def release(self, runner: str) -> None:
        """`runner` stops: its active jobs may be taken by anyone at once."""
        p = self.PLACEHOLDER
        self._run(f"UPDATE limner_jobs SET lease_until = 0 WHERE runner = {p} AND {ACTIVE}", (runner,))

    def request_cancel(self, job_id: str) -> bool:
        """Ask whichever replica runs the job to cancel it; False when it is not active."""
        p = self.PLACEHOLDER
        cur = self._run(f"UPDATE limner_jobs SET cancel_requested = 1 WHERE id = {p} AND {ACTIVE}", (job_id,))
        return bool(cur.rowcount)

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = int(time.time())
        for name in ("result", "error"):
            if name in fields and fields[name] is not None:
                fields[name] = json.dumps(fields[name])
        p = self.PLACEHOLDER
        assignments = ", ".join(f"{name} = {p}" for name in fields)
        self._run(f"UPDATE limner_jobs SET {assignments} WHERE id = {p}", (*fields.values(), job_id))

    def end(
        self,
        job_id: str,
        status: str,
        *,
        ttl: int,
        result: Any = None,
        error: Any = None,
        status_code: int | None = None,
        images: Sequence[bytes] | None = None,
    ) -> None:
        """The job ended: keep its answer for `ttl` seconds (its images as raw bytes: `pack`, from
        `images` when given, the result's images in order); its inputs are no longer needed."""
        result, images_blob = pack(result, images)
        self.update(
            job_id,
            status=status,
            result=result,
            result_images=images_blob,
            error=error,
            status_code=status_code,
            expires_at=int(time.time()) + ttl,
            body=None,
        )

    def delete(self, job_id: str) -> None:
        self._run(f"DELETE FROM limner_jobs WHERE id = {self.PLACEHOLDER}", (job_id,))

    def sweep(self, now: float | None = None, *, max_bytes_per_owner: int | None = None) -> int:
        """Delete jobs whose answer has expired, and an owner's oldest kept synchronous answers beyond
        `max_bytes_per_owner`; give the space back; return how many were deleted."""
        cutoff = int(now if now is not None else time.time())
        p = self.PLACEHOLDER
        cur = self._run(
            f"DELETE FROM limner_jobs WHERE expires_at IS NOT NULL AND expires_at < {p}", (cutoff,)
        )
        deleted = int(cur.rowcount)
        if max_bytes_per_owner is not None:
            deleted += self._bound_owners(max_bytes_per_owner)
        if deleted:
            self._reclaim()
        return deleted

    def _bound_owners(self, limit: int) -> int:
        p = self.PLACEHOLDER
        kept = "mode = 'sync' AND result IS NOT NULL"
        size = "LENGTH(result) + COALESCE(LENGTH(result_images), 0)"
        over = self._rows(
            f"SELECT owner FROM limner_jobs WHERE {kept} GROUP BY owner HAVING SUM({size}) > {p}",
            (limit,),
        )
        deleted = 0
        for (owner,) in over:
            rows = self._rows(
                f"SELECT id, {size} FROM limner_jobs WHERE owner = {p} AND {kept} ORDER BY created_ns DESC",
                (owner,),
            )
            total = 0
            for job_id, size in rows:
                total += int(size)
                if total > limit:
                    self.delete(job_id)
                    deleted += 1
        return deleted

    @abc.abstractmethod
    def _reclaim(self) -> None:
        """Give the space of deleted rows back to the disk."""
