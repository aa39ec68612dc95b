"""One contract for every job store, run on SQLite and on PostgreSQL: what a restart needs (active
jobs, oldest first), idempotency keys unique per owner, listing by owner and mode, expiry."""

from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path

import pytest

from limner.stores.jobs import JobRecord, JobStore, KeyTaken, SqliteJobStore, open_job_store
from tests.support.postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return open_job_store(tmp_path)
    return open_job_store(tmp_path, fresh_database(request.getfixturevalue("postgres")))


def record(job_id: str, *, owner: str = "key_a", key: str | None = None, mode: str = "async") -> JobRecord:
    now = int(time.time())
    return JobRecord(
        id=job_id,
        owner=owner,
        idempotency_key=key,
        fingerprint="f" * 64,
        mode=mode,
        operation="generate",
        route="/v1/images/generations",
        model="gpt-image-1",
        status="queued",
        created_at=now,
        updated_at=now,
        expires_at=None,
        content_type="application/json",
        body=b'{"prompt": "x"}',
        base_url="http://127.0.0.1:8000",
        stream=True,
    )


def test_insert_get_and_end(store: JobStore) -> None:
    store.insert(record("j1"))
    got = store.get("j1")
    assert got is not None and got.body == b'{"prompt": "x"}' and got.stream is True
    store.update("j1", status="in_progress")
    store.end("j1", "completed", ttl=60, result={"data": [1]}, status_code=200)
    ended = store.get("j1")
    assert ended is not None and ended.status == "completed" and ended.result == {"data": [1]}
    assert ended.body is None and ended.expires_at is not None  # inputs dropped, answer kept for ttl
    assert store.get("nope") is None and store.check() is None


def test_active_jobs_oldest_first(store: JobStore) -> None:
    for job_id in ("a", "b", "c"):
        store.insert(record(job_id))
    store.end("b", "cancelled", ttl=60)
    assert [r.id for r in store.active()] == ["a", "c"]


def test_idempotency_keys_are_unique_per_owner(store: JobStore) -> None:
    store.insert(record("k1", key="same"))
    store.insert(record("k2", key="same", owner="key_b"))  # another owner's key is another key
    with pytest.raises(KeyTaken):  # on any replica: the database's unique index decides
        store.insert(record("k3", key="same"))
    found = store.by_idempotency_key("key_a", "same")
    assert found is not None and found.id == "k1"


def test_listing_by_owner_mode_and_time(store: JobStore) -> None:
    store.insert(record("s1", mode="sync"))
    store.insert(record("a1"))
    store.insert(record("a2"))
    store.insert(record("other", owner="key_b"))
    assert [r.id for r in store.of_owner("key_a")] == ["a2", "a1", "s1"]
    assert [r.id for r in store.of_owner("key_a", mode="async", limit=1)] == ["a2"]
    assert [r.id for r in store.of_owner("key_a", mode="sync")] == ["s1"]
    assert store.of_owner("key_a", before=0) == []


def test_sweep_removes_only_expired_answers(store: JobStore) -> None:
    store.insert(record("old"))
    store.insert(record("live"))
    store.end("old", "completed", ttl=0, result={})
    store.end("live", "completed", ttl=3600, result={})
    assert store.sweep(now=time.time() + 10) == 1
    assert store.get("old") is None and store.get("live") is not None


def test_stores_are_separate_implementations_of_one_protocol() -> None:
    from limner.stores.jobs.postgres import PostgresJobStore

    for implementation in (SqliteJobStore, PostgresJobStore):
        assert implementation.__mro__[1] is JobStore  # neither backend subclasses the other


