"""limner.client's jobs: the automatic Idempotency-Key, JobsApi against `limner serve`, and the CLI's
`generate --async` / `jobs wait`."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from limner.cli.main import app
from limner.client import (
    ApiClient,
    AsyncApiClient,
    AsyncJobsApi,
    BadRequestException,
    Configuration,
    ImagesApi,
    JobFailed,
    JobsApi,
)
from limner.errors import InvalidValue
from limner.server.settings import Settings
from tests.client.scripted_server import Reply, scripted
from tests.support.engines import GateEngine
from tests.support.inprocess import app_client
from tests.support.server import RunningServer


def test_one_idempotency_key_travels_with_every_retry() -> None:
    with scripted(Reply(503, {"retry-after-ms": "10"}, b"busy"), Reply()) as server:
        api = ImagesApi(ApiClient(Configuration(host=server.url, access_token="sk", max_retries=2)))
        api.create_image(prompt="a cat")
        api.create_image(prompt="a dog")
    keys = [r.headers["idempotency-key"] for r in server.received]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # the retry reuses it; a new call does not


def test_submit_wait_and_list(server: RunningServer) -> None:
    with ApiClient(Configuration(host=server.api_base, access_token=None)) as client:
        jobs = JobsApi(client)
        job = jobs.submit_image(prompt="a red sun", model="gpt-image-1", quality="low", seed=21)
        assert job.status in ("queued", "in_progress", "completed") and job.operation == "generate"
        done = jobs.wait(job.id, interval=0.05, timeout=120)
        sync = ImagesApi(client).create_image(prompt="a red sun", model="gpt-image-1", quality="low", seed=21)
        assert done.result is not None and done.result.data[0].b64_json == sync.data[0].b64_json
        assert job.id in {j.id for j in jobs.list(limit=50).data}
        other = jobs.submit_image(prompt="x", model="gpt-image-1", size="1024x1024", quality="low")
        assert jobs.cancel(other.id).status in ("cancelled", "completed")


async def test_async_jobs_api(server: RunningServer) -> None:
    async with AsyncApiClient(Configuration(host=server.api_base, access_token=None)) as client:
        jobs = AsyncJobsApi(client)
        job = await jobs.submit_image(prompt="a blue moon", model="gpt-image-1", quality="low", seed=3)
        done = await jobs.wait(job.id, interval=0.05, timeout=120)
        assert done.status == "completed" and done.result is not None


def test_a_request_refused_up_front_is_an_api_error_not_a_job(server: RunningServer) -> None:
    with ApiClient(Configuration(host=server.api_base, access_token=None)) as client:
        jobs = JobsApi(client)
        # Refused up front: a 400 for the submit itself, as for a synchronous request.
        with pytest.raises(BadRequestException) as info:
            jobs.submit_image(prompt="x", model="dall-e-3", size="256x256")
        assert info.value.param == "size"


async def test_waiting_for_a_job_that_failed_raises_its_error(tmp_path: Path) -> None:
    engine = GateEngine(fail_with=InvalidValue("The engine refused this one.", param="prompt"))
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as http:
        config = Configuration(host="http://testserver/v1", access_token=None)
        async with AsyncApiClient(config, http_client=http) as client:
            jobs = AsyncJobsApi(client)
            job = await jobs.submit_image(prompt="x", model="m", size="64x64")
            with pytest.raises(JobFailed) as info:
                await jobs.wait(job.id, interval=0.01, timeout=60)
            assert info.value.param == "prompt" and info.value.message == "The engine refused this one."
            assert (await jobs.retrieve(job.id)).status == "failed"


def test_cli_generate_async_then_jobs_wait(server: RunningServer, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--base-url", server.api_base]
    submitted = runner.invoke(
        app,
        [
            "generate",
            "a lighthouse",
            "--model",
            "gpt-image-1",
            "--quality",
            "low",
            "--seed",
            "5",
            "--async",
            *base,
        ],
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert job_id.startswith("imgjob_")
    waited = runner.invoke(app, ["jobs", "wait", job_id, "-o", str(tmp_path), *base])
    assert waited.exit_code == 0, waited.output
    (path,) = [Path(line) for line in waited.stdout.splitlines() if line.strip()]
    assert Image.open(path).size == (1024, 1024)
    listed = runner.invoke(app, ["jobs", "list", *base])
    assert job_id in listed.stdout and "completed" in listed.stdout


def test_jobs_list_shows_asynchronous_jobs_unless_asked_for_all(tmp_path: Path) -> None:
    from tests.support.server import start_server

    with start_server(tmp_path / "data") as fresh:
        base = ["--base-url", fresh.api_base]
        with ApiClient(Configuration(host=fresh.api_base, access_token=None)) as client:
            ImagesApi(client).create_image(prompt="one", size="256x256")  # sent with an Idempotency-Key
            ImagesApi(client).create_image(prompt="two", size="256x256")
            jobs = JobsApi(client)
            job = jobs.submit_image(prompt="three", size="256x256")
            jobs.wait(job.id, interval=0.05, timeout=120)
            assert [j.id for j in jobs.list(mode="async").data] == [job.id]
            everything = jobs.list().data
            assert len(everything) == 3 and {j.mode for j in everything} == {"async", "sync"}
            assert len(jobs.list(mode="sync").data) == 2
        runner = CliRunner()
        listed = runner.invoke(app, ["jobs", "list", *base])
        assert listed.exit_code == 0, listed.output
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [job.id]
        listed_all = runner.invoke(app, ["jobs", "list", "--all", *base])
        assert len(listed_all.stdout.splitlines()) == 3
