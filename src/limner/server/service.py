"""From a resolved request to a response: run the engine job, encode, store, and build the body or the
stream of events. Shared by the three endpoints; no HTTP parsing here."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from limner import imaging, rules
from limner.engines.base import Engine
from limner.engines.jobs import EditJob, GenerateJob, JobContext, VaryJob
from limner.errors import JobCancelled, LimnerError
from limner.scheduler import EngineQueue, wait_cancelling
from limner.server.errors import SERVER_ERROR_MESSAGE, for_log, log
from limner.server.links import base_url
from limner.storage import ImageStore

Job = GenerateJob | EditJob | VaryJob
StreamKind = Literal["image_generation", "image_edit"]


@dataclass
class Work:
    """One request's work: the resolved request, its engine, the job, and the edit inputs' sizes."""

    resolved: rules.Resolved
    engine: Engine
    queue: EngineQueue
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


def _draw(engine: Engine, job: Job, ctx: JobContext) -> list[Image.Image]:
    if isinstance(job, GenerateJob):
        return engine.generate(job, ctx)
    if isinstance(job, EditJob):
        images = engine.edit(job, ctx)
        first = job.images[0]
        if job.mask is not None and first.size == (job.width, job.height):
            # Whatever the engine did, pixels outside the edited area come back exactly as sent.
            images = [imaging.compose(first, image, job.mask) for image in images]
        return images
    return engine.vary(job, ctx)


def _encode_all(resolved: rules.Resolved, images: list[Image.Image]) -> list[bytes]:
    return [
        imaging.encode_image(
            img, output_format=resolved.output_format, compression=resolved.output_compression
        )
        for img in images
    ]


@dataclass
class _StreamJob:
    """One image's job in a stream: its context, its previews (None marks the end), its result."""

    ctx: JobContext
    events: asyncio.Queue[tuple[int, bytes] | None] = field(default_factory=asyncio.Queue)
    future: asyncio.Future[list[bytes]] = field(init=False)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)


async def run_to_body(request: Request, work: Work, store: ImageStore) -> JSONResponse:
    """Non-streaming: run the job (encoding in the worker thread too), answer ImagesResponse. The
    connection is watched meanwhile: if the client leaves, the job is cancelled (see wait_cancelling)."""
    ctx = JobContext()
    resolved = work.resolved
    future = work.queue.submit(lambda: _encode_all(resolved, _draw(work.engine, work.job, ctx)), ctx)
    job_task = asyncio.ensure_future(wait_cancelling(future, ctx))
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({job_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping
        job_task.cancel()
        raise
    finally:
        watcher.cancel()
    if not job_task.done():  # the client left: stop the engine, answer nobody
        job_task.cancel()
        raise JobCancelled()
    return JSONResponse(images_body(request, work, job_task.result(), store))


def _links(request: Request, store: ImageStore, encoded: list[bytes], fmt: str) -> list[str]:
    settings = request.app.state.settings
    base = base_url(request, settings.public_url, settings.trusted_proxies)
    return [base + store.save(data, fmt) for data in encoded]


def images_body(request: Request, work: Work, encoded: list[bytes], store: ImageStore) -> dict[str, Any]:
    resolved = work.resolved
    profile = resolved.profile
    if resolved.response_format == "url":
        data: list[dict[str, Any]] = [
            {"url": u} for u in _links(request, store, encoded, resolved.output_format)
        ]
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


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _event_base(resolved: rules.Resolved, data: bytes) -> dict[str, Any]:
    # Stream events echo the *requested* settings (contract 5b), so `auto` may appear.
    return {
        "b64_json": base64.b64encode(data).decode("ascii"),
        "created_at": int(time.time()),
        "size": resolved.requested_size,
        "quality": resolved.requested_quality,
        "background": resolved.requested_background,
        "output_format": resolved.output_format,
    }


def stream_response(request: Request, work: Work, kind: StreamKind) -> StreamingResponse:
    """SSE: for each image in turn, its partial images then its completed event (contract 10).

    Image i runs as its own one-image job with seed + i, so events arrive image after image. The first
    job is queued before the response starts, so a full queue is still a plain 429. A failure after
    the stream started is sent as `event: error` with the error envelope, and the stream ends.
    """
    resolved = work.resolved
    loop = asyncio.get_running_loop()
    per_image_usage = replace(resolved, n=1)

    def start(index: int) -> _StreamJob:
        running = _StreamJob(JobContext(partial_images=resolved.partial_images))

        def on_partial(_image: int, partial_index: int, preview: Image.Image) -> None:
            data = imaging.encode_preview(preview, output_format=resolved.output_format)
            loop.call_soon_threadsafe(running.events.put_nowait, (partial_index, data))

        running.ctx.on_partial = on_partial
        job = replace(work.job, n=1, seed=work.job.seed + index)
        running.future = work.queue.submit(
            lambda: _encode_all(resolved, _draw(work.engine, job, running.ctx)), running.ctx
        )
        # The job's end is queued behind its previews (both reach the loop in order), so one queue
        # read gives everything in order and nothing is left pending if the client leaves.
        running.future.add_done_callback(lambda _: running.events.put_nowait(None))
        return running

    first = start(0)

    def partial_event(partial_index: int, data: bytes) -> bytes:
        payload = {
            "type": f"{kind}.partial_image",
            **_event_base(resolved, data),
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
                (final,) = current.future.result()
                usage = rules.usage_for(per_image_usage, input_sizes=work.input_sizes)
                usage.pop("output_tokens_details", None)
                yield sse(
                    f"{kind}.completed",
                    {"type": f"{kind}.completed", **_event_base(resolved, final), "usage": usage},
                )
                current = None
        except LimnerError as exc:
            yield sse("error", exc.to_dict())
        except Exception:
            log.exception("stream failed")
            yield sse(
                "error",
                {
                    "error": {
                        "message": SERVER_ERROR_MESSAGE,
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        finally:
            if current is not None:  # the client left (or a failure): stop the engine
                current.ctx.cancel()
                current.future.cancel()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def prepare(
    request: Request,
    resolved: rules.Resolved,
    make_job: Any,
    input_sizes: list[tuple[int, int]] | None = None,
) -> Work:
    """The engine and queue for the resolved model, and its job (built by make_job from job_fields)."""
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
    served, engine = state.registry.engine_for(resolved.profile.name)
    queue = state.scheduler.queue(served.engine_key, served.concurrency, served.max_queue)
    job = make_job(job_fields(resolved))
    check = getattr(engine, "check", None)
    if check is not None:
        # Engines may refuse a job up front (a size the model cannot make): a plain 400 then, rather
        # than a failure after a stream has started.
        check(job)
    return Work(resolved, engine, queue, job, input_sizes or [])
