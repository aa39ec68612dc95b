"""Bearer-key auth for /v1, failing closed.

The mode is explicit: `auth = "keys"` or `"none"` (config or `--auth`). Unset, it follows the data dir:
keys are required once any key has ever been created there (the key store records that), so
revoking every key, or deleting the database, closes the server rather than opening it.

Key look-ups never run on the event loop: the active hashes are cached for a second and refreshed in a
worker thread, one refresh at a time, and no call waits behind a refresh for long (KeyGuard), so a
database locked, stopped or frozen delays only the calls that need a key (then a fast 503), never
/health or streams already running.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import Literal

from fastapi import Request

from limner.errors import AuthenticationFailed, ServiceUnavailable
from limner.stores.keys import KeyDatabaseError, KeyStore

log = logging.getLogger("limner.server")

AuthMode = Literal["keys", "none"]

UNAVAILABLE = (
    "Authentication is unavailable: the server cannot read its key database. Please retry later; if "
    "this persists, tell the server's operator."
)


class KeyGuard:
    """Decides, per request, whether a key is needed and which hashes are in force.

    The key set is cached for `ttl` seconds (a revocation takes effect within it) and refreshed in a
    worker thread, one refresh at a time. While a refresh is in flight nobody queues behind it: a
    request is served the last good set if that is at most `grace` seconds past its `ttl`, and answered
    503 at once otherwise, so a frozen key database (PostgreSQL stopped with SIGSTOP: a connect waits
    out its time-out) costs a client one fast 503, never a wait behind a lock. The request that starts
    a refresh waits for it at most `wait` seconds.
    """

    def __init__(
        self,
        store: KeyStore,
        mode: AuthMode | None,
        *,
        ttl: float = 1.0,
        grace: float = 10.0,
        wait: float = 1.0,
    ) -> None:
        self.store = store
        self.mode = mode
        self.ttl = ttl
        self.grace = grace
        self.wait = wait
        self._cached: tuple[float, Mapping[str, str] | None] | None = None
        self._refresh: asyncio.Future[Mapping[str, str] | None] | None = None

    def _read(self) -> Mapping[str, str] | None:
        if self.mode == "none":
            return None
        hashes = self.store.snapshot()
        if hashes is None and self.mode == "keys":
            if not self.store.exists():
                # Nobody could ever be let in: at start-up a one-line refusal, while serving a 503.
                raise KeyDatabaseError(
                    f'auth = "keys" but there is no key database at {self.store.where}: create a key '
                    f"first with `{self.store.create_command}`"
                )
            return {}  # keys required, none active: every call is refused
        return hashes

    def check_at_startup(self) -> Mapping[str, str] | None:
        """Read the keys once, synchronously; KeyDatabaseError (naming the file) if they are needed and
        cannot be read."""
        result = self._read()
        self._cached = (time.monotonic(), result)
        return result

    async def hashes(self) -> Mapping[str, str] | None:
        """None: no key needed. Otherwise the active hashes. ServiceUnavailable if they cannot be read."""
        if self.mode == "none":
            return None
        cached = self._cached
        age = time.monotonic() - cached[0] if cached is not None else float("inf")
        # An open data dir closes the moment a first key is created. Where that marker is a local file it
        # is one stat away; a database's marker is read in the refresh, never on the event loop.
        if (
            cached is not None
            and age < self.ttl
            and not (cached[1] is None and self.store.marker_is_local and self.store.required())
        ):
            return cached[1]
        usable = cached is not None and age < self.ttl + self.grace
        if self._refresh is not None:  # someone else is refreshing: nobody waits behind it
            if usable and cached is not None:
                return cached[1]
            raise ServiceUnavailable(UNAVAILABLE)
        refresh = self._refresh = asyncio.ensure_future(asyncio.to_thread(self._read))
        refresh.add_done_callback(self._refreshed)
        try:
            return await asyncio.wait_for(asyncio.shield(refresh), self.wait)
        except TimeoutError:
            if usable and cached is not None:
                return cached[1]
            raise ServiceUnavailable(UNAVAILABLE) from None
        except KeyDatabaseError:
            raise ServiceUnavailable(UNAVAILABLE) from None

    def _refreshed(self, refresh: asyncio.Future[Mapping[str, str] | None]) -> None:
        self._refresh = None
        if refresh.cancelled():
            return
        exc = refresh.exception()
        if exc is None:
            self._cached = (time.monotonic(), refresh.result())
        else:
            # The last good set stays for its grace; past it, calls are refused (503) until a read works.
            log.error("refusing /v1 calls: %s", exc)


async def require_key(request: Request) -> None:
    guard: KeyGuard = request.app.state.key_guard
    hashes = await guard.hashes()
    if hashes is None:
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
    key_id = KeyStore.matches(token, hashes)
    if key_id is None:
        raise AuthenticationFailed(
            f"Incorrect API key provided: {_redact(token)}.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.key_id = key_id  # whose job this is: fairness and per-key limits


def _redact(token: str) -> str:
    return token[:4] + "*" * max(0, min(len(token) - 8, 20)) + token[-4:] if len(token) > 8 else "****"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
