"""From a resolved request to a response: hand the job to the scheduler (which queues, batches, runs,
and cancels it when the client leaves), then build the body or the stream of events from what it
returns. Shared by the three endpoints; no HTTP parsing here."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image

from limner import imaging, rules
from limner.engines.jobs import EditJob, Job, JobContext
from limner.errors import LimnerError
from limner.scheduler import Scheduler, Ticket
from limner.server.errors import for_log, log, server_error
from limner.server.links import base_url
from limner.server.metrics import Metrics
from limner.stores.images import ImageStore

StreamKind = Literal["image_generation", "image_edit"]


@dataclass
class Work:
    """One request's work: the resolved request, the model that serves it, the job, and the edit
    inputs' sizes."""

    resolved: rules.Resolved
    model: str
    job: Job
    input_sizes: list[tuple[int, int]] = field(default_factory=list)


def new_seed() -> int:
    return secrets.randbelow(2**31)


def job_fields(resolved: rules.Resolved) -> dict[str, Any]:
    """The fields every engine job shares, from a resolved request (the server picks a missing seed)."""
    return dict(
        width=resolved.width,
        height=resolved.height,
        n=resolved.n,
        seed=resolved.seed if resolved.seed is not None else new_seed(),
        detail=resolved.detail,
        transparent=resolved.background == "transparent",
        negative_prompt=resolved.negative_prompt,
        num_inference_steps=resolved.num_inference_steps,
        guidance_scale=resolved.guidance_scale,
        style=resolved.style,
    )


def _finisher(
    resolved: rules.Resolved, job: Job, metrics: Metrics | None
) -> Callable[[list[Image.Image]], list[bytes]]:
    """What runs in the worker after the engine: the masked-edit guarantee, then encoding."""

    def finish(images: list[Image.Image]) -> list[bytes]:
        started = time.perf_counter()
        if (
            isinstance(job, EditJob)
            and job.mask is not None
            and job.images[0].size == (job.width, job.height)
        ):
            # Whatever the engine did, pixels outside the edited area come back exactly as sent.
            images = [imaging.compose(job.images[0], image, job.mask) for image in images]
        encoded = [
            imaging.encode_image(
                image, output_format=resolved.output_format, compression=resolved.output_compression
            )
            for image in images
        ]
        if metrics is not None:
            metrics.encoded(resolved.profile.name, resolved.operation, time.perf_counter() - started)
        return encoded

    return finish


def note_model(request: Request, name: object) -> None:
    """The model a request names, for the access record and the request metrics, as soon as it is
    known, so that a 400 for a served model is counted under it. Only served names are kept: anything
    else a client sends stays "-" (no free text in labels or log fields)."""
    if isinstance(name, str) and name in request.app.state.registry.models:
        request.state.model = name


def client_of(request: Request) -> str:
    """Whose job this is, for fairness and per-key limits: the API key's id, else the address."""
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return str(key_id)
    return f"addr:{request.client.host}" if request.client else "addr:-"


def observed(ticket: Ticket[Any]) -> dict[str, str]:
    """The scheduler's view of a job, as response headers."""
    return {
        "x-limner-queue-ms": str(ticket.queue_ms if ticket.queue_ms is not None else 0),
        "x-limner-batch-size": str(ticket.batch_size or 0),
    }


def finisher(work: Work, metrics: Metrics | None) -> Callable[[list[Image.Image]], list[bytes]]:
    """What a worker runs after the engine for this request's jobs (see _finisher)."""
    return _finisher(work.resolved, work.job, metrics)


def completed_event(work: Work, data: bytes) -> bytes:
    """The `*.completed` stream event of one finished image (usage counts that one image)."""
    resolved = work.resolved
    kind = "image_generation" if resolved.operation == "generate" else "image_edit"
    usage = rules.usage_for(replace(resolved, n=1), input_sizes=work.input_sizes)
    usage.pop("output_tokens_details", None)
    return sse(
        f"{kind}.completed", {"type": f"{kind}.completed", **event_base(resolved, data), "usage": usage}
    )


def _submit(
    request: Request, work: Work, job: Job, ctx: JobContext, *, admitted: bool = False
) -> Ticket[list[bytes]]:
    scheduler: Scheduler = request.app.state.scheduler
    finish = _finisher(work.resolved, job, request.app.state.metrics)
    return scheduler.submit(work.model, job, ctx, finish, client=client_of(request), admitted=admitted)


def _note(request: Request, ticket: Ticket[Any]) -> None:
    """The scheduler's times, for the access record."""
    if getattr(request.state, "queue_ms", None) is None:
        request.state.queue_ms = ticket.queue_ms
    if ticket.run_ms is not None:
        request.state.run_ms = (getattr(request.state, "run_ms", None) or 0) + ticket.run_ms


async def respond(request: Request, work: Work) -> Response:
    """The answer the API gives: a stream of events, or the ImagesResponse."""
    if work.resolved.stream:
        kind: StreamKind = "image_generation" if work.resolved.operation == "generate" else "image_edit"
        return await stream_response(request, work, kind)
    return await run_to_body(request, work)


def link_base(request: Request) -> str:
    """Where links to stored images start: the configured public URL, else the request's own host."""
    settings = request.app.state.settings
    return base_url(request, settings.public_url, settings.trusted_proxies)


