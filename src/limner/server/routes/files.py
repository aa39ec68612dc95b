"""GET /files/{name}: url-mode images behind signed, expiring links (no API key: the link is the key)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from limner.server.errors import envelope
from limner.stores.images import ImageStore, LinkError

router = APIRouter(tags=["Files"])


@router.get("/files/{name}", operation_id="getImageFile")
@router.head("/files/{name}", operation_id="headImageFile")
async def get_file(request: Request, name: str, expires: str = "", sig: str = "") -> Response:
    store: ImageStore = request.app.state.store
    try:
        image = await asyncio.to_thread(store.fetch, name, expires, sig)
    except LinkError as exc:
        response: JSONResponse = envelope(
            exc.status_code, str(exc), type="invalid_request_error", code="invalid_link"
        )
        return response
    headers = {"cache-control": "private, max-age=3600"}
    if image.path is not None:
        return FileResponse(image.path, media_type=image.media_type, headers=headers)
    return Response(image.data, media_type=image.media_type, headers=headers)
