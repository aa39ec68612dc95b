"""`limner serve --ray` as an operator sees it: limner's start-up block once the application answers,
none of Ray's INFO lines, one request id in limner's form, request heads bounded, and SIGTERM as a clean stop (exit 0, no
stack dump, nothing of Ray left running). Its own Ray instance, after test_ray.py's has stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from tests.server.test_hostile_input import assert_big_heads_refused
from tests.support.server import start_server


def test_ray_serve_says_ready_keeps_request_ids_and_stops_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="pip install -e '.[ray]'")
    config = tmp_path / "limner.toml"
    config.write_text('sketch_concurrency = 1\n[models.house]\nengine = "sketch"\n')
    args = ("--config", str(config), "--ray", "--replicas", "1", "--cpus-per-replica", "0.5")
    try:
        with start_server(tmp_path / "data", *args, env={"OMP_NUM_THREADS": "1"}, timeout=900) as server:
            response = httpx2.get(server.api_base + "/models", timeout=60)
            assert response.status_code == 200
            assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]
            assert response.headers["x-request-id"].startswith("req_")
            # Ray's proxy bounds request heads as `limner serve` does (before: a 10 MB header got 200).
            assert_big_heads_refused(server.base_url, "/v1/models")
            port = server.base_url.rsplit(":", 1)[1]
            deadline = time.monotonic() + 60
            while "house" not in server.log():  # the block is logged once serve.run has returned
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=180) == 0
            log = server.log()
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    assert f"limner serving on http://127.0.0.1:{port} through Ray Serve (1 replica)" in log
    assert any(line.split()[-2:] == ["house", "sketch"] for line in log.splitlines())
    for noise in ("Started a local Ray instance", "will not be applied", "Token authentication is enabled"):
        assert noise not in log
    assert "SIGTERM received" not in log and "Traceback" not in log
    assert log.rstrip().endswith("limner serve: stopped")
