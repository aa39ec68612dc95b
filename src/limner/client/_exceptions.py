"""Everything the client raises, mapped at the HTTP boundary with ``raise ... from``.

    OpenApiException                      base of every error this SDK raises
    ├── ApiException                      an error answer: .status .reason .body .headers .request_id
    │   ├── BadRequestException           400
    │   ├── UnauthorizedException         401
    │   ├── ForbiddenException            403
    │   ├── NotFoundException             404
    │   ├── ConflictException             409
    │   ├── UnprocessableEntityException  422
    │   ├── RateLimitException            429
    │   ├── ServiceException              5xx
    │   └── ApiStreamError                an error event inside a started stream (status 200)
    ├── ApiConnectionError                the server could not be reached, or the connection broke
    │   └── ApiTimeoutError
    └── ApiResponseValidationError        a 2xx body that is not what the API promises

Any other 4xx status is a bare ApiException. The names follow the generated clients of the seeds
(openapi-generator's ApiException family), the split by status follows openai-python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from limner.types import ErrorObject, ErrorResponse


class OpenApiException(Exception):
    """Base class of every error raised by limner.client."""


class ApiException(OpenApiException):
    """The server answered with an error status (or an error event, for ApiStreamError).

    ``body`` is the parsed error envelope (an ErrorResponse) when the body is one, else the decoded JSON,
    else the text. ``message``, ``type``, ``code`` and ``param`` are read from the envelope when present.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        body: ErrorResponse | Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        self.request_id: str | None = self.headers.get("x-request-id")
        self.error: ErrorObject | None = body.error if isinstance(body, ErrorResponse) else None
        if self.error is not None:
            self.message = self.error.message
        elif isinstance(body, str) and body:
            self.message = body
        else:
            self.message = reason or f"HTTP {status}"
        super().__init__(self.__str__())

    @property
    def type(self) -> str | None:
        return self.error.type if self.error else None

    @property
    def code(self) -> str | None:
        return self.error.code if self.error else None

    @property
    def param(self) -> str | None:
        return self.error.param if self.error else None

    def __str__(self) -> str:
        text = f"({self.status} {self.reason}) {self.message}".replace("  ", " ")
        details = [
            f"{name}: {value}" for name, value in (("param", self.param), ("code", self.code)) if value
        ]
        if details:
            text += f" [{', '.join(details)}]"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text


class BadRequestException(ApiException):
    pass


class UnauthorizedException(ApiException):
    pass


class ForbiddenException(ApiException):
    pass


class NotFoundException(ApiException):
    pass


class ConflictException(ApiException):
    pass


class UnprocessableEntityException(ApiException):
    pass


class RateLimitException(ApiException):
    pass


class ServiceException(ApiException):
    pass


class ApiStreamError(ApiException):
    """The server sent ``data: {"error": {...}}`` after the stream had started."""


class ApiConnectionError(OpenApiException):
    def __init__(self, message: str = "Connection error.") -> None:
        super().__init__(message)
        self.message = message


class ApiTimeoutError(ApiConnectionError):
    def __init__(self, message: str = "Request timed out.") -> None:
        super().__init__(message)


class ApiResponseValidationError(OpenApiException):
    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


_BY_STATUS: dict[int, type[ApiException]] = {
    400: BadRequestException,
    401: UnauthorizedException,
    403: ForbiddenException,
    404: NotFoundException,
    409: ConflictException,
    422: UnprocessableEntityException,
    429: RateLimitException,
}


def exception_class_for(status: int) -> type[ApiException]:
    if status >= 500:
        return ServiceException
    return _BY_STATUS.get(status, ApiException)


def parse_error_body(content: bytes, text: str) -> ErrorResponse | Any:
    """The envelope when the body is one; otherwise the JSON value, otherwise the text."""
    try:
        decoded = json.loads(content) if content else None
    except ValueError:
        return text
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
        try:
            return ErrorResponse.model_validate(decoded)
        except ValueError:
            return decoded
    return decoded if decoded is not None else text
