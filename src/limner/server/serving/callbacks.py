"""Callbacks for asynchronous jobs (`X-Limner-Callback-Url`): where they may go, and how they are sent.

A callback makes the server connect to a URL a client chose, so it is guarded like an image_url fetch
(limner.server.inputs.fetch), and more strictly:

* the operator's `callback_allow` entries are URLs, parsed at start-up (a malformed one stops it); a
  callback URL must have an entry's scheme, host and port exactly, and its path under the entry's path
  by whole segments, after `.` and `..` are resolved (`/hooks` never matches `/hooksx` or
  `/hooks/../admin`). Userinfo (`https://allowed@evil.test/`), backslashes, control characters and
  anything that does not parse are refused with a 400 when the job is submitted;
* when the callback is sent, its host is resolved and refused if any address is loopback, private,
  link-local, metadata or otherwise internal (the image_url policy), unless the operator says
  `callback_allow_private = true`; the connection goes to the checked address, so a DNS answer that
  changes between the check and the connect cannot redirect it; redirects are not followed;
* each callback is signed with a secret of its own (`callback_secret`, or one kept in the data dir as
  `callback.key`), never the secret that signs image links: a receiver that can check callbacks can
  not forge links.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import posixpath
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from limner.errors import InvalidRequest

if TYPE_CHECKING:  # fetch (and httpx2 with it) is imported when a callback is sent, not at start-up
    from limner.server.inputs.fetch import AddressPolicy, Resolver

log = logging.getLogger("limner.jobs")

CALLBACK_HEADER = "X-Limner-Callback-Url"
SIGNATURE_HEADER = "X-Limner-Signature"
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Target:
    """A callback URL taken apart: what is compared, and what is connected to."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]
    query: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        path = "/" + "/".join(quote(segment, safe="!$&'()*+,;=:@-._~") for segment in self.segments)
        return f"{self.scheme}://{host}{port}{path}" + (f"?{self.query}" if self.query else "")

    def under(self, entry: Target) -> bool:
        return (self.scheme, self.host, self.port) == (
            entry.scheme,
            entry.host,
            entry.port,
        ) and self.segments[: len(entry.segments)] == entry.segments


def parse_target(raw: str) -> Target:
    """A URL as a Target; ValueError saying why it is not one limner calls back."""
    if not raw or any(ord(c) < 0x21 or c in "\\\x7f" for c in raw):
        raise ValueError("it holds spaces, control characters or backslashes")
    parts = urlsplit(raw)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("it is not an http or https URL")
    if "@" in parts.netloc:
        raise ValueError("it carries a user name or password")
    if parts.fragment:
        raise ValueError("it has a fragment")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number, or out of range
        raise ValueError(f"its port is not valid ({exc})") from None
    if not host:
        raise ValueError("it has no host")
    # Percent-encoded dots and slashes are decoded before `.` and `..` are resolved (%2e%2e is `..`
    # too); what is left is compared segment by segment, and sent as it was resolved.
    normalised = posixpath.normpath("/" + unquote(parts.path).lstrip("/"))
    segments = tuple(s for s in normalised.split("/") if s)
    return Target(
        parts.scheme, host.lower().rstrip("."), port or DEFAULT_PORTS[parts.scheme], segments, parts.query
    )


def parse_allow_list(entries: list[str]) -> list[Target]:
    """The configured `callback_allow` entries; ValueError naming the first that is not a URL."""
    targets = []
    for entry in entries:
        try:
            targets.append(parse_target(entry))
        except ValueError as exc:
            raise ValueError(f"callback_allow entry {entry!r} is not a usable URL: {exc}") from None
    return targets


def checked_callback(raw: str, allowed: list[Target]) -> str:
    """The callback URL a job will be sent to (normalised), or a 400 naming the header."""
    try:
        target = parse_target(raw)
    except ValueError as exc:
        raise InvalidRequest(f"This {CALLBACK_HEADER} is not valid: {exc}.", param=CALLBACK_HEADER) from None
    if not any(target.under(entry) for entry in allowed):
        raise InvalidRequest(
            f"This {CALLBACK_HEADER} is not allowed: the server's callback_allow list has no entry for "
            "its scheme, host and port with a path above it.",
            param=CALLBACK_HEADER,
        )
    return target.url


def signature(secret: bytes, payload: bytes, stamp: str) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, what a receiver checks."""
    digest = hmac.new(secret, stamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


async def deliver(
    url: str,
    body: dict[str, Any],
    *,
    secret: bytes,
    policy: AddressPolicy,
    resolve: Resolver | None = None,
    attempts: int = 3,
    timeout: float = 10.0,
) -> bool:
    """POST the body to the callback URL, signed, to a checked address; True once the receiver took
    it (any status under 500). A refused address is not retried: it will not change."""
    import httpx2

    from limner.server.inputs.fetch import resolve_host

    target = parse_target(url)
    try:
        addresses = await (resolve or resolve_host)(target.host, target.port)
    except (OSError, UnicodeError, ValueError) as exc:
        log.warning("callback to %s not sent: cannot resolve its host (%s)", target.host, exc)
        return False
    for address in addresses:
        reason = policy(address)
        if reason is not None:
            log.warning("callback to %s not sent: its host resolves to a %s address", target.host, reason)
            return False
    payload = json.dumps(body).encode()
    host_header = target.url.split("/")[2]
    request_url = httpx2.URL(target.url).copy_with(host=str(addresses[0]))
    async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(attempts):
            headers = {
                "content-type": "application/json",
                "host": host_header,
                SIGNATURE_HEADER: signature(secret, payload, str(int(time.time()))),
            }
            try:
                response = await client.post(
                    request_url, content=payload, headers=headers, extensions={"sni_hostname": target.host}
                )
                if response.status_code < 500:
                    return True
            except httpx2.HTTPError as exc:
                log.warning("callback to %s failed: %s", target.host, exc)
            await asyncio.sleep(0.5 * 2**attempt)
    return False
