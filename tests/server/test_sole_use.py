"""A short synchronous job with an Idempotency-Key is written once, at its end, while one server alone
uses its SQLite job store (stores/jobs/sole.py, serving/durable.py: `_defer`): its key is claimed in
memory meanwhile. A job that runs longer is written as it is; a second server on the same store makes
the first write what only it knew before either goes on; a server that stops writes it too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from limner.server.settings import Settings
from limner.stores.jobs import SoleUse, SqliteJobStore
from tests.server.test_jobs import GENERATIONS, body, until
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client


@pytest.fixture
def never_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """No job runs long enough to be written at its start for that reason (however slow the machine)."""
    monkeypatch.setattr("limner.server.serving.durable.DEFER_START_SECONDS", 600.0)


def test_one_process_uses_the_store_alone_until_another_knocks(tmp_path: Path) -> None:
    database = tmp_path / "jobs.sqlite3"
    first, second, third = SoleUse(database), SoleUse(database), SoleUse(database)
    assert first.take() is True and not first.knocked()
    assert second.take() is None  # the first is alone and has not shared
    assert first.knocked()
    first.share()
    assert second.take() is False and third.take() is False
    for sole in (first, second, third):
        sole.close()
    again = SoleUse(database)
    assert again.take() is True
    # Another process: it waits for this one to share, and this one sees it come.
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from limner.stores.jobs import SoleUse; "
            "s = SoleUse(Path(sys.argv[1])); print(s.take(), flush=True); sys.stdin.read(); print(s.take())",
            str(database),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None and other.stdin is not None
    assert other.stdout.readline().strip() == "None"
    assert again.knocked()
    again.share()
    other.stdin.close()
    assert other.stdout.read().strip() == "False"
    assert other.wait(timeout=60) == 0
    again.close()
    assert SoleUse(tmp_path / "missing" / "jobs.sqlite3").take() is False  # nowhere to agree: shared


async def test_a_short_keyed_job_is_written_once_with_its_answer(tmp_path: Path, never_long: None) -> None:
    engine = GateEngine()
    settings = Settings(data_dir=tmp_path)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    async with app_client(settings, engines={"m": engine}) as client:
        request = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await engine.began(1)
        duplicate = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await asyncio.sleep(0.2)
        assert store.by_idempotency_key("-", "k") is None  # claimed in memory only, while it runs
        engine.open()
        first, second = await asyncio.gather(request, duplicate)
        assert first.status_code == second.status_code == 200 and first.json() == second.json()
        await until(lambda: not client.app.state.jobs.live)
    kept = store.by_idempotency_key("-", "k")
    assert kept is not None and kept.status == "completed" and kept.attempts == 1
    assert engine.runs == [[1]]
    # The one row is the key's answer after a restart: the retry runs nothing.
    closed = GateEngine()
    async with app_client(settings, engines={"m": closed}) as client:
        retry = await client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        assert retry.json() == first.json()
        retry = await client.post(GENERATIONS, json=body(2), headers={"idempotency-key": "k"})
        assert retry.status_code == 400 and retry.json()["error"]["param"] == "Idempotency-Key"
    assert closed.runs == []


async def test_a_keyed_job_that_runs_long_is_written_while_it_runs(tmp_path: Path) -> None:
    engine = GateEngine()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        request = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await engine.began(1)

        def written() -> bool:
            kept = store.by_idempotency_key("-", "k")
            return kept is not None and kept.status == "in_progress" and kept.attempts == 1

        await until(written)  # a restart would run it again, counted
        engine.open()
        assert (await request).status_code == 200
        await until(lambda: not client.app.state.jobs.live)
    kept = store.by_idempotency_key("-", "k")
    assert kept is not None and kept.status == "completed" and kept.body is None


async def test_the_lease_keeper_leaves_a_job_not_written_yet_alone(tmp_path: Path, never_long: None) -> None:
    """Its row is not among this runner's leases: it is not a job another replica took over."""
    engine = GateEngine()
    settings = Settings(data_dir=tmp_path, job_lease_seconds=1.0)  # a tick every 1/6 s
    async with app_client(settings, engines={"m": engine}) as client:
        request = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await engine.began(1)
        await asyncio.sleep(1.0)
        engine.open()
        answer = await request
    assert answer.status_code == 200, answer.text
    assert engine.runs == [[1]]


