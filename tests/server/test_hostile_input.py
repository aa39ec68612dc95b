"""Client input never causes a 500, every error names the right param, and the log tells no lies."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from limner.server.banner import startup_warnings
from limner.server.settings import Settings
from tests.support.images import gradient, png_bytes
from tests.support.inprocess import app_client

GENERATIONS = "/v1/images/generations"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    async with app_client(Settings(data_dir=tmp_path)) as c:
        yield c


async def raw_json(client: httpx2.AsyncClient, text: str) -> httpx2.Response:
    return await client.post(GENERATIONS, content=text.encode(), headers={"content-type": "application/json"})


def assert_400(response: httpx2.Response, param: str | None) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("field", ["n", "seed", "output_compression", "guidance_scale"])
async def test_an_integer_of_5000_digits_names_its_field(client: httpx2.AsyncClient, field: str) -> None:
    response = await raw_json(client, f'{{"model": "gpt-image-1", "prompt": "x", "{field}": {"9" * 5000}}}')
    error = assert_400(response, field)
    assert len(error["message"]) < 300


async def test_json_nested_100000_deep_names_its_field(client: httpx2.AsyncClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert_400(await raw_json(client, f'{{"model": "gpt-image-1", "prompt": {deep}}}'), "prompt")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "model", "user"])
async def test_a_lone_surrogate_names_its_field(client: httpx2.AsyncClient, field: str) -> None:
    body = '{"prompt": "x", "' + field + '": "a \\ud800 b"}'
    if field == "prompt":
        body = '{"prompt": "a \\ud800 b"}'
    assert_400(await raw_json(client, body), field)


async def test_a_lone_surrogate_in_a_field_name(client: httpx2.AsyncClient) -> None:
    error = assert_400(await raw_json(client, '{"prompt": "x", "a\\udc00": 1}'), "a\\udc00")
    assert "not valid Unicode" in error["message"]


async def test_a_non_ascii_signature_is_a_403(client: httpx2.AsyncClient) -> None:
    body = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
    url = (await client.post(GENERATIONS, json=body)).json()["data"][0]["url"]
    path = url.removeprefix("http://testserver").split("&sig=")[0]
    response = await client.get(path + "&sig=%C3%A9%C3%A9")
    assert response.status_code == 403 and response.json()["error"]["code"] == "invalid_link"


async def test_head_on_a_link_answers_like_get_without_the_body(client: httpx2.AsyncClient) -> None:
    body = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
    path = (
        (await client.post(GENERATIONS, json=body)).json()["data"][0]["url"].removeprefix("http://testserver")
    )
    got, head = await client.get(path), await client.head(path)
    assert head.status_code == got.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "cache-control"):
        assert head.headers[name] == got.headers[name]


async def test_json_edit_image_failures_name_the_item(client: httpx2.AsyncClient) -> None:
    good = "data:image/png;base64," + base64.b64encode(png_bytes(gradient(64, 64))).decode()
    bad = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    body = {"model": "gpt-image-1", "prompt": "x", "images": [{"image_url": good}, {"image_url": bad}]}
    assert_400(await client.post("/v1/images/edits", json=body), "images[1]")


async def test_an_oversize_multipart_prompt_names_prompt(client: httpx2.AsyncClient) -> None:
    files = {"image": ("a.png", png_bytes(gradient(64, 64)), "image/png")}
    response = await client.post(
        "/v1/images/edits", data={"model": "gpt-image-1", "prompt": "p" * 300_000}, files=files
    )
    assert_400(response, "prompt")


@pytest.mark.parametrize("count", [17, 18, 30])
async def test_too_many_images_name_image(client: httpx2.AsyncClient, count: int) -> None:
    image = png_bytes(gradient(16, 16))
    files = [("image[]", (f"{i}.png", image, "image/png")) for i in range(count)]
    response = await client.post(
        "/v1/images/edits", data={"model": "gpt-image-1", "prompt": "x"}, files=files
    )
    assert_400(response, "image")


async def test_client_strings_reach_the_log_escaped_and_capped(
    client: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="limner")
    forged = "alice\nINFO limner.server: req_forged generate model=admin"
    for user in (forged, "u" * 1_000_000):
        body = {"model": "gpt-image-1", "prompt": "x", "quality": "low", "size": "1024x1024", "user": user}
        assert (await client.post(GENERATIONS, json=body)).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "user=" in r.getMessage()]
    assert len(lines) == 2
    assert "\n" not in lines[0] and "alice\\nINFO" in lines[0]
    assert len(lines[1]) < 1000 and "(+999800 chars)" in lines[1]


async def test_a_client_that_leaves_mid_body_logs_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The ASGI app called as uvicorn calls it, with the client gone after the first chunk."""
    from limner.server.app import create_app

    caplog.set_level(logging.INFO)
    app = create_app(Settings(data_dir=tmp_path))
    messages = [
        {"type": "http.request", "body": b'{"prompt": "a', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": GENERATIONS,
        "raw_path": GENERATIONS.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
    }
    await app(scope, receive, send)
    records = [r for r in caplog.records if r.name.startswith(("limner", "uvicorn"))]
    assert [r.levelno for r in records] == [logging.INFO], [r.getMessage() for r in records]
    (line,) = records
    assert line.exc_info is None and "499" in line.getMessage()
    assert "disconnected" in line.fields["note"]  # type: ignore[attr-defined]


async def test_storage_that_fails_is_a_507_and_b64_keeps_working(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path)) as client:
        images = tmp_path / "images"
        for child in images.iterdir():
            child.unlink()
        images.rmdir()
        images.write_text("a file where the image folder was: every write in it fails")
        body = {"model": "dall-e-2", "prompt": "x", "size": "256x256"}
        response = await client.post(GENERATIONS, json=body)
        assert response.status_code == 507
        error = response.json()["error"]
        assert error["code"] == "storage_unavailable" and str(tmp_path) not in error["message"]
        ok = await client.post(GENERATIONS, json={**body, "response_format": "b64_json"})
        assert ok.status_code == 200


