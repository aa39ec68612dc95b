"""Durable jobs: SQLite in the data dir (the default) or PostgreSQL shared by replicas (`jobs_url`)."""

from __future__ import annotations

from pathlib import Path

from limner.stores.jobs.base import ENDED, BatchAborted, JobRecord, JobStore, KeyTaken, Lease
from limner.stores.jobs.sole import SoleUse
from limner.stores.jobs.sqlite import SqliteJobStore


def open_job_store(data_dir: Path, url: str | None = None) -> JobStore:
    """SQLite under the data dir (the default), or PostgreSQL when `url` (jobs_url) names one."""
    if url:
        from limner.stores.jobs.postgres import PostgresJobStore

        return PostgresJobStore(url)
    return SqliteJobStore(data_dir / "jobs.sqlite3")


__all__ = [
    "ENDED",
    "BatchAborted",
    "JobRecord",
    "JobStore",
    "KeyTaken",
    "Lease",
    "SoleUse",
    "SqliteJobStore",
    "open_job_store",
]
