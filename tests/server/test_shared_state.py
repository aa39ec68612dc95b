"""State that replicas share: keys and jobs in PostgreSQL (a throw-away cluster from Debian's
`postgresql` package, started by the fixture), passing the tests the SQLite stores pass; and jobs that
survive a graceful restart on either store.

Tests that need PostgreSQL skip, with the reason, where it is not installed; `.ci/run` installs it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from limner.server.app import create_app
from limner.server.settings import Settings
from limner.stores.keys import KeyDatabaseError, open_key_store
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client
from tests.support.postgres import fresh_database

GENERATIONS = "/v1/images/generations"


@pytest.fixture(params=["sqlite", "postgresql"])
def keys_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres"))


async def status(client: Any, token: str | None = None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return int((await client.get("/v1/models", headers=headers)).status_code)


async def test_keys_lifecycle_on_either_store(tmp_path: Path, keys_url: str | None) -> None:
    store = open_key_store(tmp_path, keys_url)
    settings = Settings(data_dir=tmp_path, keys_url=keys_url)
    async with app_client(settings) as client:
        client.app.state.key_guard.ttl = 0  # type: ignore[attr-defined]
        assert await status(client) == 200  # no key yet: open
        record, secret = store.create("ci")
        assert await status(client) == 401 and await status(client, secret) == 200
        assert [k.id for k in store.list()] == [record.id]
        assert store.revoke(record.id) and not store.revoke(record.id)
        assert await status(client, secret) == 401 and await status(client) == 401  # closed, not open


async def test_a_key_made_once_works_on_every_server(tmp_path: Path, postgres: str) -> None:
    url = fresh_database(postgres)
    _, secret = open_key_store(tmp_path, url).create()
    for replica in ("one", "two"):  # two servers, two data dirs, one key database
        async with app_client(Settings(data_dir=tmp_path / replica, keys_url=url)) as client:
            assert await status(client, secret) == 200 and await status(client, "lim-wrong") == 401


async def test_an_unreachable_key_database_is_a_503_and_a_start_up_error(
    tmp_path: Path, postgres: str
) -> None:
    url = fresh_database(postgres)
    _, secret = open_key_store(tmp_path, url).create()
    async with app_client(Settings(data_dir=tmp_path, keys_url=url)) as client:
        client.app.state.key_guard.ttl = 0  # type: ignore[attr-defined]
        client.app.state.key_guard.store.url = url.rsplit("/", 1)[0] + "/no_such_database"  # type: ignore[attr-defined]
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
        assert response.status_code == 503 and "no_such_database" not in response.text
        health = (await client.get("/health")).json()
        assert health["services"]["keys"]["kind"] == "postgresql" and not health["services"]["keys"]["ok"]
    gone = url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(KeyDatabaseError, match="no_such_database"):
        create_app(Settings(data_dir=tmp_path / "b", keys_url=gone, auth="keys"))


def test_keys_cli_against_postgresql(tmp_path: Path, postgres: str) -> None:
    url = fresh_database(postgres)

    def limner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "limner", "keys", *args, "--data-dir", str(tmp_path), "--keys-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = limner("create", "--name", "shared")
    assert created.returncode == 0 and created.stdout.strip().splitlines()[-1].startswith("lim-")
    listed = limner("list")
    key_id = listed.stdout.split()[0]
    assert "shared" in listed.stdout and limner("revoke", key_id).returncode == 0
    assert "revoked" in limner("list").stdout
    assert not (tmp_path / "keys.sqlite3").exists()


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return fresh_database(request.getfixturevalue("postgres"))


async def test_jobs_survive_a_restart_on_either_store(tmp_path: Path, jobs_url: str | None) -> None:
    body = {"model": "m", "prompt": "x", "size": "64x64", "response_format": "b64_json"}
    settings = Settings(data_dir=tmp_path, jobs_url=jobs_url)
    stuck = GateEngine(batches=False)  # never lets a run finish: the server stops with work left
    async with app_client(settings, engines={"m": stuck}) as client:
        ids = [
            (
                await client.post(GENERATIONS, json={**body, "seed": s}, headers={"prefer": "respond-async"})
            ).json()["id"]
            for s in range(3)
        ]
        await stuck.began(1)
    engine = GateEngine(batches=False)
    engine.open()
    async with app_client(settings, engines={"m": engine}) as client:
        deadline = time.monotonic() + 60
        while True:
            jobs = [(await client.get(f"/v1/images/jobs/{i}")).json() for i in ids]
            if all(j["status"] == "completed" for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            await asyncio.sleep(0.02)
        health = (await client.get("/health")).json()["services"]["jobs"]
    assert sorted(run[0] for run in engine.runs) == [0, 1, 2]
    assert health == {"kind": "postgresql" if jobs_url else "sqlite", "ok": True}


def test_replicas_starting_together_create_the_schema_once(postgres: str) -> None:
    """CREATE TABLE IF NOT EXISTS races in PostgreSQL; limner's stores take a lock around it."""
    import threading

    from limner.stores.jobs.postgres import PostgresJobStore
    from limner.stores.keys.postgres import PostgresKeyStore

    url = fresh_database(postgres)
    errors: list[str] = []

    def start() -> None:
        try:
            assert PostgresKeyStore(url).check() is None
            PostgresJobStore(url)
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