def test_kept_synchronous_answers_are_bounded_per_owner(store: JobStore) -> None:
    answer = {"response": {"data": [{"b64_json": "A" * 10_000}]}}
    for i in range(5):
        store.insert(record(f"s{i}", mode="sync", key=f"k{i}"))
        store.end(f"s{i}", "completed", ttl=3600, result=answer, status_code=200)
    store.insert(record("other", owner="key_b", mode="sync", key="k0"))
    store.end("other", "completed", ttl=3600, result=answer, status_code=200)
    store.insert(record("async-1"))
    store.end("async-1", "completed", ttl=3600, result=answer, status_code=200)
    # Kept as raw bytes (7,500 for this base64), given back as the same base64.
    kept = store.get("s4")
    assert kept is not None and kept.result == answer
    # Room for two answers: the three oldest of key_a's go; key_b's and the asynchronous result stay.
    assert store.sweep(max_bytes_per_owner=17_000) == 3
    left = {r.id for r in store.of_owner("key_a", limit=50)} | {r.id for r in store.of_owner("key_b")}
    assert left == {"s3", "s4", "other", "async-1"}


def test_sqlite_gives_the_space_of_expired_jobs_back(tmp_path: Path) -> None:
    """Before: the file never shrank (430 MB after six large jobs ended). Incremental auto-vacuum and a
    truncated WAL give the pages back at each sweep."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    big = {"response": {"data": [{"b64_json": "A" * 2_000_000}]}}
    for i in range(6):
        store.insert(record(f"j{i}"))
        store.end(f"j{i}", "completed", ttl=1, result=big, status_code=200)

    def size() -> int:
        return sum(p.stat().st_size for p in tmp_path.glob("jobs.sqlite3*"))

    full = size()
    assert full > 10_000_000
    assert store.sweep(now=time.time() + 10) == 6
    assert size() < full / 10, (full, size())


def test_an_older_sqlite_file_is_converted_to_incremental_vacuum(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # a file as limner made it before: auto_vacuum NONE
        db.execute("CREATE TABLE t (x)")
    SqliteJobStore(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


def test_a_batch_is_one_transaction_where_a_taken_key_fails_alone(store: JobStore) -> None:
    store.insert(record("first", key="taken"))
    with store.batch():
        store.insert(record("b1", mode="sync"))
        with pytest.raises(KeyTaken):
            store.insert(record("b2", key="taken", mode="sync"))
        store.end("b1", "completed", ttl=60, result={"data": [1]}, status_code=200)
        store.insert(record("b3", mode="sync"))
    assert store.get("b2") is None
    ended, third = store.get("b1"), store.get("b3")
    assert ended is not None and ended.status == "completed" and third is not None
    with pytest.raises(RuntimeError), store.batch():  # an error out of the batch: none of it is kept
        store.insert(record("b4", mode="sync"))
        raise RuntimeError("the writer failed")
    assert store.get("b4") is None
    with pytest.raises(RuntimeError, match="durable"), store.batch():
        store.insert(record("b5"))  # an asynchronous job's insert must sync: its batch must be durable
    with store.batch(durable=True):
        store.insert(record("b5"))
    assert store.get("b5") is not None


def test_images_given_with_a_result_are_stored_without_decoding_its_base64(store: JobStore) -> None:
    png = b"\x89PNG raw bytes"
    result = {"response": {"created": 1, "data": [{"b64_json": base64.b64encode(png).decode()}]}}
    store.insert(record("img", mode="sync"))
    store.end("img", "completed", ttl=60, result=result, status_code=200, images=[png])
    got = store.get("img")
    assert got is not None and got.result == result


def test_a_sqlite_write_is_one_statement_and_the_probe_one_transaction(tmp_path: Path) -> None:
    """Each statement lets go of the GIL, and taking it back waits behind engine threads under load: a
    write is its statement alone (no BEGIN or COMMIT of its own), and what must be one transaction
    begins one."""
    store = open_job_store(tmp_path)
    assert isinstance(store, SqliteJobStore)
    store.insert(record("first", mode="sync"))  # this thread's connection is made, its settings set
    seen: list[str] = []
    store._local.db.set_trace_callback(seen.append)
    store.insert(record("second", mode="sync"))
    store.end("second", "completed", ttl=60, result={"data": [1]}, status_code=200)
    assert [sql.split()[0] for sql in seen] == ["INSERT", "UPDATE"]
    seen.clear()
    assert store.check() is None
    assert [sql.split()[0] for sql in seen] == ["BEGIN", "UPDATE", "UPDATE", "COMMIT"]
    ended = store.get("second")
    assert ended is not None and ended.status == "completed"


def test_a_write_is_made_now_only_by_a_store_that_need_not_wait(store: JobStore) -> None:
    """`write_now`: SQLite makes the write on the calling thread (the event loop's) and gives its
    answer, a taken key included; PostgreSQL, across a network, never makes one (nothing is written)."""
    made, _ = store.write_now(store.insert, record("now", mode="sync"))
    if store.kind == "postgresql":
        assert not made and store.get("now") is None
        return
    assert made and store.get("now") is not None
    store.insert(record("first", key="taken", mode="sync"))
    with pytest.raises(KeyTaken):
        store.write_now(store.insert, record("second", key="taken", mode="sync"))
    with pytest.raises(RuntimeError, match="durable"):  # an asynchronous job's insert syncs: never now
        store.write_now(store.insert, record("async"))
    assert store.get("second") is None and store.get("async") is None


def test_sqlite_makes_no_write_now_that_would_wait_for_a_lock(tmp_path: Path) -> None:
    """A write made now never waits: not for this process's writer (a group being committed on the
    writer thread), not for another process's (SQLite's lock, where the busy handler would sleep up to
    30 s). It is left untouched, for the writer thread to make."""
    import sqlite3
    import threading

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    in_batch, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.batch():
            store.insert(record("grouped", mode="sync"))
            in_batch.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    assert in_batch.wait(30)
    try:
        assert store.write_now(store.insert, record("a", mode="sync")) == (False, None)
    finally:
        release.set()
        thread.join(30)
    other = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    started = time.monotonic()
    assert store.write_now(store.insert, record("a", mode="sync")) == (False, None)
    assert time.monotonic() - started < 10  # at once, not after the 30 s busy timeout
    other.execute("COMMIT")
    assert store.write_now(store.insert, record("a", mode="sync")) == (True, None)
    assert store.get("grouped") is not None and store.get("a") is not None
    # The event loop's connection never checkpoints the WAL (the writer thread does: `checkpoint`).
    assert store._local.now_db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    store.checkpoint()
    other.close()


def test_jobs_inserted_together_are_all_written_or_none(store: JobStore) -> None:
    """`insert_all`, one statement for several ended jobs (writes.py gathers them): each with its own
    images; a key recorded already writes none of them (the caller then writes each alone)."""
    images = [b"first image", b"second image"]
    jobs = []
    for i, image in enumerate(images):
        job = dataclasses.replace(
            record(f"e{i}", key=f"k{i}", mode="sync"),
            status="completed",
            body=None,
            result={"response": {"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}]}},
            status_code=200,
        )
        jobs.append((job, [image]))
    store.insert_all(jobs)
    for job, _ in jobs:
        assert store.get(job.id).result == job.result  # type: ignore[union-attr]
    retry = dataclasses.replace(jobs[1][0], id="retry")
    with pytest.raises(KeyTaken):
        store.insert_all(
            [(dataclasses.replace(jobs[0][0], id="new", idempotency_key="k2"), None), (retry, None)]
        )
    assert store.get("new") is None and store.get("retry") is None


def test_an_ended_job_is_written_whole_in_one_insert(store: JobStore) -> None:
    """A short keyed job's one row (durable.py: written at its end): its answer, images and expiry, in
    the order it was accepted; its key is among the recorded ones."""
    image = b"\x89PNG raw bytes"
    ended = dataclasses.replace(
        record("ended", key="k1", mode="sync"),
        status="completed",
        body=None,
        result={"response": {"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}]}},
        status_code=200,
        expires_at=int(time.time()) + 60,
        created_ns=2,
    )
    store.insert(ended, [image])
    store.insert(dataclasses.replace(record("early", key="k0", mode="sync"), created_ns=1))  # written after
    got = store.get("ended")
    assert got is not None and got.status == "completed" and got.status_code == 200 and got.body is None
    assert got.result == ended.result and got.expires_at == ended.expires_at
    assert [job.id for job in store.of_owner("key_a")] == ["ended", "early"]
    assert sorted(store.idempotency_keys()) == [("key_a", "k0"), ("key_a", "k1")]
