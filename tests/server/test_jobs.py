"""Jobs that are never lost: Idempotency-Key, asynchronous jobs and their API, callbacks.

Most tests run the app in process with tests/support/engines.GateEngine (each engine run waits until
the test lets it through); the ones that need the real thing use `limner serve` and the `openai`
package. The restart test is in tests/compat/test_jobs_restart.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from limner.server.settings import Settings
from limner.stores.jobs import SqliteJobStore
from limner.stores.keys import SqliteKeyStore
from limner.types import ImageJobList
from tests.support.engines import GateEngine
from tests.support.images import gradient, png_bytes
from tests.support.inprocess import app_client
from tests.support.server import RunningServer

GENERATIONS = "/v1/images/generations"
ASYNC = {"prefer": "respond-async"}


def body(seed: int, **fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "prompt": "x",
        "size": "64x64",
        "seed": seed,
        "response_format": "b64_json",
        **fields,
    }


async def until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


async def job(client: httpx2.AsyncClient, job_id: str, **kwargs: Any) -> dict[str, Any]:
    response = await client.get(f"/v1/images/jobs/{job_id}", **kwargs)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_status(client: httpx2.AsyncClient, job_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (current := await job(client, job_id))["status"] != status:
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.01)
    return current


# -- Idempotency-Key ---------------------------------------------------------------------------------


def test_a_retry_after_a_client_timeout_gets_the_same_bytes_and_runs_once(server: RunningServer) -> None:
    """Through `limner serve` and the openai package: the first try times out, the retry attaches."""
    server.wait_idle()
    done, _ = server.jobs()
    key = {"Idempotency-Key": f"retry-{time.time_ns()}"}
    request = dict(model="gpt-image-2", prompt="a detailed city", n=4, quality="high", size="3840x2160")
    impatient = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(extra_headers=key, **request)  # type: ignore[call-overload]
    patient = openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=600)
    first = patient.images.generate(extra_headers=key, **request)  # type: ignore[call-overload]
    again = patient.images.generate(extra_headers=key, **request)  # type: ignore[call-overload]
    assert [d.b64_json for d in again.data] == [d.b64_json for d in first.data]
    server.wait_idle()
    assert server.jobs()[0] == done + 1  # the engine ran once for three requests


async def test_concurrent_duplicates_attach_to_one_job(tmp_path: Path) -> None:
    engine = GateEngine()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        headers = {"idempotency-key": "same"}
        tasks = [
            asyncio.ensure_future(client.post(GENERATIONS, json=body(5), headers=headers)) for _ in range(3)
        ]
        await engine.began(1)
        engine.open()
        answers = await asyncio.gather(*tasks)
        assert {r.status_code for r in answers} == {200}
        assert len({r.json()["data"][0]["b64_json"] for r in answers}) == 1
        assert engine.runs == [[5]]


@pytest.mark.parametrize("when", ["queued", "running"])
async def test_a_job_with_a_key_goes_on_where_it_was_when_its_handler_is_cancelled(
    tmp_path: Path, when: str
) -> None:
    """The handler that drives a synchronous job with a key is cancelled (a proxy that cancels the
    request of a client that left, as Ray Serve does; in process, cancelling the request does): the job
    goes on where it was, runs once and is counted once, and the retry gets its answer."""
    engine = GateEngine(batches=False)
    headers = {"idempotency-key": "left"}
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        manager = client.app.state.jobs
        if when == "queued":
            blocker = asyncio.ensure_future(client.post(GENERATIONS, json=body(100)))
            await engine.began(1)
        first = asyncio.ensure_future(client.post(GENERATIONS, json=body(7), headers=headers))
        if when == "running":
            await engine.began(1)
        else:
            await until(lambda: len(manager.live) == 1)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        engine.open()
        retry = await client.post(GENERATIONS, json=body(7), headers=headers)
        assert retry.status_code == 200 and retry.json()["data"]
        if when == "queued":
            await blocker
        await until(lambda: not manager.live)
    assert [run[0] for run in engine.runs] == ([100, 7] if when == "queued" else [7])
    stored = SqliteJobStore(tmp_path / "jobs.sqlite3").by_idempotency_key("-", "left")
    assert stored is not None and stored.status == "completed" and stored.attempts == 1


async def test_a_reused_key_with_another_body_is_a_400(tmp_path: Path) -> None:
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        headers = {"idempotency-key": "k1"}
        assert (await client.post(GENERATIONS, json=body(1), headers=headers)).status_code == 200
        other = await client.post(GENERATIONS, json=body(2), headers=headers)
        assert other.status_code == 400
        assert other.json()["error"]["param"] == "Idempotency-Key"
        # The same body in another key order is the same request.
        same = await client.post(GENERATIONS, json=dict(reversed(list(body(1).items()))), headers=headers)
        assert same.status_code == 200 and len(engine.runs) == 1


async def test_a_multipart_retry_with_another_boundary_is_the_same_request(tmp_path: Path) -> None:
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        image = png_bytes(gradient(64, 64))
        answers = []
        for boundary in ("aaaa1111", "bbbb2222"):
            parts = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
            parts += f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
            content = (
                parts.encode()
                + (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                    "Content-Type: image/png\r\n\r\n"
                ).encode()
                + image
                + f"\r\n--{boundary}--\r\n".encode()
            )
            answers.append(
                await client.post(
                    "/v1/images/edits",
                    content=content,
                    headers={
                        "content-type": f"multipart/form-data; boundary={boundary}",
                        "idempotency-key": "e1",
                    },
                )
            )
        assert [a.status_code for a in answers] == [200, 200]
        assert len(engine.runs) == 1


async def test_an_idempotent_stream_replays_its_final_events(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path)) as client:
        request = {
            "model": "gpt-image-1",
            "prompt": "x",
            "quality": "low",
            "stream": True,
            "n": 2,
            "partial_images": 1,
            "seed": 4,
        }
        headers = {"idempotency-key": "stream-1"}
        first = await client.post(GENERATIONS, json=request, headers=headers)
        again = await client.post(GENERATIONS, json=request, headers=headers)
        events = [line for line in first.text.splitlines() if line.startswith("event: ")]
        assert events == [
            "event: image_generation.partial_image",
            "event: image_generation.completed",
            "event: image_generation.partial_image",
            "event: image_generation.completed",
        ]
        completed = [chunk for chunk in first.text.split("\n\n") if "completed" in chunk.split("\n")[0]]
        assert again.text.strip() == "\n\n".join(completed).strip()
        # As a job, the stream's answer is an ImagesResponse like any other.
        listing = ImageJobList.model_validate((await client.get("/v1/images/jobs")).json())
        (result,) = [j.result for j in listing.data]
        assert result is not None and len(result.data) == 2 and result.data[0].b64_json


# -- asynchronous jobs -------------------------------------------------------------------------------


async def test_an_async_job_goes_queued_in_progress_completed(tmp_path: Path) -> None:
    engine = GateEngine(batches=False)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = asyncio.ensure_future(client.post(GENERATIONS, json=body(100)))
        await engine.began(1)
        accepted = await client.post(GENERATIONS, json=body(7), headers=ASYNC)
        assert accepted.status_code == 202
        created = accepted.json()
        assert accepted.headers["location"] == f"/v1/images/jobs/{created['id']}"
        assert (created["object"], created["status"], created["model"], created["operation"]) == (
            "image.job",
            "queued",
            "m",
            "generate",
        )
        assert (await job(client, created["id"]))["queue_position"] == 0
        engine.let_through()  # the blocker ends; our job starts and waits at the gate
        running = await wait_status(client, created["id"], "in_progress")
        assert "result" not in running
        engine.open()
        finished = await wait_status(client, created["id"], "completed")
        await blocker
        sync = await client.post(GENERATIONS, json=body(7))
        assert finished["result"]["data"] == sync.json()["data"]  # what the synchronous call answers


async def test_async_results_equal_the_synchronous_answer_on_the_real_engine(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path)) as client:
        request = {"model": "gpt-image-1", "prompt": "a red sun", "quality": "low", "seed": 99, "n": 2}
        accepted = await client.post(GENERATIONS, json=request, headers=ASYNC)
        finished = await wait_status(client, accepted.json()["id"], "completed")
        sync = (await client.post(GENERATIONS, json=request)).json()
        assert [d["b64_json"] for d in finished["result"]["data"]] == [d["b64_json"] for d in sync["data"]]
        assert finished["result"]["usage"] == sync["usage"]
        listing = (await client.get("/v1/images/jobs")).json()
        assert listing["object"] == "list" and listing["data"][0]["id"] == accepted.json()["id"]


async def test_events_can_be_left_and_rejoined(tmp_path: Path) -> None:
    engine = GateEngine(batches=False)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        job_id = (await client.post(GENERATIONS, json=body(3), headers=ASYNC)).json()["id"]
        # In process the transport hands over a body only when it is whole, so the client leaves by
        # cancelling its request while the job is still queued (the stream stays open until then).
        first = asyncio.ensure_future(client.get(f"/v1/images/jobs/{job_id}/events"))
        await asyncio.sleep(0.5)
        assert not first.done()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        engine.open()
        await wait_status(client, job_id, "completed")
        again = await client.get(f"/v1/images/jobs/{job_id}/events")
        events = [line for line in again.text.splitlines() if line.startswith("event: ")]
        assert events == [
            "event: image_job.status",
            "event: image_generation.completed",
            "event: image_job.completed",
        ]


@pytest.mark.parametrize("when", ["queued", "running"])
async def test_cancel_while_queued_or_running(tmp_path: Path, when: str) -> None:
    engine = GateEngine(batches=False)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        blocker = asyncio.ensure_future(client.post(GENERATIONS, json=body(100)))
        await engine.began(1)
        job_id = (await client.post(GENERATIONS, json=body(1), headers=ASYNC)).json()["id"]
        if when == "running":
            engine.let_through()
            await wait_status(client, job_id, "in_progress")
        cancelled = await client.delete(f"/v1/images/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert (await job(client, job_id))["status"] == "cancelled"
        engine.open()
        await blocker
        assert [run[0] for run in engine.runs] == ([100] if when == "queued" else [100, 1])


async def test_another_key_gets_404(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    (_, alice), (_, bob) = store.create("alice"), store.create("bob")
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        as_alice = {"authorization": f"Bearer {alice}"}
        job_id = (await client.post(GENERATIONS, json=body(1), headers={**ASYNC, **as_alice})).json()["id"]
        as_bob = {"authorization": f"Bearer {bob}"}
        for method, path in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
            response = await client.request(method, f"/v1/images/jobs/{job_id}{path}", headers=as_bob)
            assert response.status_code == 404, (method, path)
        assert (await client.get("/v1/images/jobs", headers=as_bob)).json()["data"] == []
        assert (await job(client, job_id, headers=as_alice))["id"] == job_id


async def test_a_callback_arrives_signed(tmp_path: Path) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            received.append((dict(self.headers), self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/hooks/limner"
    settings = Settings(
        data_dir=tmp_path,
        callback_allow=[f"http://127.0.0.1:{receiver.server_port}/hooks/"],
        callback_allow_private=True,  # the receiver is on this machine
        callback_secret="c" * 32,
    )
    engine = GateEngine()
    engine.open()
    try:
        async with app_client(settings, engines={"m": engine}) as client:
            refused = await client.post(
                GENERATIONS,
                json=body(1),
                headers={**ASYNC, "x-limner-callback-url": "http://169.254.169.254/"},
            )
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "X-Limner-Callback-Url"
            job_id = (
                await client.post(GENERATIONS, json=body(1), headers={**ASYNC, "x-limner-callback-url": url})
            ).json()["id"]
            await until(lambda: received)
    finally:
        receiver.shutdown()
    headers, payload = received[0]
    stamp, signature = (part.split("=", 1)[1] for part in headers["X-Limner-Signature"].split(","))
    expected = hmac.new(b"c" * 32, stamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(signature, expected)
    sent = json.loads(payload)
    assert sent["id"] == job_id and sent["status"] == "completed" and sent["result"]["data"]


async def test_an_engine_failure_is_the_same_500_envelope_everywhere_and_hides_its_cause(
    tmp_path: Path,
) -> None:
    """A failure that is not one of limner's errors: the same server_error body for a plain request,
    in a stream's error event and in a failed job, with nothing of the exception in it."""
    engine = GateEngine(fail_with=RuntimeError("secret internals"))
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        # Starlette re-raises after answering; a server hides that from its client, so does this one.
        transport = httpx2.ASGITransport(app=client.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as server_side:
            plain = await server_side.post(GENERATIONS, json=body(1))
        assert plain.status_code == 500
        expected = plain.json()
        assert expected["error"]["type"] == "server_error" and expected["error"]["param"] is None
        assert "secret internals" not in plain.text

        streamed = await client.post(GENERATIONS, json=body(2, stream=True))
        event = [line for line in streamed.text.splitlines() if line.startswith("data:")][-1]
        assert json.loads(event.removeprefix("data:")) == expected

        accepted = await client.post(GENERATIONS, json=body(3), headers=ASYNC)
        failed = await wait_status(client, accepted.json()["id"], "failed")
        assert failed["error"] == expected["error"]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of each server-sent event of a body."""
    out = []
    for chunk in text.split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in chunk.splitlines() if ": " in line and not line.startswith(":")
        )
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def shape(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload with what differs between two readings of one event (ids, times) taken out."""
    return {k: v for k, v in payload.items() if k not in ("created_at", "created", "id")}


async def test_one_event_name_has_one_shape_in_a_stream_its_events_and_its_result(tmp_path: Path) -> None:
    """The same job read three ways: the stream as it ran, /events after it ended, and GET."""
    async with app_client(Settings(data_dir=tmp_path)) as client:
        request = {
            "model": "gpt-image-1",
            "prompt": "a cat",
            "quality": "low",
            "stream": True,
            "n": 2,
            "seed": 8,
        }
        streamed = await client.post(GENERATIONS, json=request, headers={"idempotency-key": "shape-1"})
        job_id = (await client.get("/v1/images/jobs")).json()["data"][0]["id"]
        replayed = await client.get(f"/v1/images/jobs/{job_id}/events")
        got = await job(client, job_id)
    live = [(name, shape(p)) for name, p in sse_events(streamed.text) if name.endswith(".completed")]
    later = [(name, shape(p)) for name, p in sse_events(replayed.text) if name.endswith(".completed")]
    assert [name for name, _ in live] == ["image_generation.completed"] * 2
    assert later[:2] == live  # same names, same fields, same images
    fields = set(live[0][1])
    assert fields == {"type", "b64_json", "size", "quality", "background", "output_format", "usage"}
    assert [d["b64_json"] for d in got["result"]["data"]] == [p["b64_json"] for _, p in live]


async def test_an_async_jobs_events_have_the_streams_shape_while_it_runs(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path)) as client:
        request = {"model": "gpt-image-1", "prompt": "a cat", "quality": "low", "n": 1, "seed": 9}
        job_id = (
            await client.post(GENERATIONS, json={**request, "partial_images": 1}, headers=ASYNC)
        ).json()["id"]
        following = await client.get(f"/v1/images/jobs/{job_id}/events")
        streamed = await client.post(GENERATIONS, json={**request, "stream": True})
    completed = [shape(p) for name, p in sse_events(following.text) if name == "image_generation.completed"]
    in_stream = [shape(p) for name, p in sse_events(streamed.text) if name == "image_generation.completed"]
    assert len(completed) == 1 and set(completed[0]) == set(in_stream[0])
    assert completed[0]["b64_json"] == in_stream[0]["b64_json"]


