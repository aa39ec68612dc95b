"""One place that renders every failure as the OpenAI error envelope, with no internals in it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from limner.errors import JobCancelled, LimnerError, RateLimited
from limner.server.inputs.parsing import from_validation_errors

log = logging.getLogger("limner.server")

SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "You can retry your request; the request id is in the x-request-id header."
)


def server_error() -> LimnerError:
    """The 500 a client sees for a failure that is not one of limner's errors: nothing internal."""
    return LimnerError(SERVER_ERROR_MESSAGE)


def for_log(text: str | None, cap: int = 200) -> str:
    """A client string as a log line may hold it: escaped (a newline cannot forge a line, a lone
    surrogate cannot fail the handler) and capped (a 1 MB `user` is not a 1 MB line)."""
    if text is None:
        return "-"
    shown = repr(text[:cap])[1:-1]
    return shown if len(text) <= cap else f"{shown}...(+{len(text) - cap} chars)"


def envelope(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def render(exc: LimnerError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers or None)


def install(app: FastAPI) -> None:
    @app.exception_handler(LimnerError)
    async def _limner(request: Request, exc: LimnerError) -> JSONResponse:
        metrics = getattr(request.app.state, "metrics", None)
        if isinstance(exc, RateLimited) and metrics is not None:
            metrics.refused(getattr(request.state, "model", None), exc.reason)
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, for_log(exc.message, 500))
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _fastapi_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(from_validation_errors(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return render(from_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return envelope(
                404, f"Invalid URL ({request.method} {request.url.path})", type="invalid_request_error"
            )
        if exc.status_code == 405:
            return envelope(
                405,
                f"Method {request.method} is not allowed for {request.url.path}.",
                type="invalid_request_error",
                code="method_not_allowed",
                headers=dict(exc.headers or {}),
            )
        return envelope(
            exc.status_code, str(exc.detail), type="invalid_request_error", headers=dict(exc.headers or {})
        )

    @app.exception_handler(ClientDisconnect)
    async def _left(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went away while sending its body: no traceback; the request's one access line
        # says so. Nobody reads the answer (499: nginx's "client closed request").
        request.state.note = "the client disconnected before sending its whole body"
        return envelope(499, "The client closed the request.", type="invalid_request_error")

    @app.exception_handler(JobCancelled)
    async def _cancelled(request: Request, exc: JobCancelled) -> JSONResponse:
        # The client went away; nobody reads this (499: nginx's "client closed request").
        return envelope(499, "The client closed the request.", type="invalid_request_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return render(server_error())
