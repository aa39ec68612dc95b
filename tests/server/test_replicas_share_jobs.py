"""Replicas that share one job store (`jobs_url`, PostgreSQL) run each job once: a replica that starts
leaves the jobs live on another alone, takes over those of one that stopped (at once after a clean stop,
after the lease when one stops renewing), the same Idempotency-Key sent to two replicas at once runs
once and both get its answer, and DELETE on any replica cancels the job where it runs.

Before leases, a replica that started ran every queued or running row again (6 jobs, 7 runs), and the
same key at two replicas gave 500 (a unique violation) and 409s for a job that was running elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from limner.server.settings import Settings
from tests.server.test_jobs import body, job, until, wait_status
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client

GENERATIONS = "/v1/images/generations"
ASYNC = {"prefer": "respond-async"}
LEASE = 2.0  # seconds: short, so that a take-over after a lost lease is quick to see


@pytest.fixture
def jobs_url(postgres: str) -> str:
    from tests.support.postgres import fresh_database

    return fresh_database(postgres)


@contextlib.asynccontextmanager
async def replica(
    tmp_path: Path, name: str, url: str, engine: GateEngine
) -> AsyncIterator[httpx2.AsyncClient]:
    settings = Settings(data_dir=tmp_path / name, jobs_url=url, job_lease_seconds=LEASE)
    async with app_client(settings, engines={"m": engine}) as client:
        yield client


def seeds(engine: GateEngine) -> list[int]:
    return sorted(seed for run in engine.runs for seed in run)


async def test_jobs_run_once_across_replicas_with_restarts(tmp_path: Path, jobs_url: str) -> None:
    a_engine, b_engine = GateEngine(), GateEngine()
    a_replica = replica(tmp_path, "a", jobs_url, a_engine)
    a = await a_replica.__aenter__()
    try:
        ids = [(await a.post(GENERATIONS, json=body(s), headers=ASYNC)).json()["id"] for s in range(6)]
        await a_engine.began(1)
        async with replica(tmp_path, "b", jobs_url, b_engine) as b:
            b_engine.open()
            await asyncio.sleep(2.5 * LEASE)  # A renews its leases: B, started after, takes none of its jobs
            assert b_engine.runs == []
            # DELETE on B reaches the job where it runs (A).
            cancelled = await b.delete(f"/v1/images/jobs/{ids[0]}")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            # A stops (its jobs queued or running, never let through): B takes them over at once.
            await a_replica.__aexit__(None, None, None)
            for job_id in ids[1:]:
                await wait_status(b, job_id, "completed")
            assert (await job(b, ids[0]))["status"] == "cancelled"
    finally:
        await a_replica.__aexit__(None, None, None)
    # Each job that was not cancelled ran to its end exactly once, all on B (A's gate never opened).
    assert seeds(b_engine) == [1, 2, 3, 4, 5]


async def test_one_key_sent_to_two_replicas_at_once_runs_once(tmp_path: Path, jobs_url: str) -> None:
    a_engine, b_engine = GateEngine(), GateEngine()
    a_engine.open()
    b_engine.open()
    async with (
        replica(tmp_path, "a", jobs_url, a_engine) as a,
        replica(tmp_path, "b", jobs_url, b_engine) as b,
    ):
        headers = {"idempotency-key": "both-at-once"}
        answers = await asyncio.gather(
            *[client.post(GENERATIONS, json=body(7), headers=headers) for client in (a, b, a, b, a, b, a, b)]
        )
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert all(r.json() == answers[0].json() for r in answers)
    assert len(seeds(a_engine) + seeds(b_engine)) == 1


@pytest.mark.parametrize("client", ["async", "waiting"])
async def test_a_replica_that_stops_renewing_loses_its_jobs_to_another(
    tmp_path: Path, jobs_url: str, client: str
) -> None:
    """After the lease, B takes A's job over and runs it; A's run stops, unrecorded. A client still
    waiting on A for its synchronous job with a key gets B's answer from the store (not a 409 that
    says cancelled)."""
    a_engine, b_engine = GateEngine(), GateEngine()
    b_engine.open()
    async with (
        replica(tmp_path, "a", jobs_url, a_engine) as a,
        replica(tmp_path, "b", jobs_url, b_engine) as b,
    ):
        manager = a.app.state.jobs  # type: ignore[attr-defined]
        headers = {"idempotency-key": "taken-over"}
        if client == "async":
            job_id = (await a.post(GENERATIONS, json=body(3), headers=ASYNC)).json()["id"]
        else:
            waiting = asyncio.ensure_future(a.post(GENERATIONS, json=body(3), headers=headers))
        await a_engine.began(1)
        manager._keeper.cancel()  # A hangs: it no longer renews (a replica cut off from the database)
        await until(lambda: seeds(b_engine) == [3])  # after the lease, B takes the job over and runs it
        # A wakes up: its keeper sees the job is no longer its own and stops the run, unrecorded.
        manager._keeper = asyncio.ensure_future(manager._keep())
        await until(lambda: not manager.live)
        a_engine.open()
        if client == "async":
            assert (await job(a, job_id))["status"] == "completed"
        else:
            answer = await waiting
            assert answer.status_code == 200, answer.text
            replayed = await b.post(GENERATIONS, json=body(3), headers=headers)
            assert replayed.json() == answer.json()
    assert seeds(b_engine) == [3]


async def test_a_job_that_ends_is_never_taken_for_a_lost_one(tmp_path: Path) -> None:
    """Between the write of its end and its run's last step, a job's row is no longer active: the lease
    keeper must not take that for another replica's take-over (it once did, at concurrency 8)."""
    engine = GateEngine()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        manager = client.app.state.jobs  # type: ignore[attr-defined]
        job_id = (await client.post(GENERATIONS, json=body(1), headers=ASYNC)).json()["id"]
        await engine.began(1)
        live = manager.live[job_id]
        # The moment in question, made to last: its end is in the store, its run not yet done.
        live.record.status = "completed"
        await asyncio.to_thread(manager.store.end, job_id, "completed", ttl=60, result={}, status_code=200)
        await manager._watch_live()
        assert not live.lost and not live.run.cancelled
        engine.open()
