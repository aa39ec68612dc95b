"""The jobs API: GET /v1/images/jobs, GET /v1/images/jobs/{id}, GET /v1/images/jobs/{id}/events,
DELETE /v1/images/jobs/{id}. A job is its API key's: another key gets 404."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

router = APIRouter(tags=["Jobs"])


@router.get("/images/jobs")
async def list_jobs(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(
        None,
        max_length=64,
        description="a cursor: the last_id of the previous page; the page continues behind that job",
    ),
    before: int | None = Query(
        None, ge=0, le=2**63 - 1, description="only jobs created before this unix time"
    ),
    mode: Literal["async", "sync"] | None = Query(
        None,
        description="only asynchronous jobs (Prefer: respond-async), or only synchronous calls kept for "
        "their Idempotency-Key; both when absent",
    ),
) -> JSONResponse:
    response: JSONResponse = await request.app.state.jobs_api.listing(request, limit, before, mode, after)
    return response


@router.get("/images/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> JSONResponse:
    response: JSONResponse = await request.app.state.jobs_api.retrieve(request, job_id)
    return response


@router.get("/images/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str) -> StreamingResponse:
    response: StreamingResponse = await request.app.state.jobs_api.events(request, job_id)
    return response


@router.delete("/images/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str) -> JSONResponse:
    response: JSONResponse = await request.app.state.jobs_api.cancel(request, job_id)
    return response
