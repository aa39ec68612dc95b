"""A shared service that hangs must not starve the server: S3 frozen (moto's server stopped with
SIGSTOP) while /health is polled at 10 Hz; requests that never touch S3 are still served, and /health
answers at once that the image store does not answer. PostgreSQL frozen under `keys_url`: no call
waits on it (a fast 503, or the last good key set for its grace), and nothing opens a connection on
the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from limner.server.settings import Settings, StorageConfig
from tests.support.inprocess import app_client

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def moto_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx2.get(endpoint, timeout=2)
            break
        except httpx2.TransportError:
            assert time.monotonic() < deadline, "moto's server did not start"
            time.sleep(0.1)
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="frozen")
    try:
        yield endpoint, process
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait()


async def test_a_frozen_s3_does_not_starve_b64_requests(
    tmp_path: Path, moto_process: tuple[str, subprocess.Popen[bytes]]
) -> None:
    endpoint, process = moto_process
    settings = Settings(
        data_dir=tmp_path, storage=StorageConfig(kind="s3", bucket="frozen", endpoint_url=endpoint)
    )
    body = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "b64_json"}
    async with app_client(settings) as client:
        assert (await client.get("/health")).json()["services"]["images"]["ok"]
        os.kill(process.pid, signal.SIGSTOP)  # S3 hangs: connections are accepted, nothing answers
        try:
            polls: list[asyncio.Future[httpx2.Response]] = []
            polling = True

            async def poll() -> None:
                # A load balancer polls on its own clock, whether or not the last answer came back.
                while polling:
                    polls.append(asyncio.ensure_future(client.get("/health")))
                    await asyncio.sleep(0.1)

            poller = asyncio.ensure_future(poll())
            await asyncio.sleep(2.0)  # twenty polls: more probes of S3 than the default executor has threads
            started = time.monotonic()
            served = [(await client.post("/v1/images/generations", json=body)).status_code for _ in range(16)]
            elapsed = time.monotonic() - started
            polling = False
            await poller
            answers = [(await done).json()["services"]["images"] for done in polls]
        finally:
            os.kill(process.pid, signal.SIGCONT)
    assert served == [200] * 16
    # Generous (a busy machine is slow), yet far below what a starved executor costs: the S3 client's
    # read timeout, 15 s, per request.
    assert elapsed < 60, elapsed
    assert answers and not answers[-1]["ok"] and "no answer" in str(answers[-1]["error"])


@pytest.fixture
def frozen_postgres(postgres: str) -> Iterator[tuple[str, int]]:
    """A database of its own in the session's cluster, and the pid to freeze; thawed afterwards."""
    from tests.support.postgres import fresh_database, postmaster_pid

    url, pid = fresh_database(postgres), postmaster_pid(postgres)
    try:
        yield url, pid
    finally:
        os.kill(pid, signal.SIGCONT)


async def _timed(client: httpx2.AsyncClient, path: str, **headers: str) -> tuple[int, float]:
    started = time.monotonic()
    response = await client.get(path, headers=headers)
    return response.status_code, time.monotonic() - started


@pytest.mark.parametrize("keys", [True, False], ids=["keys-required", "open-server"])
async def test_a_frozen_key_database_answers_fast(
    tmp_path: Path, frozen_postgres: tuple[str, int], keys: bool
) -> None:
    from limner.stores.keys.postgres import PostgresKeyStore

    url, pid = frozen_postgres
    secret = PostgresKeyStore(url).create("ci")[1] if keys else ""
    settings = Settings(data_dir=tmp_path, keys_url=url)
    auth = {"authorization": f"Bearer {secret}"} if keys else {}
    async with app_client(settings) as client:
        guard = client.app.state.key_guard  # type: ignore[attr-defined]
        guard.ttl, guard.grace, guard.wait = 0.2, 1.0, 0.5  # the defaults' shape, in less time
        guard.store.timeout = 30  # a connect waits this long on a frozen server: far above any bound below
        assert (await client.get("/v1/models", headers=auth)).status_code == 200
        os.kill(pid, signal.SIGSTOP)  # new connections are accepted by the kernel; nobody answers
        try:
            answers = []
            for _ in range(12):  # 3 s: past the grace, into a refresh that waits out its connect time-out
                answers.append(await _timed(client, "/v1/models", **auth))
                answers.append(await _timed(client, "/health"))
                await asyncio.sleep(0.25)
        finally:
            os.kill(pid, signal.SIGCONT)
        # Before: with keys required, each call waited behind one lock for the connect time-out (30 s
        # here; 12 s seen with the default); on an open server, /health and every call opened a
        # connection on the event loop. Now: the slowest answer is far below one connect time-out (a
        # bound generous enough for a busy machine).
        assert max(elapsed for _, elapsed in answers) < 10.0, answers
        v1 = [status for status, _ in answers[0::2]]
        if keys:
            # The last good key set for its grace, then a 503 (never a 500, never an open door).
            assert set(v1) <= {200, 503} and v1[0] == 200 and v1[-1] == 503, v1
        else:
            assert set(v1) <= {200, 503}, v1
        # Thawed, the keys are read again.
        deadline = time.monotonic() + 30
        while (await client.get("/v1/models", headers=auth)).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