async def run_to_body(request: Request, work: Work) -> JSONResponse:
    """Non-streaming: queue the job, wait for its encoded images (the connection is watched meanwhile:
    if the client leaves, the job is cancelled), answer ImagesResponse."""
    scheduler: Scheduler = request.app.state.scheduler
    ticket = _submit(request, work, work.job, JobContext())
    encoded = await scheduler.result(ticket, request.is_disconnected)
    _note(request, ticket)
    state = request.app.state
    body = await asyncio.to_thread(
        images_body, work, encoded, store=state.store, base=link_base(request), metrics=state.metrics
    )
    return JSONResponse(body, headers=observed(ticket))


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
        data = [{"b64_json": base64.b64encode(b).decode("ascii")} for b in encoded]
    if profile.revised_prompt:
        # limner does not rewrite prompts: the prompt used is the prompt given.
        for item in data:
            item["revised_prompt"] = resolved.prompt
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    if profile.echo_settings:
        body.update(
            background=resolved.background,
            output_format=resolved.output_format,
            size=resolved.size,
            quality=resolved.quality,
        )
    if profile.usage:
        body["usage"] = rules.usage_for(resolved, input_sizes=work.input_sizes)
    return body


# --------------------------------------------------------------------------------------------------
# Streaming


@dataclass
class _StreamJob:
    """One image's job in a stream: its context, its previews (None marks the end), its ticket."""

    ctx: JobContext
    events: asyncio.Queue[tuple[int, bytes] | None] = field(default_factory=asyncio.Queue)
    ticket: Ticket[list[bytes]] = field(init=False)


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def event_base(resolved: rules.Resolved, data: bytes) -> dict[str, Any]:
    # Stream events echo the *requested* settings (contract 5b), so `auto` may appear.
    return {
        "b64_json": base64.b64encode(data).decode("ascii"),
        "created_at": int(time.time()),
        "size": resolved.requested_size,
        "quality": resolved.requested_quality,
        "background": resolved.requested_background,
        "output_format": resolved.output_format,
    }


async def stream_response(request: Request, work: Work, kind: StreamKind) -> StreamingResponse:
    """SSE: for each image in turn, its partial images then its completed event (contract 10).

    Image i runs as its own one-image job with seed + i, so events arrive image after image. The first
    job is queued before the response starts, so a full queue is still a plain 429. A failure after
    the stream started is sent as `event: error` with the error envelope, and the stream ends.
    """
    resolved = work.resolved
    scheduler: Scheduler = request.app.state.scheduler
    loop = asyncio.get_running_loop()

    def start(index: int) -> _StreamJob:
        running = _StreamJob(JobContext(partial_images=resolved.partial_images))

        def on_partial(_image: int, partial_index: int, preview: Image.Image) -> None:
            data = imaging.encode_preview(preview, output_format=resolved.output_format)
            loop.call_soon_threadsafe(running.events.put_nowait, (partial_index, data))

        running.ctx.on_partial = on_partial
        job = replace(work.job, n=1, seed=work.job.seed + index)
        # The first image was admitted with the request; later ones are not refused halfway.
        running.ticket = _submit(request, work, job, running.ctx, admitted=index > 0)
        # The job's end is queued behind its previews (both reach the loop in order), so one queue
        # read gives everything in order and nothing is left pending if the client leaves.
        running.ticket.future.add_done_callback(lambda _: running.events.put_nowait(None))
        return running

    first = start(0)
    # The headers say how long the first image waited and the size of its batch, so they are sent
    # when it starts (a client that leaves meanwhile cancels it).
    await scheduler.wait_started(first.ticket, request.is_disconnected)
    request.state.queue_ms = first.ticket.queue_ms

    def partial_event(partial_index: int, data: bytes) -> bytes:
        payload = {
            "type": f"{kind}.partial_image",
            **event_base(resolved, data),
            "partial_image_index": partial_index,
        }
        return sse(f"{kind}.partial_image", payload)

    async def events() -> AsyncIterator[bytes]:
        current: _StreamJob | None = first
        try:
            for index in range(resolved.n):
                current = current or start(index)
                while (item := await current.events.get()) is not None:
                    yield partial_event(*item)
                (final,) = current.ticket.future.result()
                _note(request, current.ticket)
                yield completed_event(work, final)
                current = None
        except LimnerError as exc:
            yield sse("error", exc.to_dict())
        except Exception:
            log.exception("stream failed")
            yield sse("error", server_error().to_dict())
        finally:
            if current is not None:  # the client left (or a failure): stop the engine
                scheduler.cancel(current.ticket)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", **observed(first.ticket)},
    )


def prepare(
    request: Request,
    resolved: rules.Resolved,
    make_job: Callable[[dict[str, Any]], Job],
    input_sizes: list[tuple[int, int]] | None = None,
) -> Work:
    """The job for the resolved model (built by make_job from job_fields), checked by its engine."""
    state = request.app.state
    # One line per image request for the operator: `user` / `safety_identifier` exist for abuse
    # monitoring, which on a self-hosted server means this log.
    log.info(
        "%s %s model=%s n=%d size=%s user=%s",
        getattr(request.state, "request_id", "-"),
        resolved.operation,
        resolved.profile.name,
        resolved.n,
        resolved.size,
        for_log(resolved.user),
    )
    # For the access record and the request metrics.
    request.state.model, request.state.n, request.state.size = (
        resolved.profile.name,
        resolved.n,
        resolved.size,
    )
    _, engine = state.registry.engine_for(resolved.profile.name)
    job = make_job(job_fields(resolved))
    # The engine refuses what it cannot do (a size the model cannot make) before anything is queued
    # or streamed: a plain 400, never a failure in the middle of a stream.
    engine.check(job)
    return Work(resolved, resolved.profile.name, job, input_sizes or [])