async def test_events_stay_open_through_a_long_silence(tmp_path: Path) -> None:
    """A queued job may wait long without an event: /events keeps the stream open (keep-alive
    comments) and delivers the job's end once it comes."""
    engine = GateEngine(batches=False)
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        job_id = (await client.post(GENERATIONS, json=body(3), headers=ASYNC)).json()["id"]
        following = asyncio.ensure_future(client.get(f"/v1/images/jobs/{job_id}/events"))
        await asyncio.sleep(2.0)  # four times the old 0.5 s cut-off, with no event at all
        assert not following.done()
        engine.open()
        answer = await following
    names = [name for name, _ in sse_events(answer.text)]
    assert "image_generation.completed" in names and names[-1] == "image_job.completed"


# -- callbacks: where they may go -------------------------------------------------------------------


def callback_receiver() -> tuple[HTTPServer, list[tuple[dict[str, str], bytes]]]:
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((dict(self.headers), self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com@evil.test/limner",  # userinfo: the host is evil.test
        "https://hooks.example.com.evil.test/limner",  # a longer host with the allowed one as prefix
        "https://hooks.example.com\\@evil.test/limner",  # backslash forms
        "https://hooks.example.com/limner/../admin",  # a path that escapes the allowed one
        "https://hooks.example.com/limner/%2e%2e/admin",  # the same, percent-encoded
        "https://hooks.example.com/limnerx",  # not under /limner by whole segments
        "https://hooks.example.com:8443/limner",  # another port
        "http://hooks.example.com/limner",  # another scheme
        "https://hooks.example.com:99999/limner",  # a malformed port
        "not a url",
    ],
)
async def test_a_callback_url_must_be_an_allowed_receiver_exactly(tmp_path: Path, url: str) -> None:
    settings = Settings(data_dir=tmp_path, callback_allow=["https://hooks.example.com/limner"])
    async with app_client(settings, engines={"m": GateEngine()}) as client:
        refused = await client.post(
            GENERATIONS, json=body(1), headers={**ASYNC, "x-limner-callback-url": url}
        )
        assert refused.status_code == 400, url
        assert refused.json()["error"]["param"] == "X-Limner-Callback-Url"
        assert (await client.get("/v1/images/jobs")).json()["data"] == []  # nothing was accepted


