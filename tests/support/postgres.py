"""A throw-away PostgreSQL cluster for tests: Debian's `postgresql` package, `initdb` and `pg_ctl` in a
temporary directory, listening on 127.0.0.1 only, trust authentication, removed afterwards.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres`
user the package creates (through runuser)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Each running cluster's data directory, by URL (a test that freezes the server reads its pid there).
DATA_DIRS: dict[str, Path] = {}


def postmaster_pid(url: str) -> int:
    """The pid of the cluster's server process (SIGSTOP on it freezes new connections)."""
    return int((DATA_DIRS[url] / "postmaster.pid").read_text().split()[0])


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster in a new temporary directory; yield its URL
    (postgresql://postgres@127.0.0.1:PORT/postgres); stop it and remove the directory afterwards."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    # Not under pytest's tmp_path: its folders are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="limner-pg-"))
    root.chmod(0o755)
    data = root / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_server_user(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
    subprocess.run(
        _as_server_user(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    DATA_DIRS[url] = data
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.1)
        yield url
    finally:
        DATA_DIRS.pop(url, None)
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A database of its own for one test, in a shared cluster (its URL)."""
    import time

    import psycopg

    name = f"t{time.time_ns()}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
