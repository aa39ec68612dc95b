"""The app in this process, with its lifespan, behind an httpx2 client: no socket, no subprocess."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from limner.server.app import create_app
from limner.server.settings import Settings


@contextlib.asynccontextmanager
async def app_client(settings: Settings, **app_kwargs: Any) -> AsyncIterator[httpx2.AsyncClient]:
    app = create_app(settings, **app_kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=60
        ) as client:
            client.app = app  # type: ignore[attr-defined]  # for tests that look at app.state
            yield client
