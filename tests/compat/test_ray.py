"""`limner serve --ray`: two replicas on a local Ray instance, behind Ray Serve's proxy, sharing real
services started by the test (PostgreSQL for keys, moto's S3-compatible server for images), with the
sketch engine and a tiny diffusers model.

Skipped, with the reason, where Ray, PostgreSQL or moto is absent; `.ci/run` installs them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.support.postgres import binaries, throwaway_cluster
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers


@pytest.fixture(scope="module")
def ray_server(
    tiny_text2image_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    pytest.importorskip("ray.serve", reason="pip install -e '.[ray]'")
    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    import boto3

    s3 = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    endpoint = f"http://127.0.0.1:{s3._server.server_port}"
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client("s3", endpoint_url=endpoint, **_boto(aws)).create_bucket(Bucket="replicas")
    root = tmp_path_factory.mktemp("ray")
    with throwaway_cluster() as keys_url:
        config = root / "limner.toml"
        config.write_text(
            f'keys_url = "{keys_url}"\nsketch_concurrency = 1\n'
            # Each replica's budget holds one tiny model (about 8.2 MB), not both.
            'memory_budget = "12MB"\n'
            f'[storage]\nkind = "s3"\nbucket = "replicas"\nendpoint_url = "{endpoint}"\n'
            f'[models.tiny]\nengine = "diffusers"\nsource = "{tiny_text2image_dir}"\ndevice = "cpu"\n'
            "prompt_cache_mb = 0\n"
            f'[models.tiny2]\nengine = "diffusers"\nsource = "{tiny_text2image_dir}"\ndevice = "cpu"\n'
            "prompt_cache_mb = 0\n"
        )
        env = {**aws, "LIMNER_SECRET": "r" * 40, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        args = ("--config", str(config), "--ray", "--replicas", "2", "--cpus-per-replica", "0.5")
        try:
            with start_server(root / "data", *args, env=env, timeout=900) as server:
                server.keys_url = keys_url  # type: ignore[attr-defined]
                wait_for_replicas(server, 2)
                yield server
        finally:
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
            s3.stop()


def _boto(aws: dict[str, str]) -> dict[str, Any]:
    return {
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


def replicas_seen(
    server: RunningServer, tries: int = 40, *, lenient: bool = False, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """/health of each replica the proxy sent us to, by replica id. `lenient`: a request the proxy
    drops or refuses (while a replica is replaced) is one try, not a failure."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        try:
            response = httpx2.get(server.base_url + "/health", timeout=30, **kwargs)
        except httpx2.HTTPError:
            if lenient:
                continue
            raise
        if lenient and response.status_code != 200:
            continue
        body = response.json()
        seen[body["replica"]] = body
    return seen


def wait_for_replicas(server: RunningServer, count: int) -> None:
    """Until `count` replicas answer (Ray may still be replacing one: its proxy's errors are waited out)."""
    deadline = time.monotonic() + 300
    while len(replicas_seen(server, 20, lenient=True)) < count:
        assert time.monotonic() < deadline, "the replicas never all answered"
        time.sleep(0.5)


