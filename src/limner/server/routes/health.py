"""GET /health: 200 once the server is ready, with which engines are loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    registry = request.app.state.registry
    scheduler = request.app.state.scheduler
    return {
        "status": "ok",
        "engines": registry.status(),
        "models": {name: registry.engines[m.engine_key].loaded for name, m in registry.models.items()},
        # Jobs running or waiting per engine: what an operator (or a test) watches for backlog.
        "queues": {key: q.pending for key, q in scheduler.queues.items()},
        "jobs": {
            key: {"done": q.done, "cancelled": q.cancelled, "failed": q.failed}
            for key, q in scheduler.queues.items()
        },
    }
