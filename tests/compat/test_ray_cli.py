"""`limner serve --ray` as an operator sees it: limner's start-up block once the application answers,
none of Ray's INFO lines, one request id in limner's form, request heads bounded, and SIGTERM as a clean stop (exit 0, no
stack dump, nothing of Ray left running). Its own Ray instance, after test_ray.py's has stopped."""

from __future__ import annotations

import os
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


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_local_yaml_runs_as_written(tmp_path: Path) -> None:
    """deploy/serve.local.yaml with Ray's own `serve run`, its port and data dir moved into the test's
    (the only changes): limner answers on 127.0.0.1, and Ctrl-C stops it."""
    pytest.importorskip("ray.serve", reason="pip install -e '.[ray]'")
    import socket

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "serve.local.yaml").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec["http_options"]["port"] = port
    spec["applications"][0]["args"]["data_dir"] = str(tmp_path / "data")
    local = tmp_path / "serve.local.yaml"
    local.write_text(yaml.safe_dump(spec))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "limner.ray_app:proxy_middlewares"}
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(
        [str(bin_dir / "serve"), "run", str(local)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Ctrl-C as a terminal delivers it: a child inherits an ignored SIGINT and Python then keeps
        # ignoring it, and by this test the suite's own process can have it ignored (the full run did).
        preexec_fn=_default_sigint,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx2.get(base + "/health", timeout=10).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve run did not come up"
            time.sleep(0.5)
        made = httpx2.post(
            base + "/v1/images/generations",
            json={
                "model": "dall-e-2",
                "prompt": "a lighthouse",
                "size": "256x256",
                "response_format": "b64_json",
            },
            timeout=120,
        )
        assert made.status_code == 200 and made.json()["data"][0]["b64_json"]
        assert made.headers["x-request-id"].startswith("req_")  # the callback reached Ray's proxy
        assert (tmp_path / "data").is_dir()
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run([str(bin_dir / "ray"), "stop", "--force"], capture_output=True)
