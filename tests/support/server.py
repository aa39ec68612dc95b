"""Start a real `limner serve` on 127.0.0.1 in a subprocess, for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api_base(self) -> str:
        """What an OpenAI client takes as base_url."""
        return self.base_url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_line(self, *parts: str, timeout: float = 60.0) -> str:
        """The last log line that holds every one of `parts`, waited for: an access record is written
        once the answer has gone, so a client can read the log before it is there."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log().splitlines() if all(part in line for part in parts)]
            if lines:
                return lines[-1]
            assert time.monotonic() < deadline, f"no log line with {parts}:\n{self.log()}"
            time.sleep(0.02)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx2.get(self.base_url + "/health", timeout=30).json()
        return body

    def pending(self) -> int:
        """Jobs running or waiting, over every engine."""
        return sum(self.health()["queues"].values())

    def jobs(self) -> tuple[int, int]:
        """(jobs done, jobs cancelled) over every engine: tests count work instead of timing it."""
        jobs = self.health()["jobs"].values()
        return sum(j["done"] for j in jobs), sum(j["cancelled"] for j in jobs)

    def leave_a_long_stream(self, start: Callable[[dict[str, Any]], Any]) -> None:
        """Start a 150-step stream of 4 images (`start` gets the fields to send), read its first
        partial image, leave, and check that the job was interrupted: cancelled, never done."""
        self.wait_idle()
        done, cancelled = self.jobs()
        stream = start(
            {"stream": True, "partial_images": 3, "n": 4, "extra_body": {"num_inference_steps": 150}}
        )
        assert next(iter(stream)).type.endswith(".partial_image")
        stream.close()
        self.wait_idle()
        assert self.jobs() == (done, cancelled + 1)  # interrupted, not run to its 150th step

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Until no job runs or waits; a generous deadline, since a loaded machine is slow."""
        deadline = time.monotonic() + timeout
        while self.pending():
            assert time.monotonic() < deadline, "the work never stopped"
            time.sleep(0.05)


@contextlib.contextmanager
def start_server(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """Run `python -m limner serve` with `args`, wait for GET /health, stop it afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd: Sequence[str] = [
        sys.executable,
        "-m",
        "limner",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *args,
    ]
    log_path = data_dir / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = RunningServer(f"http://127.0.0.1:{port}", data_dir, proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"limner serve exited with {proc.returncode}:\n{server.log()}")
            try:
                # Generous: through a proxy on a busy machine (Ray Serve), /health can take seconds.
                if httpx2.get(server.base_url + "/health", timeout=10.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"limner serve did not become healthy:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
