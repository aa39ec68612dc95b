"""ApiClient: the synchronous shell over BaseApiClient (httpx2.Client, time.sleep)."""

from __future__ import annotations

import time
from types import TracebackType

import httpx2

from limner.client._base import BaseApiClient, Call
from limner.client._config import Configuration


class ApiClient(BaseApiClient):
    """Holds the connection pool and the configuration; the *Api classes call through it.

    ``transport`` is the seam for tests and proxies (any ``httpx2.BaseTransport``); ``http_client``
    replaces the whole httpx2 client. Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        configuration: Configuration | None = None,
        *,
        transport: httpx2.BaseTransport | None = None,
        http_client: httpx2.Client | None = None,
    ) -> None:
        super().__init__(configuration)
        self._http = http_client or httpx2.Client(
            timeout=self.configuration.timeout, transport=transport, follow_redirects=True
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _token(self) -> str | None:
        token = self.configuration.access_token
        if callable(token):
            value = token()
            if not isinstance(value, str):
                raise TypeError("The access_token function of a sync ApiClient must return a str.")
            return value
        return token

    def send(self, call: Call) -> tuple[httpx2.Response, int]:
        """Send ``call`` with retries; returns the 2xx response (read, or open when streaming) and
        the number of retries taken. Raises ApiException or ApiConnectionError."""
        retries_taken = 0
        while True:
            request = self._build(self._http, call, self._token(), retries_taken)
            try:
                # Only a successful stream stays open; everything else is read whole and closed.
                response = self._http.send(request, stream=call.stream)
                if call.stream and not response.is_success:
                    try:
                        response.read()
                    finally:
                        response.close()
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
            time.sleep(delay)
            retries_taken += 1
