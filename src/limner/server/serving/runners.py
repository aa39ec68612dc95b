"""Who runs a job: each server process is a runner with an id, and holds an exclusive lock on a file
named for it in the data dir for as long as it lives.

Replicas that share a job store claim jobs with leases (durable.py): a job whose runner stopped renewing
is taken over once its lease expires. A runner on this machine needs no such wait: the kernel drops its
lock the moment it dies (kill -9 included), so a restart on the same data dir takes its jobs over at
once instead of waiting out the lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path


class RunnerLock:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.id = "run_" + secrets.token_hex(8)
        #: Runners found gone: their lock files are removed, and each of their jobs is still theirs.
        self._gone: set[str] = set()
        self._fd: int | None = os.open(self._path(self.id), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _path(self, runner: str) -> Path:
        return self.folder / f"{runner}.lock"

    def dead_here(self, runner: str) -> bool:
        """Whether `runner` ran on this data dir and is gone (its lock is free). A runner of another
        machine has no file here: only its lease tells."""
        if runner in self._gone:
            return True
        if not runner.startswith("run_") or not runner[4:].isalnum():
            return False  # never a path outside the folder
        path = self._path(runner)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # alive
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._gone.add(runner)
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(self.id).unlink()
            os.close(self._fd)
            self._fd = None
