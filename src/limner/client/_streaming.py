"""Streams of typed events from ``text/event-stream`` answers (generations and edits with stream=True).

A Stream is the Julia seed's response channel in Python: iterate it and the events arrive as the
server sends them, each parsed by ``limner.types.parse_stream_event``. The HTTP response is closed when
the loop ends, when it breaks (the iterator is a generator, finalized as soon as the loop lets go of
it; for ``async for`` asyncio finalizes it on its next turn), or on ``close()`` / leaving ``with``.
An event ``data: {"error": {...}}`` raises ApiStreamError; ``data: [DONE]`` ends the stream. A stream
that has started is never retried: its events may already have been acted on.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import httpx2

from limner.client._config import MAX_STREAM_EVENT_BYTES
from limner.client._exceptions import (
    ApiConnectionError,
    ApiResponseValidationError,
    ApiStreamError,
    ApiTimeoutError,
)
from limner.types import ErrorResponse, parse_stream_event

StreamEvent = Any  # one of the four event models of limner.types; Any keeps mypy from narrowing wrongly


def _event_from(response: httpx2.Response, sse: httpx2.ServerSentEvent) -> StreamEvent | None:
    """The typed event for one SSE message, None to stop at [DONE]; raises on an error event."""
    if sse.data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(sse.data)
    except ValueError as exc:
        raise ApiResponseValidationError(
            f"A stream event is not JSON: {sse.data[:200]!r}", response.status_code, sse.data.encode()
        ) from exc
    if isinstance(payload, dict) and payload.get("error"):
        body: Any = payload
        with contextlib.suppress(ValueError):
            body = ErrorResponse.model_validate(payload)
        raise ApiStreamError(response.status_code, "stream error", body, response.headers)
    try:
        return parse_stream_event(payload)
    except ValueError as exc:
        raise ApiResponseValidationError(
            f"Unexpected stream event: {exc}", response.status_code, sse.data.encode()
        ) from exc


def _check_is_event_stream(response: httpx2.Response) -> None:
    content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "text/event-stream":
        raise ApiResponseValidationError(
            f"Asked for a stream but the server answered {content_type or 'no content type'}.",
            response.status_code,
            b"",
        )


def _wrap_transport(exc: httpx2.TransportError) -> ApiConnectionError:
    if isinstance(exc, httpx2.TimeoutException):
        return ApiTimeoutError(f"The stream timed out: {exc}")
    return ApiConnectionError(f"The stream broke: {exc or type(exc).__name__}")


class Stream:
    """``for event in stream: ...``; also a context manager, with ``close()``."""

    def __init__(self, response: httpx2.Response, *, max_event_bytes: int = MAX_STREAM_EVENT_BYTES) -> None:
        self.response = response
        self.max_event_bytes = max_event_bytes

    @property
    def closed(self) -> bool:
        return self.response.is_closed

    def __iter__(self) -> Iterator[StreamEvent]:
        try:
            _check_is_event_stream(self.response)
            try:
                for sse in httpx2.EventSource(self.response, max_event_size=self.max_event_bytes):
                    event = _event_from(self.response, sse)
                    if event is None:
                        return
                    yield event
            except httpx2.TransportError as exc:
                raise _wrap_transport(exc) from exc
        finally:
            self.response.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncStream:
    """``async for event in stream: ...``; also an async context manager, with ``aclose()``."""

    def __init__(self, response: httpx2.Response, *, max_event_bytes: int = MAX_STREAM_EVENT_BYTES) -> None:
        self.response = response
        self.max_event_bytes = max_event_bytes

    @property
    def closed(self) -> bool:
        return self.response.is_closed

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        try:
            _check_is_event_stream(self.response)
            try:
                async for sse in httpx2.EventSource(self.response, max_event_size=self.max_event_bytes):
                    event = _event_from(self.response, sse)
                    if event is None:
                        return
                    yield event
            except httpx2.TransportError as exc:
                raise _wrap_transport(exc) from exc
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
