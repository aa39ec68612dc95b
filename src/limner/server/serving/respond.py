"""A plain request's answer (no Idempotency-Key, no Prefer: respond-async): the ImagesResponse body,
or the stream of events, from one Run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from limner import rules
from limner.errors import JobCancelled
from limner.server.metrics import Metrics
from limner.server.serving import events
from limner.server.serving.run import Run
from limner.server.serving.work import Work, client_of, link_base
from limner.stores.images import ImageStore

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def new_run(request: Request, work: Work, **options: Any) -> Run:
    state = request.app.state
    return Run(work, state.scheduler, client_of(request), state.metrics, **options)


def note(request: Request, run: Run) -> None:
    """The scheduler's times, for the access record."""
    queue_ms, run_ms = run.timings()
    if getattr(request.state, "queue_ms", None) is None:
        request.state.queue_ms = queue_ms
    if run_ms is not None:
        request.state.run_ms = run_ms
    request.state.load_ms = run.load_ms()


async def respond(request: Request, work: Work) -> Response:
    """The answer the API gives: a stream of events, or the ImagesResponse."""
    if work.resolved.stream:
        return await stream(request, work)
    return await body(request, work)


async def body(request: Request, work: Work) -> JSONResponse:
    """Queue the job, wait for its encoded images (the connection is watched meanwhile: if the client
    leaves, the job is cancelled), answer ImagesResponse."""
    run = new_run(request, work)
    run.start()
    await run.drive(disconnected=request.is_disconnected)
    note(request, run)
    if run.cancelled:
        raise JobCancelled()
    if run.error is not None:
        raise run.error
    state = request.app.state
    answer = await asyncio.to_thread(
        images_body, work, run.encoded, store=state.store, base=link_base(request), metrics=state.metrics
    )
    return JSONResponse(answer, headers=run.observed())


async def stream(request: Request, work: Work) -> StreamingResponse:
    """SSE: for each image in turn, its partial images then its completed event (docs/images-contract.md, section 10).

    The first job is queued before the response starts, so a full queue is still a plain 429, and the
    headers say how long it waited and the size of its batch. A failure after the stream started is
    sent as `event: error` with the error envelope, and the stream ends; a client that leaves stops
    the engine.
    """
    run = new_run(request, work, with_events=True, image_by_image=True)
    run.start()
    assert run.ticket is not None
    await request.app.state.scheduler.wait_started(run.ticket, request.is_disconnected)
    request.state.queue_ms = run.ticket.queue_ms
    driving = asyncio.ensure_future(run.drive())

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in run.follow():
                yield chunk
            if run.error is not None:
                yield events.sse("error", run.error.to_dict())
        finally:
            if not run.done.is_set():  # the client left: stop the engine
                run.cancel()
                driving.cancel()
            note(request, run)

    return StreamingResponse(
        chunks(), media_type="text/event-stream", headers={**STREAM_HEADERS, **run.observed()}
    )


def images_body(
    work: Work, encoded: list[bytes], *, store: ImageStore, base: str, metrics: Metrics | None
) -> dict[str, Any]:
    """The ImagesResponse for encoded images (stored behind links in url mode)."""
    resolved = work.resolved
    profile = resolved.profile
    if resolved.response_format == "url":
        started = time.perf_counter()
        links = [store.save(b, resolved.output_format) for b in encoded]
        # A presigned S3 URL is whole already; limner's own links start at its base URL.
        data: list[dict[str, Any]] = [{"url": link if "://" in link else base + link} for link in links]
        if metrics is not None:
            metrics.stored(profile.name, resolved.operation, time.perf_counter() - started)
    else:
        data = [{"b64_json": events.b64(b)} for b in encoded]
    if profile.revised_prompt:
        # limner does not rewrite prompts: the prompt used is the prompt given.
        for item in data:
            item["revised_prompt"] = resolved.prompt
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if profile.echo_settings:
        answer.update(
            background=resolved.background,
            output_format=resolved.output_format,
            size=resolved.size,
            quality=resolved.quality,
        )
    if profile.usage:
        answer["usage"] = rules.usage_for(resolved, input_sizes=work.input_sizes)
    return answer
