"""kill -9 of `limner serve` with jobs queued and running, then a restart on the same data dir: every
accepted job completes, and a synchronous client that retries with its Idempotency-Key gets its
answer. The figure (accepted, completed after the restart) is printed for the record."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.support.server import start_server

JOBS = 24
REQUEST = {"model": "gpt-image-1", "prompt": "a lighthouse at night", "quality": "high", "size": "1536x1024"}


def statuses(base: str, ids: list[str]) -> dict[str, str]:
    """Each job's status, from one listing (one request per job took long enough, on a busy machine,
    for all but the last two to end while it was read, and the crash left no queued job behind)."""
    listed = httpx2.get(f"{base}/v1/images/jobs", params={"limit": 100}, timeout=30).json()["data"]
    status = {job["id"]: job["status"] for job in listed}
    return {i: status.get(i, "missing") for i in ids}


def recorded(data: Path, key: str) -> bool:
    with contextlib.closing(sqlite3.connect(data / "jobs.sqlite3")) as db:
        return (
            db.execute("SELECT 1 FROM limner_jobs WHERE idempotency_key = ?", (key,)).fetchone() is not None
        )


def test_kill_9_loses_no_accepted_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "limner.toml"
    config.write_text("sketch_concurrency = 1\n")
    sync_answer: dict[str, Any] = {}
    with start_server(data, "--config", str(config)) as server:
        ids = []
        for seed in range(JOBS):
            accepted = httpx2.post(
                server.api_base + "/images/generations",
                json={**REQUEST, "seed": seed},
                headers={"prefer": "respond-async"},
                timeout=60,
            )
            assert accepted.status_code == 202, accepted.text
            ids.append(accepted.json()["id"])

        def sync_client() -> None:
            try:
                httpx2.post(
                    server.api_base + "/images/generations",
                    json={**REQUEST, "seed": 1000},
                    headers={"idempotency-key": "sync-before-the-crash"},
                    timeout=120,
                )
            except httpx2.HTTPError as exc:  # the server dies under it
                sync_answer["error"] = exc

        waiter = threading.Thread(target=sync_client)
        waiter.start()
        deadline = time.monotonic() + 120
        # A synchronous job with a key is written once it is older than a moment (DEFER_START_SECONDS;
        # a younger one the crash loses, and its retry runs it): this one is, when the crash comes.
        while not recorded(data, "sync-before-the-crash"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while list(statuses(server.base_url, ids).values()).count("completed") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = statuses(server.base_url, ids)
        server.process.kill()  # SIGKILL: no shutdown code runs
        server.process.wait()
        waiter.join()
    assert "error" in sync_answer
    assert "queued" in before.values()  # the crash really left work behind
    with sqlite3.connect(data / "jobs.sqlite3") as db:  # what the crash left: to run again
        (interrupted,) = db.execute(
            "SELECT count(*) FROM limner_jobs WHERE status IN ('queued', 'in_progress')"
        ).fetchone()

    with start_server(data, "--config", str(config)) as again:
        deadline = time.monotonic() + 300
        while True:
            after = statuses(again.base_url, ids)
            if all(s in ("completed", "failed", "cancelled") for s in after.values()):
                break
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
        retry = httpx2.post(
            again.api_base + "/images/generations",
            json={**REQUEST, "seed": 1000},
            headers={"idempotency-key": "sync-before-the-crash"},
            timeout=300,
        )
        completed = list(after.values()).count("completed")
        # All at once at start-up: the killed server's lock on its runner file went with it, so its
        # leases need not expire first (only one was, while the others waited out their lease).
        assert f"resumed {interrupted} job(s)" in again.log()
        print(
            f"\nkill -9: {JOBS} jobs accepted, {completed} completed after the restart, {JOBS - completed} lost"
        )
        assert completed == JOBS
        assert retry.status_code == 200 and len(retry.json()["data"]) == 1
        # Each interrupted job ran once more, the synchronous one included: its retry was answered from
        # that job, not run a second time.
        assert again.jobs()[0] == interrupted
