"""GET /files/{name}: url-mode images behind signed, expiring links (no API key: the link is the key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from limner.server.errors import envelope
from limner.storage import ImageStore, LinkError

router = APIRouter()


@router.get("/files/{name}", operation_id="getImageFile")
@router.head("/files/{name}", operation_id="headImageFile")
async def get_file(request: Request, name: str, expires: str = "", sig: str = "") -> Response:
    store: ImageStore = request.app.state.store
    try:
        path = store.resolve(name, expires, sig)
    except LinkError as exc:
        response: JSONResponse = envelope(
            exc.status_code, str(exc), type="invalid_request_error", code="invalid_link"
        )
        return response
    return FileResponse(
        path, media_type=store.media_type(path), headers={"cache-control": "private, max-age=3600"}
    )