def test_requests_spread_and_links_work_through_any_replica(ray_server: RunningServer) -> None:
    made_by: dict[str, str] = {}
    for _ in range(12):
        response = httpx2.post(
            ray_server.api_base + "/images/generations",
            json={"model": "dall-e-2", "prompt": "a sun", "size": "256x256"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        made_by[response.json()["data"][0]["url"]] = response.headers["x-limner-replica"]
    assert len(set(made_by.values())) == 2  # both replicas answered
    crossed = 0
    for url, maker in made_by.items():
        for _ in range(10):
            served = httpx2.get(url, timeout=60)
            assert served.status_code == 200
            if served.headers["x-limner-replica"] != maker:
                crossed += 1
                break
    assert crossed > 0  # a link made by one replica downloaded through the other
    health = next(iter(replicas_seen(ray_server, 1).values()))
    assert health["services"]["images"] == {"kind": "s3", "ok": True}
    assert health["services"]["keys"] == {"kind": "postgresql", "ok": True}


def test_a_stream_and_the_tiny_model_through_the_proxy(ray_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=ray_server.api_base, api_key="x", max_retries=0, timeout=300)
    events = client.images.generate(
        model="gpt-image-1", prompt="x", quality="low", stream=True, partial_images=2
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    tiny = client.images.generate(
        model="tiny", prompt="x", size="64x64", extra_body={"num_inference_steps": 2}
    )
    assert tiny.data[0].b64_json
    for model in ("tiny2", "tiny", "tiny2"):  # each replica's budget holds one: they take turns
        made = client.images.generate(
            model=model, prompt="x", size="64x64", extra_body={"num_inference_steps": 2}
        )
        assert made.data[0].b64_json
    for health in replicas_seen(ray_server, 10).values():
        assert health["residency"]["budgets"]["cpu"]["budget"] == 12_000_000
        states = {m: health["residency"]["models"][m]["state"] for m in ("tiny", "tiny2")}
        assert "unloaded" in states.values(), states
    with pytest.raises(openai.BadRequestError) as info:  # the OpenAI envelope, not Ray's error page
        client.images.generate(model="dall-e-3", prompt="x", size="256x256")
    assert info.value.param == "size"


def test_a_client_that_leaves_cancels_its_job_on_the_replica(ray_server: RunningServer) -> None:
    impatient = openai.OpenAI(base_url=ray_server.api_base, api_key="x", max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(
            model="gpt-image-2", prompt="a city", n=10, quality="high", size="3840x2160"
        )
    deadline = time.monotonic() + 120
    while True:
        replicas = replicas_seen(ray_server, 20)
        cancelled = sum(sum(j["cancelled"] for j in r["jobs"].values()) for r in replicas.values())
        pending = sum(sum(r["queues"].values()) for r in replicas.values())
        if cancelled >= 1 and pending == 0:
            break
        assert time.monotonic() < deadline, replicas
        time.sleep(0.2)


def test_a_key_made_once_works_on_every_replica_and_a_revoked_one_nowhere(ray_server: RunningServer) -> None:
    def keys(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "limner", "keys", *args, "--keys-url", ray_server.keys_url],  # type: ignore[attr-defined]
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout

    secret = keys("create", "--name", "ray").strip().splitlines()[-1]
    key_id = keys("list").split()[0]
    try:
        auth = {"authorization": f"Bearer {secret}"}
        answers = [httpx2.get(ray_server.api_base + "/models", headers=auth, timeout=30) for _ in range(16)]
        assert {a.status_code for a in answers} == {200}
        assert len({a.headers["x-limner-replica"] for a in answers}) == 2
        keys("revoke", key_id)
        deadline = time.monotonic() + 60
        while True:  # the revocation reaches every replica within its key cache's second
            answers = [
                httpx2.get(ray_server.api_base + "/models", headers=auth, timeout=30) for _ in range(16)
            ]
            if {a.status_code for a in answers} == {401} and len(
                {a.headers["x-limner-replica"] for a in answers}
            ) == 2:
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
    finally:
        # The servers are closed now (a key was created): open them again for the other tests.
        import psycopg

        with psycopg.connect(ray_server.keys_url, autocommit=True) as db:  # type: ignore[attr-defined]
            db.execute("DELETE FROM limner_meta")
            db.execute("DELETE FROM limner_keys")


def test_killing_one_replica_leaves_the_application_answering(ray_server: RunningServer) -> None:
    time.sleep(1.5)  # any key cache from the previous test has expired
    victim = next(iter(replicas_seen(ray_server, 10).values()))
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 180
    streak = 0
    while streak < 10:  # ten answers in a row: the application kept (or got back to) serving
        try:
            response = httpx2.post(
                ray_server.api_base + "/images/generations",
                json={"model": "gpt-image-1", "prompt": "x", "quality": "low"},
                timeout=60,
            )
            streak = streak + 1 if response.status_code == 200 else 0
        except httpx2.HTTPError:
            streak = 0
        assert time.monotonic() < deadline, "the application stopped answering"
    wait_for_replicas(ray_server, 2)  # and Ray brought the lost replica back


def test_the_serve_yaml_example_builds_the_application(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve", reason="pip install -e '.[ray]'")
    import yaml

    from limner.ray_app import RayOptions, build_app

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "serve.yaml").read_text())
    (entry,) = spec["applications"]
    assert entry["import_path"] == "limner.ray_app:build_app"
    config = tmp_path / "limner.toml"
    config.write_text('[models.house]\nengine = "sketch"\nmax_queue = 5\n')
    app = build_app({**entry["args"], "config": str(config)})
    assert type(app).__name__ == "Application"
    options = RayOptions(**{k: v for k, v in entry["args"].items() if k != "config"}).deployment_options()
    assert options["num_replicas"] == 2 and options["max_queued_requests"] == -1  # never Ray's 503
    assert options["ray_actor_options"]["num_gpus"] == 1
