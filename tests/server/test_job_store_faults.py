"""A job store that cannot be written (a full disk, a database gone) is a clear 507 or 503 for the
requests that need it, /health says so, plain requests are still served, a job that ends meanwhile is
recorded once the store is back, and a `jobs_url` that cannot be reached stops start-up in one line.

The full disk is SQLite's own: `PRAGMA max_page_count` at the file's current size makes every write that
needs a new page fail with SQLITE_FULL, as a full disk does; a database gone is PostgreSQL's DROP
DATABASE (the connections are cut, reconnecting fails).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from limner.server.settings import Settings
from limner.stores.jobs import SqliteJobStore
from tests.server.test_jobs import body, job, until
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client

GENERATIONS = "/v1/images/generations"
ASYNC = {"prefer": "respond-async"}


class FillableJobStore(SqliteJobStore):
    """SQLite whose file can be made "full" at its current size (its own page limit, per connection)."""

    full = False

    @contextmanager
    def _connect(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        with super()._connect(durable) as db:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages if self.full else 2**30}")
            yield db


@pytest.fixture
def fillable(monkeypatch: pytest.MonkeyPatch) -> list[FillableJobStore]:
    made: list[FillableJobStore] = []

    def open_store(data_dir: Path, url: str | None = None) -> FillableJobStore:
        made.append(FillableJobStore(data_dir / "jobs.sqlite3"))
        return made[-1]

    monkeypatch.setattr("limner.server.app.open_job_store", open_store)
    return made


def assert_envelope(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == code and error["type"] == "server_error" and "job store" in error["message"]


async def test_a_full_job_store_is_a_507_and_plain_requests_are_served(
    tmp_path: Path, fillable: list[FillableJobStore]
) -> None:
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        (store,) = fillable
        big = body(1, prompt="x" * 31_000)  # more than the free pages of the file
        store.full = True
        assert_envelope(await client.post(GENERATIONS, json=big, headers=ASYNC), 507, "job_store_full")
        keyed = await client.post(GENERATIONS, json=big, headers={"idempotency-key": "k1"})
        assert_envelope(keyed, 507, "job_store_full")
        assert (await client.post(GENERATIONS, json=big)).status_code == 200  # needs no store
        await asyncio.sleep(1.1)  # the probe's answer is fresh for a second
        health = (await client.get("/health")).json()["services"]["jobs"]
        assert not health["ok"] and "full" in health["error"], health
        store.full = False  # space freed: the same requests are accepted again
        assert (await client.post(GENERATIONS, json=big, headers=ASYNC)).status_code == 202
        assert (
            await client.post(GENERATIONS, json=big, headers={"idempotency-key": "k1"})
        ).status_code == 200


async def test_a_job_that_ends_while_the_store_is_full_is_recorded_when_space_returns(
    tmp_path: Path, fillable: list[FillableJobStore]
) -> None:
    engine = GateEngine()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        (store,) = fillable
        accepted = await client.post(GENERATIONS, json=body(2, size="512x512"), headers=ASYNC)
        job_id = accepted.json()["id"]
        await engine.began(1)
        store.full = True  # the result (a 512x512 PNG) needs pages the file no longer has
        engine.let_through()
        # Before: the job stayed in_progress until a restart. Now it is completed for its reader at once...
        await until(
            lambda: (
                client.app.state.jobs.live.get(job_id) is None
                or client.app.state.jobs.live[job_id].answered.is_set()
            )
        )  # type: ignore[attr-defined]
        assert (await job(client, job_id))["status"] == "completed"
        assert store.get(job_id).status == "in_progress"  # type: ignore[union-attr]
        store.full = False  # ... and in the store once it can be written
        await until(lambda: store.get(job_id).status == "completed")  # type: ignore[union-attr]
        assert (await job(client, job_id))["result"]["data"]


async def test_a_job_database_gone_is_a_503(tmp_path: Path, postgres: str) -> None:
    import psycopg

    from tests.support.postgres import fresh_database

    url = fresh_database(postgres)
    engine = GateEngine()
    engine.open()
    settings = Settings(data_dir=tmp_path, jobs_url=url)
    async with app_client(settings, engines={"m": engine}) as client:
        assert (await client.post(GENERATIONS, json=body(1), headers=ASYNC)).status_code == 202
        with psycopg.connect(postgres, autocommit=True) as db:
            db.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        assert_envelope(
            await client.post(GENERATIONS, json=body(2), headers=ASYNC), 503, "job_store_unavailable"
        )
        assert (await client.post(GENERATIONS, json=body(3))).status_code == 200
        await asyncio.sleep(1.1)  # past the last fresh probe answer
        health = (await client.get("/health")).json()["services"]["jobs"]
        assert not health["ok"] and "cannot be written" in health["error"], health


def test_an_unreachable_jobs_url_stops_start_up_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]'")
    config = tmp_path / "limner.toml"
    config.write_text('jobs_url = "postgresql://postgres@127.0.0.1:9/limner"\n')
    done = subprocess.run(
        [sys.executable, "-m", "limner", "serve", "--config", str(config), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("limner serve: jobs_url:"), done.stderr
    assert "Traceback" not in done.stderr
