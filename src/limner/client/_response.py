"""ApiResponse: a result with its status and headers, that also unpacks as (data, status_code, headers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx2

T = TypeVar("T")


@dataclass(frozen=True)
class ApiResponse(Generic[T]):
    """What the ``*_with_http_info`` methods return.

    ``data, status_code, headers = api.create_image_with_http_info(...)`` works as in the Ruby seed;
    ``retries_taken`` and ``request_id`` are there for the curious.
    """

    data: T
    status_code: int
    headers: httpx2.Headers
    retries_taken: int = 0

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    def __iter__(self) -> Iterator[Any]:
        yield self.data
        yield self.status_code
        yield self.headers
