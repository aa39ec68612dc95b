"""AsyncApiClient: the asynchronous shell over BaseApiClient (httpx2.AsyncClient, asyncio.sleep)."""

from __future__ import annotations

import asyncio
import inspect
from types import TracebackType

import httpx2

from limner.client._base import BaseApiClient, Call
from limner.client._config import Configuration


class AsyncApiClient(BaseApiClient):
    """The async twin of ApiClient: ``async with AsyncApiClient(config) as client: ...``."""

    def __init__(
        self,
        configuration: Configuration | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        super().__init__(configuration)
        self._http = http_client or httpx2.AsyncClient(
            timeout=self.configuration.timeout, transport=transport, follow_redirects=True
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncApiClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _token(self) -> str | None:
        token = self.configuration.access_token
        if callable(token):
            value = token()
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str):
                raise TypeError("The access_token function must return a str.")
            return value
        return token

    async def send(self, call: Call) -> tuple[httpx2.Response, int]:
        """Send ``call`` with retries; see ApiClient.send."""
        retries_taken = 0
        while True:
            request = self._build(self._http, call, await self._token(), retries_taken)
            try:
                # Only a successful stream stays open; everything else is read whole and closed.
                response = await self._http.send(request, stream=call.stream)
                if call.stream and not response.is_success:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
            except httpx2.TransportError as exc:
                delay = self._delay_after_error(call, retries_taken)
                if delay is None:
                    raise self.transport_error(exc) from exc
            else:
                if response.is_success:
                    return response, retries_taken
                delay = self._delay_after_status(call, retries_taken, response)
                if delay is None:
                    raise self.status_error(response)
            await asyncio.sleep(delay)
            retries_taken += 1
