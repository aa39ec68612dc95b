"""Configuration: where the API is, how to authenticate, how patient to be."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx2

DEFAULT_HOST = "https://api.openai.com/v1"
#: openai-python's defaults: ten minutes to read (images are slow), five seconds to connect.
DEFAULT_TIMEOUT = httpx2.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
#: The largest server-sent event a stream may carry. httpx2's default (1 MiB) is smaller than one
#: finished 1024x1024 PNG in base64; this bound is what the API can send: its largest image (3840x2160,
#: RGBA, incompressible) is about 33 MB as PNG, 44 MB in base64, plus the event's other fields.
MAX_STREAM_EVENT_BYTES = 64 * 1024 * 1024

#: A bearer token, or a function that returns one: called before every attempt, so a rotating token
#: (the Dart seed's "function which generates token") is fresh on retries too. The async client also
#: accepts a coroutine function.
AccessToken = str | Callable[[], str] | Callable[[], Awaitable[str]]


def _default_host() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_HOST


def _default_token() -> str | None:
    return os.environ.get("OPENAI_API_KEY") or None


@dataclass
class Configuration:
    """Settings shared by every call of an ApiClient.

    ``host`` defaults to ``OPENAI_BASE_URL``, else the OpenAI API; ``access_token`` to ``OPENAI_API_KEY``
    (no Authorization header is sent when there is none, which is what a keyless ``limner serve``
    wants). ``timeout`` is seconds or an ``httpx2.Timeout``.
    """

    host: str = field(default_factory=_default_host)
    access_token: AccessToken | None = field(default_factory=_default_token)
    max_retries: int = DEFAULT_MAX_RETRIES
    timeout: float | httpx2.Timeout | None = field(default_factory=lambda: DEFAULT_TIMEOUT)
    organization: str | None = field(default_factory=lambda: os.environ.get("OPENAI_ORG_ID") or None)
    project: str | None = field(default_factory=lambda: os.environ.get("OPENAI_PROJECT_ID") or None)
    default_headers: dict[str, str] = field(default_factory=dict)
    #: The largest stream event accepted (bytes); a larger one breaks the stream with ApiConnectionError.
    max_stream_event_bytes: int = MAX_STREAM_EVENT_BYTES

    def __post_init__(self) -> None:
        self.host = self.host.rstrip("/")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError("max_retries must be a non-negative integer (0 disables retries).")
