"""The playground at /: static files shipped in the package (no build step, nothing from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI = Path(__file__).resolve().parent.parent / "ui"


def install(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=UI), name="ui")
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(UI / "index.html", headers={"cache-control": "no-cache"})

    app.include_router(router)