def test_allowed_callback_urls_match_by_segments() -> None:
    from limner.server.serving.callbacks import checked_callback, parse_allow_list

    allowed = parse_allow_list(["https://Hooks.Example.com/limner"])
    assert checked_callback("https://hooks.example.com/limner", allowed) == "https://hooks.example.com/limner"
    assert checked_callback("https://hooks.example.com:443/limner/a/./b?x=1", allowed) == (
        "https://hooks.example.com/limner/a/b?x=1"
    )
    with pytest.raises(ValueError, match="callback_allow entry"):
        parse_allow_list(["ftp://x"])


async def test_a_callback_to_a_private_address_is_not_sent_unless_allowed(tmp_path: Path) -> None:
    """Loopback is what a blind SSRF aims at: the allow list names it, yet without
    callback_allow_private the callback is refused when it would connect."""
    receiver, received = callback_receiver()
    url = f"http://127.0.0.1:{receiver.server_port}/hooks/limner"
    engine = GateEngine()
    engine.open()
    try:
        settings = Settings(data_dir=tmp_path / "a", callback_allow=[url])
        async with app_client(settings, engines={"m": engine}) as client:
            job_id = (
                await client.post(GENERATIONS, json=body(1), headers={**ASYNC, "x-limner-callback-url": url})
            ).json()["id"]
            await wait_status(client, job_id, "completed")
            await asyncio.sleep(0.5)  # time for a callback that should not come
        assert received == []
        allowed = Settings(data_dir=tmp_path / "b", callback_allow=[url], callback_allow_private=True)
        async with app_client(allowed, engines={"m": engine}) as client:
            await client.post(GENERATIONS, json=body(2), headers={**ASYNC, "x-limner-callback-url": url})
            await until(lambda: received)
    finally:
        receiver.shutdown()
    # Signed with the callback secret made for the data dir, never the link-signing secret.
    headers, payload = received[0]
    stamp, signature = (part.split("=", 1)[1] for part in headers["X-Limner-Signature"].split(","))
    for name, matches in (("callback.key", True), ("secret.key", False)):
        key = (tmp_path / "b" / name).read_bytes()
        expected = hmac.new(key, stamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature, expected) is matches


