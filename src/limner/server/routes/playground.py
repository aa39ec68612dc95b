"""The playground at /: static files shipped in the package (no build step, nothing from a CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

UI = Path(__file__).resolve().parent.parent / "ui"

#: The page loads only its own files; images are blob: URLs made from answers; it may not be framed.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob: data:; "
        "style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def install(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=UI), name="ui")
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(UI / "index.html", headers={"cache-control": "no-cache", **SECURITY_HEADERS})

    app.include_router(router)
