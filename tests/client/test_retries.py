"""Retries against a real HTTP server started in the test, counting the attempts it sees."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator

import pytest

from limner.client import (
    ApiClient,
    ApiConnectionError,
    ApiTimeoutError,
    AsyncApiClient,
    AsyncImagesApi,
    BadRequestException,
    Configuration,
    ConflictException,
    ImagesApi,
    RateLimitException,
    ServiceException,
)
from tests.client.scripted_server import Reply, scripted

OK = Reply()
FAST = {"retry-after-ms": "10"}
ERROR = (
    b'{"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}'
)


def api(url: str, max_retries: int = 2, timeout: float | None = 30.0) -> ImagesApi:
    config = Configuration(host=url, access_token="sk-test", max_retries=max_retries, timeout=timeout)
    return ImagesApi(ApiClient(config))


def test_429_with_retry_after_seconds_is_waited_for_then_succeeds() -> None:
    with scripted(Reply(429, {"Retry-After": "1"}, ERROR), OK) as server:
        result = api(server.url).create_image_with_http_info(prompt="a cat")
    assert server.attempts == 2
    assert result.status_code == 200 and result.retries_taken == 1
    assert result.data.data[0].b64_json == "aGk="
    waited = server.times[1] - server.times[0]
    assert 0.9 <= waited < 3.0


def test_503_twice_then_200_uses_exponential_backoff() -> None:
    with scripted(Reply(503, body=b"busy"), Reply(503, body=b"busy"), OK) as server:
        result = api(server.url).create_image_with_http_info(prompt="a cat")
    assert server.attempts == 3 and result.retries_taken == 2
    # first wait in [0.375, 0.5], second in [0.75, 1.0]
    assert 0.37 <= server.times[1] - server.times[0] < 0.8
    assert 0.74 <= server.times[2] - server.times[1] < 1.4
    assert [r.headers["x-stainless-retry-count"] for r in server.received] == ["0", "1", "2"]


def test_retries_are_bounded_by_max_retries() -> None:
    with scripted(Reply(503, FAST, b"busy")) as server, pytest.raises(ServiceException) as caught:
        api(server.url, max_retries=2).create_image(prompt="a cat")
    assert server.attempts == 3
    assert caught.value.status == 503 and caught.value.body == "busy"


def test_max_retries_zero_raises_the_first_error_with_its_details() -> None:
    headers = {**FAST, "x-request-id": "req_123"}
    with scripted(Reply(429, headers, ERROR), OK) as server, pytest.raises(RateLimitException) as caught:
        api(server.url, max_retries=0).create_image(prompt="a cat")
    assert server.attempts == 1
    error = caught.value
    assert (error.status, error.reason, error.request_id) == (429, "Too Many Requests", "req_123")
    assert error.code == "rate_limit_exceeded" and error.message == "slow down"
    assert error.body.error.type == "requests"
    assert error.headers["retry-after-ms"] == "10"


@pytest.mark.parametrize("status", [408, 409, 500])
def test_other_retried_statuses(status: int) -> None:
    with scripted(Reply(status, FAST, b"{}"), OK) as server:
        api(server.url).create_image(prompt="a cat")
    assert server.attempts == 2


def test_x_should_retry_false_stops_and_true_forces() -> None:
    with scripted(Reply(503, {"x-should-retry": "false"}, b"{}"), OK) as server:
        with pytest.raises(ServiceException):
            api(server.url).create_image(prompt="a cat")
        assert server.attempts == 1
    with scripted(Reply(400, {**FAST, "x-should-retry": "true"}, b"{}"), OK) as server:
        api(server.url).create_image(prompt="a cat")
        assert server.attempts == 2


def test_400_is_not_retried_and_a_long_retry_after_is_not_waited_for() -> None:
    with scripted(Reply(400, body=b"{}"), OK) as server, pytest.raises(BadRequestException):
        api(server.url).create_image(prompt="a cat")
    assert server.attempts == 1
    with scripted(Reply(409, {"Retry-After": "600"}, b"{}"), OK) as server, pytest.raises(ConflictException):
        api(server.url).create_image(prompt="a cat")
    assert server.attempts == 1


def test_a_dropped_connection_is_retried_then_raised_as_connection_error() -> None:
    with scripted(Reply(drop=True)) as server, pytest.raises(ApiConnectionError) as caught:
        api(server.url, max_retries=1).create_image(prompt="a cat")
    assert server.attempts == 2
    assert not isinstance(caught.value, ApiTimeoutError)
    with scripted(Reply(drop=True), OK) as server:
        api(server.url, max_retries=1).create_image(prompt="a cat")
    assert server.attempts == 2


def test_a_timeout_is_retried_then_raised_as_timeout_error() -> None:
    with scripted(Reply(delay=1.0)) as server, pytest.raises(ApiTimeoutError):
        api(server.url, max_retries=1, timeout=0.2).create_image(prompt="a cat")
    assert server.attempts == 2


def test_nothing_listening_is_a_connection_error() -> None:
    with pytest.raises(ApiConnectionError):
        api("http://127.0.0.1:9/v1", max_retries=0).create_image(prompt="a cat")


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def test_a_seekable_upload_is_sent_again_whole() -> None:
    with scripted(Reply(503, FAST, b"{}"), OK) as server:
        api(server.url).create_image_variation(io.BytesIO(PNG))
    assert server.attempts == 2
    first, second = (received.multipart() for received in server.received)
    assert first == second and first[0][3] == PNG


@pytest.fixture()
def pipe_reader() -> Iterator[io.BufferedReader]:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PNG)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        yield reader


def test_a_non_seekable_upload_is_never_retried(pipe_reader: io.BufferedReader) -> None:
    with scripted(Reply(503, FAST, b"{}"), OK) as server, pytest.raises(ServiceException):
        api(server.url).create_image_variation(pipe_reader)
    assert server.attempts == 1
    parts = server.received[0].multipart()
    assert parts[0][2] == "image/png" and parts[0][3] == PNG  # sniffed and sent whole, chunked


def test_the_token_function_is_asked_before_every_attempt() -> None:
    tokens = iter(["tok-1", "tok-2", "tok-3"])
    with scripted(Reply(503, FAST, b"{}"), OK) as server:
        ImagesApi(ApiClient(Configuration(host=server.url, access_token=lambda: next(tokens)))).create_image(
            prompt="a cat"
        )
    assert [r.headers["authorization"] for r in server.received] == ["Bearer tok-1", "Bearer tok-2"]


def test_async_client_retries_the_same_way() -> None:
    async def token() -> str:
        return "async-token"

    async def run(url: str) -> int:
        config = Configuration(host=url, access_token=token)
        async with AsyncApiClient(config) as client:
            result = await AsyncImagesApi(client).create_image_with_http_info(prompt="a cat")
            return result.retries_taken

    with scripted(Reply(429, FAST, ERROR), Reply(503, FAST, b"{}"), OK) as server:
        started = time.monotonic()
        assert asyncio.run(run(server.url)) == 2
        assert time.monotonic() - started < 2
    assert server.attempts == 3
    assert server.received[0].headers["authorization"] == "Bearer async-token"


def test_async_max_retries_zero() -> None:
    async def run(url: str) -> None:
        async with AsyncApiClient(Configuration(host=url, max_retries=0)) as client:
            await AsyncImagesApi(client).create_image(prompt="a cat")

    with scripted(Reply(429, FAST, ERROR), OK) as server, pytest.raises(RateLimitException):
        asyncio.run(run(server.url))
    assert server.attempts == 1
