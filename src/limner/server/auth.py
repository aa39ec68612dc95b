"""Bearer-key auth for /v1: open while no key exists; once one does, every call needs a valid key."""

from __future__ import annotations

import ipaddress

from fastapi import Request

from limner.errors import AuthenticationFailed
from limner.server.keys import KeyStore


async def require_key(request: Request) -> None:
    keys: KeyStore = request.app.state.keys
    hashes = keys.active_hashes()
    if not hashes:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not KeyStore.matches(token, hashes):
        raise AuthenticationFailed(
            f"Incorrect API key provided: {_redact(token)}.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _redact(token: str) -> str:
    return token[:4] + "*" * max(0, min(len(token) - 8, 20)) + token[-4:] if len(token) > 8 else "****"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