async def test_a_server_error_is_not_replayed_for_its_idempotency_key(tmp_path: Path) -> None:
    """A 5xx is no final answer: the retry with the same key runs again (a 4xx would be replayed)."""
    from limner.errors import EngineUnavailable

    engine = GateEngine(fail_with=EngineUnavailable("The model is down for a moment."))
    engine.open()
    headers = {"idempotency-key": "retry-after-5xx"}
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        first = await client.post(GENERATIONS, json=body(1), headers=headers)
        assert first.status_code == 503
        engine.fail_with = None  # the engine is back
        second = await client.post(GENERATIONS, json=body(1), headers=headers)
        assert second.status_code == 200 and second.json()["data"]
        third = await client.post(GENERATIONS, json=body(1), headers=headers)
        assert third.json() == second.json()  # a success is final: replayed, not run again
        listing = (await client.get("/v1/images/jobs")).json()["data"]
    assert len(engine.runs) == 2
    assert sorted(j["status"] for j in listing) == ["completed", "failed"]  # the failure is still readable


async def test_the_key_lock_table_forgets_keys_with_nothing_in_flight(tmp_path: Path) -> None:
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        manager = client.app.state.jobs  # type: ignore[attr-defined]
        for index in range(30):  # refused requests, each with its own key
            bad = await client.post(
                GENERATIONS, json=body(1, n=0), headers={"idempotency-key": f"bad-{index}"}
            )
            assert bad.status_code == 400
        for _ in range(3):  # a success and its replays
            assert (
                await client.post(GENERATIONS, json=body(2), headers={"idempotency-key": "ok"})
            ).status_code == 200
        assert len(manager._claims) == 0


