"""The jobs API over the durable layer: GET /v1/images/jobs (a key's jobs, by mode), GET and DELETE
/v1/images/jobs/{id}, and GET /v1/images/jobs/{id}/events. A job is its API key's: another key gets 404.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from limner.errors import NotFound
from limner.server.serving import events
from limner.server.serving.durable import JobManager, Live, completed_events, job_object, owner_of
from limner.server.serving.respond import STREAM_HEADERS
from limner.stores.jobs import ENDED, JobRecord

#: How long /events stays silent before it sends a keep-alive comment.
KEEP_ALIVE_SECONDS = 10.0
#: How long DELETE waits for another replica to record a job's cancellation before it answers.
CANCEL_WAIT_SECONDS = 30.0


class JobsApi:
    """Reads and cancels the jobs the manager keeps: live ones from memory, the rest from the store."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    async def find(self, request: Request, job_id: str) -> tuple[JobRecord, Live | None]:
        live = self.manager.live.get(job_id)
        record = live.record if live else await asyncio.to_thread(self.manager.store.get, job_id)
        if record is None or record.owner != owner_of(request):
            # Another key's job is as unknown as a job that never was.
            raise NotFound(f"No job with id '{job_id}'.", param="id", code="job_not_found")
        return record, live

    async def retrieve(self, request: Request, job_id: str) -> JSONResponse:
        record, live = await self.find(request, job_id)
        return JSONResponse(job_object(record, live, position=self.manager.position(live)))

    async def cancel(self, request: Request, job_id: str) -> JSONResponse:
        record, live = await self.find(request, job_id)
        if live is not None and record.status not in ENDED:
            live.run.cancel()
            await live.done.wait()
        elif record.status not in ENDED:
            # It runs on another replica (or waits to be taken over): the flag in the store reaches
            # whichever runs it, within a tick of its lease keeper; wait for the end it records.
            store = self.manager.store
            await asyncio.to_thread(store.request_cancel, job_id)
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while record.status not in ENDED and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                here = self.manager.live.get(job_id)
                if here is not None:  # taken over by this replica meanwhile
                    here.run.cancel()
                    await here.done.wait()
                    record = here.record
                else:
                    stored = await asyncio.to_thread(store.get, job_id)
                    record = stored or record
        return JSONResponse(job_object(record, None))

    async def listing(
        self,
        request: Request,
        limit: int,
        before: int | None,
        mode: str | None = None,
        after: str | None = None,
    ) -> JSONResponse:
        await self.manager.gathered_written()  # a job whose client has its answer is listed
        records = await asyncio.to_thread(
            self.manager.store.of_owner,
            owner_of(request),
            limit=limit + 1,
            before=before,
            mode=mode,
            after=after,
        )
        data = [
            job_object(
                self.manager.live[r.id].record if r.id in self.manager.live else r,
                self.manager.live.get(r.id),
            )
            for r in records[:limit]
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,  # the next page's `after`
                "has_more": len(records) > limit,
            }
        )

    async def events(self, request: Request, job_id: str) -> StreamingResponse:
        record, live = await self.find(request, job_id)

        async def stream() -> AsyncIterator[bytes]:
            yield events.sse(
                "image_job.status", job_object(record, live, position=self.manager.position(live))
            )
            replay = live is None or not live.run.with_events  # else the run's feed has them
            if live is not None:
                async for chunk in self._follow(live):
                    yield chunk
                await live.done.wait()
            final = live.record if live else record
            if final.status == "completed" and replay:
                for chunk in completed_events(final):
                    yield chunk
            if final.status == "failed":
                yield events.sse("error", final.error)
            yield events.sse(f"image_job.{final.status}", job_object(final, None))

        return StreamingResponse(stream(), media_type="text/event-stream", headers=STREAM_HEADERS)

    async def _follow(self, live: Live) -> AsyncIterator[bytes]:
        """The run's events as they come, a progress event when status or step changes, and a keep-alive
        comment in a long silence (a queued job may wait minutes), until the run is done."""
        follower = live.run.follow()
        upcoming: asyncio.Future[bytes] | None = None
        last: tuple[str, Any] | None = None
        silent = 0.0
        try:
            while True:
                if upcoming is None:
                    upcoming = asyncio.ensure_future(follower.__anext__())
                finished, _ = await asyncio.wait({upcoming}, timeout=0.5)
                if finished:
                    try:
                        chunk = upcoming.result()
                    except StopAsyncIteration:
                        return
                    upcoming, silent = None, 0.0
                    yield chunk
                else:
                    silent += 0.5
                    if silent >= KEEP_ALIVE_SECONDS:
                        silent = 0.0
                        yield b": keep-alive\n\n"
                now = (live.record.status, live.run.progress)
                if now != last:
                    last = now
                    yield events.sse(
                        "image_job.progress",
                        job_object(live.record, live, position=self.manager.position(live)),
                    )
        finally:
            if upcoming is not None:  # cancelling the pending read ends the follower with it
                upcoming.cancel()