async def test_a_second_server_makes_the_first_write_what_only_it_knew(
    tmp_path: Path, never_long: None
) -> None:
    store = SqliteJobStore(tmp_path / "shared" / "jobs.sqlite3")
    first_engine, second_engine = GateEngine(), GateEngine()
    # Both on the SQLite file of one data dir, as two processes on one machine may be.
    settings = Settings(data_dir=tmp_path / "shared", job_lease_seconds=1.0)
    async with app_client(settings, engines={"m": first_engine}) as first:
        request = asyncio.ensure_future(
            first.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await first_engine.began(1)
        assert store.by_idempotency_key("-", "k") is None
        async with app_client(settings, engines={"m": second_engine}) as second:
            # Started: the first has shared the store, and written its job first.
            kept = store.by_idempotency_key("-", "k")
            assert kept is not None and kept.status == "in_progress"
            retry = asyncio.ensure_future(
                second.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
            )
            # A new key on the first is now written when it starts, as every server sharing does.
            other = asyncio.ensure_future(
                first.post(GENERATIONS, json=body(2), headers={"idempotency-key": "o"})
            )
            await until(lambda: store.by_idempotency_key("-", "o") is not None)
            first_engine.open()
            answers = await asyncio.gather(request, retry, other)
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert answers[0].json() == answers[1].json()
    assert sorted(first_engine.runs) == [[1], [2]] and second_engine.runs == []


async def test_a_job_accepted_after_the_knock_is_handed_over_too(
    tmp_path: Path, never_long: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request tries the knock at most every KNOCK_CHECK_SECONDS (here: never again after the first):
    a job kept in memory after another server knocked is written by the hand-over all the same, which
    the newcomer waits for (found by the first server's keeper, at its next tick)."""
    monkeypatch.setattr("limner.server.serving.durable.KNOCK_CHECK_SECONDS", 600.0)
    monkeypatch.setattr("limner.server.serving.durable.HAND_OVER_SECONDS", 120.0)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    first_engine, second_engine = GateEngine(max_batch=1), GateEngine()
    settings = Settings(data_dir=tmp_path, job_lease_seconds=3.0)  # the keeper's tick: every 0.5 s
    async with app_client(settings, engines={"m": first_engine}) as first:
        manager = first.app.state.jobs
        posts = [
            asyncio.ensure_future(first.post(GENERATIONS, json=body(1), headers={"idempotency-key": "a"}))
        ]
        await first_engine.began(1)
        second_app = app_client(settings, engines={"m": second_engine})
        entering = asyncio.ensure_future(second_app.__aenter__())
        await until(manager._sole.knocked)
        posts.append(
            asyncio.ensure_future(first.post(GENERATIONS, json=body(2), headers={"idempotency-key": "b"}))
        )
        second = await asyncio.wait_for(entering, timeout=120)
        try:
            # Started: the first had written both jobs, the one accepted after the knock too.
            for key in ("a", "b"):
                assert store.by_idempotency_key("-", key) is not None, key
            retries = [
                asyncio.ensure_future(second.post(GENERATIONS, json=body(n), headers={"idempotency-key": k}))
                for n, k in ((1, "a"), (2, "b"))
            ]
            first_engine.open()
            answers = await asyncio.gather(*posts, *retries)
            assert [a.status_code for a in answers] == [200] * 4
            assert answers[0].json() == answers[2].json() and answers[1].json() == answers[3].json()
        finally:
            await second_app.__aexit__(None, None, None)
    assert sorted(first_engine.runs) == [[1], [2]] and second_engine.runs == []


async def test_a_server_that_stops_writes_the_jobs_only_it_knew(tmp_path: Path, never_long: None) -> None:
    settings = Settings(data_dir=tmp_path)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    stuck = GateEngine()  # never lets its run finish: the server stops under it
    async with app_client(settings, engines={"m": stuck}) as client:
        request = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await stuck.began(1)
        assert store.by_idempotency_key("-", "k") is None
        request.cancel()  # the client leaves; the job with a key goes on, until the server stops
        with pytest.raises((asyncio.CancelledError, httpx2.HTTPError)):
            await request
    kept = store.by_idempotency_key("-", "k")
    assert kept is not None and kept.status in ("queued", "in_progress") and kept.attempts == 1
    engine = GateEngine()
    engine.open()
    async with app_client(settings, engines={"m": engine}) as client:
        retry = await client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        assert retry.status_code == 200, retry.text
    assert engine.runs == [[1]]


async def test_a_client_still_waiting_when_the_server_stops_is_told_to_retry_with_its_key(
    tmp_path: Path, never_long: None
) -> None:
    """The job of a client whose request is still open when the server stops is left for the next
    start: its client gets a 503 that says to send it again with the same key (not a 409 that says it
    was cancelled, which a client obeys with a new key, and runs it twice), and the retry runs it once."""
    settings = Settings(data_dir=tmp_path)
    stuck = GateEngine(batches=False)
    async with app_client(settings, engines={"m": stuck}) as client:
        blocker = asyncio.ensure_future(client.post(GENERATIONS, json=body(100)))
        await stuck.began(1)
        waiting = asyncio.ensure_future(
            client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        )
        await until(lambda: len(client.app.state.jobs.live) == 1)
    stuck.open()  # the stop took the keyed job out of the queue; the blocker's run may end now
    answer = await waiting
    await blocker
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "server_stopping" and "same Idempotency-Key" in answer.text
    assert answer.headers["retry-after"] == "1"
    engine = GateEngine()
    engine.open()
    async with app_client(settings, engines={"m": engine}) as client:
        retry = await client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "k"})
        assert retry.status_code == 200, retry.text
    assert [run[0] for run in engine.runs] == [1]


async def test_the_index_of_recorded_keys_is_read_again_without_losing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index is read from the store again when it has doubled: every key recorded is still found
    (a retry is replayed, not run again), and the keys of swept answers leave it."""
    monkeypatch.setattr("limner.server.serving.durable.KEY_INDEX_REREAD", 2)
    engine = GateEngine()
    engine.open()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    settings = Settings(data_dir=tmp_path, job_lease_seconds=1.0)  # a tick (and a reading) every 1/6 s
    async with app_client(settings, engines={"m": engine}) as client:
        manager = client.app.state.jobs
        for seed in range(8):
            answer = await client.post(GENERATIONS, json=body(seed), headers={"idempotency-key": f"k{seed}"})
            assert answer.status_code == 200
            await asyncio.sleep(0.05)  # readings happen between the requests
        await until(lambda: not manager.live)
        await asyncio.sleep(0.5)
        for seed in range(8):
            retry = await client.post(GENERATIONS, json=body(seed), headers={"idempotency-key": f"k{seed}"})
            assert retry.status_code == 200
        assert len(engine.runs) == 8  # every retry replayed
        store.sweep(now=time.time() + 10**6)  # every answer expires
        for seed in range(8, 26):
            await client.post(GENERATIONS, json=body(seed), headers={"idempotency-key": f"k{seed}"})
        # Read again once it doubled: only the 18 recorded keys are left in it (none of the 8 swept).
        await until(lambda: len(manager._keys) == 18)