def test_the_fingerprint_takes_the_route_and_ignores_explicit_defaults() -> None:
    from limner.server.serving.fingerprints import fingerprint

    plain = json.dumps({"prompt": "x", "model": "m"}).encode()
    spelled = json.dumps({"prompt": "x", "model": "m", "n": 1, "quality": "auto", "user": None}).encode()
    kind = "application/json"
    assert fingerprint("/v1/images/generations", kind, plain) == fingerprint(
        "/v1/images/generations", kind, spelled
    )
    assert fingerprint("/v1/images/generations", kind, plain) != fingerprint("/v1/images/edits", kind, plain)
    url = json.dumps({"prompt": "x", "model": "m", "response_format": "url"}).encode()
    assert fingerprint("/v1/images/generations", kind, plain) != fingerprint(
        "/v1/images/generations", kind, url
    )


async def test_a_generations_key_on_an_edit_is_a_400_not_its_replay(tmp_path: Path) -> None:
    engine = GateEngine()
    engine.open()
    headers = {"idempotency-key": "cross-route"}
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        assert (await client.post(GENERATIONS, json=body(1), headers=headers)).status_code == 200
        again = await client.post(
            GENERATIONS, json={**body(1), "n": 1}, headers=headers
        )  # the default, spelled
        assert again.status_code == 200 and len(engine.runs) == 1
        edit = await client.post(
            "/v1/images/edits",
            data={"model": "m", "prompt": "x", "size": "64x64"},
            files={"image": ("a.png", png_bytes(gradient(64, 64)))},
            headers=headers,
        )
        assert edit.status_code == 400 and edit.json()["error"]["param"] == "Idempotency-Key"


