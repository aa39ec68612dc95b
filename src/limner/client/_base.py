"""The policy shared by ApiClient and AsyncApiClient; the shells only send, sleep and read.

A call is prepared once (``Call``: the encoded JSON, or the form fields and file parts), then turned
into a fresh httpx2 request for every attempt, so retries re-send the same bytes and re-ask the token
function. The decisions (retry or raise, which exception) live here, as functions of what came back.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
from pydantic import BaseModel, ValidationError

from limner import __version__
from limner.client._config import Configuration
from limner.client._exceptions import (
    ApiConnectionError,
    ApiException,
    ApiResponseValidationError,
    ApiTimeoutError,
    exception_class_for,
    parse_error_body,
)
from limner.client._files import FilePart
from limner.client._retry import retry_delay, should_retry_status

USER_AGENT = f"limner-client/{__version__} python/{platform.python_version()}"


@dataclass(frozen=True)
class Call:
    """One API call, encoded once; ``stream`` keeps the response open for server-sent events."""

    method: str
    path: str
    json_body: bytes | None = None
    form: Sequence[tuple[str, str]] = ()
    files: Sequence[FilePart] = ()
    stream: bool = False
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | httpx2.Timeout | None = None
    # Downloads of result URLs on other hosts must not carry the API key.
    send_auth: bool = True
    #: Sent as Idempotency-Key on every attempt of this call: a retry of a request the server already
    #: took is answered from that request's job instead of computing the images again.
    idempotency_key: str | None = None

    @property
    def replayable(self) -> bool:
        return all(part.replayable for part in self.files)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], response: httpx2.Response, what: str) -> M:
    """A 2xx body as `model`, or ApiResponseValidationError saying it is not `what`."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ApiResponseValidationError(
            f"The response is not {what}: {exc}", response.status_code, response.content
        ) from exc


def new_idempotency_key() -> str:
    return "limner-" + uuid.uuid4().hex


def encode_json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def form_value(value: Any) -> str:
    """Multipart form values are text: booleans as JSON spells them, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class BaseApiClient:
    """What both shells share: URLs, headers, request building, retry decisions, error mapping."""

    def __init__(self, configuration: Configuration | None = None) -> None:
        self.configuration = configuration or Configuration()

    def url_for(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.configuration.host + "/" + path.lstrip("/")

    def _headers(self, call: Call, token: str | None, retries_taken: int) -> dict[str, str]:
        config = self.configuration
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **config.default_headers}
        if call.stream:
            headers["Accept"] = "text/event-stream"
        if call.send_auth:
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if config.organization:
                headers["OpenAI-Organization"] = config.organization
            if config.project:
                headers["OpenAI-Project"] = config.project
        # The same header the official SDK sends, so servers can tell a retry from a new request.
        headers["X-Stainless-Retry-Count"] = str(retries_taken)
        if call.json_body is not None:
            headers["Content-Type"] = "application/json"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        headers.update(call.extra_headers)
        return headers

    def _build(
        self, http: httpx2.Client | httpx2.AsyncClient, call: Call, token: str | None, retries_taken: int
    ) -> httpx2.Request:
        kwargs: dict[str, Any] = {"headers": self._headers(call, token, retries_taken)}
        if call.timeout is not None:
            kwargs["timeout"] = call.timeout
        if call.json_body is not None:
            kwargs["content"] = call.json_body
        elif call.files:
            kwargs["data"] = _form_dict(call.form)
            kwargs["files"] = [part.as_httpx() for part in call.files]
        return http.build_request(call.method, self.url_for(call.path), **kwargs)

    # Retry decisions: a delay in seconds, or None to stop and raise.

    def _delay_after_status(self, call: Call, retries_taken: int, response: httpx2.Response) -> float | None:
        if retries_taken >= self.configuration.max_retries or not call.replayable:
            return None
        if not should_retry_status(response.status_code, response.headers):
            return None
        return retry_delay(retries_taken, response.headers)

    def _delay_after_error(self, call: Call, retries_taken: int) -> float | None:
        if retries_taken >= self.configuration.max_retries or not call.replayable:
            return None
        return retry_delay(retries_taken)

    @staticmethod
    def status_error(response: httpx2.Response) -> ApiException:
        """The exception for an error answer; the body must have been read."""
        body = parse_error_body(response.content, response.text)
        cls = exception_class_for(response.status_code)
        return cls(response.status_code, response.reason_phrase, body, response.headers)

    def transport_error(self, exc: Exception) -> ApiConnectionError:
        if isinstance(exc, httpx2.TimeoutException):
            return ApiTimeoutError(f"Request to {self.configuration.host} timed out ({exc}).")
        return ApiConnectionError(
            f"Could not talk to {self.configuration.host}: {exc or type(exc).__name__}."
        )


def _form_dict(form: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for name, value in form:
        previous = out.get(name)
        if previous is None:
            out[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[name] = [previous, value]
    return out
