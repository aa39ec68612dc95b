"""GET /health: 200 once the server is ready, with which engines are loaded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    registry = request.app.state.registry
    return {
        "status": "ok",
        "engines": registry.status(),
        "models": {name: registry.engines[m.engine_key].loaded for name, m in registry.models.items()},
    }
