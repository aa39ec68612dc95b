"""Pure ASGI middleware: request ids and timing on every response, and the request body limit.

Pure ASGI rather than BaseHTTPMiddleware so streamed responses pass through untouched and the body
limit applies while the body is being received, before anything is buffered.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from limner.errors import PayloadTooLarge
from limner.server import ids

if TYPE_CHECKING:
    from limner.server.metrics import Metrics

access_log = logging.getLogger("limner.access")


class RequestContextMiddleware:
    """Adds x-request-id, openai-processing-ms, openai-version and x-limner-replica to every response.

    Behind a proxy that gives every request an id and puts it on the response itself (Ray Serve's),
    `proxy_request_id` takes that id and leaves the header to the proxy, so there is one id, not two.
    """

    def __init__(self, app: ASGIApp, *, replica: str, proxy_request_id: bool = False) -> None:
        self.app = app
        self.replica = replica.encode()
        self.proxy_request_id = proxy_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        if self.proxy_request_id:
            given = next(
                (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None
            )
        request_id = given or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = int((time.perf_counter() - started) * 1000)
                headers = list(message.get("headers", []))
                if given is None:
                    headers.append((b"x-request-id", request_id.encode()))
                headers += [
                    (b"x-limner-replica", self.replica),
                    (b"openai-processing-ms", str(elapsed).encode()),
                    (b"openai-version", b"2020-10-01"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def new_request_id() -> str:
    """limner's request id form, `req_` and 32 hex digits (a proxy in front uses it too: ProxyRequestId)."""
    return "req_" + ids.token_hex(16)


class ProxyRequestId:
    """For a proxy in front of limner (Ray Serve's): gives a request without x-request-id limner's own,
    before the proxy makes one of its own form, so a response carries one id in one format."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(k == b"x-request-id" for k, _ in scope.get("headers", [])):
            scope = {
                **scope,
                "headers": [*scope.get("headers", []), (b"x-request-id", new_request_id().encode())],
            }
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413: at once from Content-Length, else while receiving."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        error = PayloadTooLarge(f"The request body is too large: the limit is {self.max_bytes} bytes.")
        body = json.dumps(error.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._reject(send)
        except Exception as exc:  # a BodyTooLarge wrapped by a framework layer
            if _caused_by_body_limit(exc) and not response_started:
                await self._reject(send)
            else:
                raise


def _caused_by_body_limit(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BodyTooLarge):
            return True
        seen.add(id(exc))
        nested: Any = getattr(exc, "exceptions", None)
        if nested and any(_caused_by_body_limit(e) for e in nested):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class AccessMiddleware:
    """One record per request, once it is answered (streams: at their last byte): a line in the access
    log and the request metrics. What the handlers learnt (model, n, size, key id, queue and run time)
    travels in the request's state."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_watching(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        template = route_template(scope)
        state = scope.get("state", {})
        model = state.get("model")
        key = state.get("key_id")
        if self.metrics is not None:
            self.metrics.request(template, model, status, seconds, key)
        access_log.info(
            "%s %s %d",
            scope["method"],
            template,
            status,
            extra={
                "fields": {
                    "request_id": state.get("request_id"),
                    "key_id": key,
                    "method": scope["method"],
                    "route": template,
                    "model": model,
                    "n": state.get("n"),
                    "size": state.get("size"),
                    "status": status,
                    "queue_ms": state.get("queue_ms"),
                    "run_ms": state.get("run_ms"),
                    "ms": round(seconds * 1000),
                    "note": state.get("note"),
                    "load_ms": state.get("load_ms"),
                    # The prompt, steps, seed and LoRA adapters of an image request.
                    **(state.get("drawn") or {}),
                }
            },
        )


def route_template(scope: Scope) -> str:
    """The matched route's template ("/v1/models/{model_id:path}"), never the raw path, so that metric
    labels stay a bounded set. FastAPI keeps an included router's full path in its route context;
    a mount (static files) is its prefix; nothing matched is "unmatched"."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path", None)
    if isinstance(path, str):
        return path
    route = scope.get("route")
    if isinstance(route, Mount):
        return route.path + "/*"
    if route is None and scope.get("root_path"):  # inside a mount that does not name itself
        return str(scope["root_path"]) + "/*"
    return getattr(route, "path", None) or "unmatched"
