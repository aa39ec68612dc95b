"""GET /health: 200 once the server is ready, with which engines are loaded; GET /metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["Operations"])
metrics_router = APIRouter(tags=["Operations"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    registry = request.app.state.registry
    scheduler = request.app.state.scheduler
    residency = scheduler.residency.snapshot()
    return {
        "status": "ok",
        "replica": request.app.state.replica,
        "pid": os.getpid(),
        "engines": registry.status(),
        "models": {name: registry.engines[m.engine_key].loaded for name, m in registry.models.items()},
        # Jobs running or waiting per engine: what an operator (or a test) watches for backlog.
        "queues": scheduler.pending_by_lane(),
        "jobs": scheduler.ended_by_lane(),
        # Per model: queued, running, done, cancelled, failed, batches, mean batch size, mean time.
        "scheduler": scheduler.health(),
        # Per model: loaded, loading or unloaded, its bytes and idle time; per budgeted device: the
        # budget, what is resident, and which models hold it.
        "residency": {
            "models": {
                name: residency[m.engine_key]
                for name, m in registry.models.items()
                if m.engine_key in residency
            },
            "budgets": scheduler.residency.budget_report(),
        },
        # The services this process shares with its replicas, and whether they answer.
        "services": await request.app.state.probes.answers(),
    }


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format: this process's own figures (scrape every replica)."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