async def test_a_failed_store_leaves_no_temporary_file(
    client: httpx2.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: Path, target: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", disk_full)
    response = await client.post(GENERATIONS, json={"model": "dall-e-2", "prompt": "x", "size": "256x256"})
    assert response.status_code == 507
    assert list((tmp_path / "images").iterdir()) == []


def test_start_up_warns_when_the_data_dir_is_not_writable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "missing")
    assert any("not writable" in w for w in startup_warnings(settings, None))
    (tmp_path / "ok" / "images").mkdir(parents=True)
    assert os.access(tmp_path / "ok" / "images", os.W_OK)
    assert not any("not writable" in w for w in startup_warnings(Settings(data_dir=tmp_path / "ok"), None))


async def test_private_files_security_headers_and_metrics_behind_keys(tmp_path: Path) -> None:
    """The data dir and its databases are the owner's alone; the playground may not be framed or sniffed;
    /metrics needs the key once keys are required; a huge `before` is a 400, not a 500."""
    import stat

    from limner.server.settings import Settings
    from limner.stores.keys import SqliteKeyStore
    from tests.support.inprocess import app_client

    data = tmp_path / "data"
    _, key = SqliteKeyStore(data / "keys.sqlite3").create()
    async with app_client(Settings(data_dir=data)) as client:
        assert (await client.get("/metrics")).status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        assert (await client.get("/metrics", headers=auth)).status_code == 200
        page = await client.get("/")
        assert (
            page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        )
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        huge = await client.get("/v1/images/jobs", params={"before": str(2**70)}, headers=auth)
        assert huge.status_code == 400 and huge.json()["error"]["param"] == "before"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("jobs.sqlite3", "keys.sqlite3"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


def test_request_heads_are_bounded_whatever_http_parser_is_installed(tmp_path: Path) -> None:
    """httptools (installed with the test and ray extras) reads headers of any size; limner serve runs
    h11 with a 64 KiB bound: a 10 MB header is refused and the server keeps serving."""
    from tests.support.server import start_server

    with start_server(tmp_path / "data") as server:
        assert_big_heads_refused(server.base_url, "/health")


def assert_big_heads_refused(base_url: str, path: str) -> None:
    """A 10 MB header is refused (never answered 200), and the server answers the next request."""
    import socket

    host, port = "127.0.0.1", int(base_url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
        try:
            for _ in range(160):  # 10 MB, 64 KiB at a time, until the server gives up on us
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(200)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")
    assert httpx2.get(base_url + path, timeout=30).status_code == 200