async def test_a_job_that_keeps_taking_the_server_down_is_failed_not_run_forever(tmp_path: Path) -> None:
    """A job found running at start-up max_job_attempts times (it took the server down each time, say
    out of memory) is failed with a reason instead of being started again; one found queued is run."""
    from limner.stores.jobs import SqliteJobStore
    from tests.stores.test_job_stores import record

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.insert(record("crashing", owner="-", mode="async"))
    store.update("crashing", status="in_progress", attempts=3)
    queued = record("waiting", owner="-", mode="async")
    store.insert(queued)
    engine = GateEngine()
    engine.open()
    settings = Settings(data_dir=tmp_path, max_job_attempts=3)
    async with app_client(settings, engines={"gpt-image-1": engine}) as client:
        failed = await job(client, "crashing")
        assert failed["status"] == "failed" and failed["error"]["code"] == "job_attempts_exceeded"
        assert "started 3 times" in failed["error"]["message"]
        assert (await wait_status(client, "waiting", "completed"))["status"] == "completed"
    assert store.get("waiting").attempts == 1  # type: ignore[union-attr]


async def test_a_synchronous_answer_is_kept_for_retries_and_a_result_for_its_links(tmp_path: Path) -> None:
    """Before, every idempotent answer was kept for the url TTL (about 12 GB an hour for one busy client
    at n=4, 1024x1024); a synchronous answer is now kept for idempotency_ttl_seconds."""
    engine = GateEngine()
    engine.open()
    settings = Settings(data_dir=tmp_path, url_ttl_seconds=3600, idempotency_ttl_seconds=120)
    async with app_client(settings, engines={"m": engine}) as client:
        await client.post(GENERATIONS, json=body(1), headers={"idempotency-key": "sync-1"})
        accepted = (await client.post(GENERATIONS, json=body(2), headers=ASYNC)).json()
        await wait_status(client, accepted["id"], "completed")
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        await until(lambda: store.by_idempotency_key("-", "sync-1") is not None)  # written after its answer
        kept = {r.mode: r.expires_at - int(time.time()) for r in store.of_owner("-")}
    assert 100 <= kept["sync"] <= 120 and 3500 <= kept["async"] <= 3600, kept


async def test_paging_by_cursor_sees_every_job_made_in_one_second(tmp_path: Path) -> None:
    """Before: paging by `before` (whole seconds) showed 10 of 25 jobs made in one second."""
    engine = GateEngine()
    engine.open()
    async with app_client(Settings(data_dir=tmp_path), engines={"m": engine}) as client:
        made = [
            (await client.post(GENERATIONS, json=body(i), headers={"idempotency-key": f"p{i}"})).status_code
            for i in range(25)
        ]
        assert made == [200] * 25
        seen: list[str] = []
        after: str | None = None
        while True:
            query = f"?limit=10&after={after}" if after else "?limit=10"
            page = ImageJobList.model_validate((await client.get("/v1/images/jobs" + query)).json())
            seen += [j.id for j in page.data]
            if not page.has_more:
                break
            after = page.last_id
    assert len(seen) == len(set(seen)) == 25
