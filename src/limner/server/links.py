"""The public base URL for url-mode links: the configured one, else the request's own scheme and host.

X-Forwarded-Proto and X-Forwarded-Host are honoured only when the direct peer is a trusted proxy, so a
client cannot point links at a host of its choosing. Uvicorn's own proxy-header handling is turned off
(see cli) so that this is the one place that decides.
"""

from __future__ import annotations

from fastapi import Request


def base_url(request: Request, public_url: str | None, trusted_proxies: list[str]) -> str:
    if public_url:
        return public_url.rstrip("/")
    # From the scope, not request.url: building the whole URL costs a request more than the rest.
    scheme = request.scope.get("scheme", "http")
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    peer = request.client.host if request.client else ""
    if peer and peer in trusted_proxies:
        fwd_proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
        fwd_host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if fwd_proto in ("http", "https"):
            scheme = fwd_proto
        if fwd_host:
            host = fwd_host
    return f"{scheme}://{host}"
