"""The bytes behind an ImageRefParam's `image_url`: data: URLs decoded, http(s) URLs fetched safely.

A JSON edit request may point the server at any URL, so fetching it is a server-side request forgery
risk: a caller could make limner read its cloud metadata service, an admin page on localhost, or a
database port on the private network. The guard here:

* only `http`, `https` (and `data:`, decoded locally) schemes;
* the host is resolved once, and the request is refused when ANY resolved address is loopback,
  private, link-local (169.254.169.254 included), multicast, reserved, unspecified, shared (CGNAT) or
  an IPv4-in-IPv6 form of one of those (`::ffff:127.0.0.1`, 6to4, NAT64), unless the operator
  allows private addresses;
* the connection goes to the checked IP itself, with the original Host header and, for https, the
  original name for SNI and certificate verification: resolving the name a second time at connect
  would let a DNS rebinding answer swap in a private address between the check and the connect;
* redirects are followed by hand, each hop resolved and checked again, at most `max_redirects`;
* the body is streamed and dropped as soon as it passes `max_bytes` (a too-large Content-Length is
  refused before reading), compressed answers are refused (a gzip bomb would expand past the cap
  inside one chunk), and one deadline covers resolution, connect and every read.

Every failure is the caller's problem, never a 500: `InvalidRequest(param=..., code="invalid_image_url")`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import unquote_to_bytes

import httpx2

from limner.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Returns why an address may not be fetched from, or None when it may.
AddressPolicy = Callable[[IPAddress], str | None]
# Resolves (host, port) to the addresses a connection could go to.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

ERROR_CODE = "invalid_image_url"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are IPv4
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"(?:{_TOKEN}/{_TOKEN})?")
_DATA_PARAM = re.compile(rf"{_TOKEN}=[^;,]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
# What a hop can raise for reasons on the far side (the socket layer, TLS, a broken answer): all 400s.
_NETWORK_ERRORS = (httpx2.HTTPError, httpx2.InvalidURL, OSError)


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=ERROR_CODE)


# --- addresses -------------------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, 6to4 or NAT64 IPv6 address reaches, if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address (e.g. "loopback"), or None when it is one.

    IPv4 carried inside IPv6 is judged by the IPv4 address, so ::ffff:127.0.0.1 is loopback while
    ::ffff:8.8.8.8 is public (the `ipaddress` module calls every ::/8 address reserved).
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return None if inner is None else f"{inner} (IPv4 inside IPv6)"
        if address.is_site_local:  # fec0::/10, deprecated but still private; `is_global` says True
            return "site-local"
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        # What is left and not global: 100.64.0.0/10, shared carrier-grade NAT space.
        (not address.is_global, "non-global"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def allow_any_address(address: IPAddress) -> str | None:
    """The policy when the operator allows private addresses: every resolved address is fine."""
    return None


def default_policy(allow_private: bool) -> AddressPolicy:
    return allow_any_address if allow_private else blocked_reason


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses that `host` resolves to (an IP literal is its own answer), in resolver order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


# --- data: URLs ------------------------------------------------------------------------------------


def decode_data_url(url: str, *, param: str, max_bytes: int) -> bytes:
    """The bytes of an RFC 2397 `data:[<mediatype>][;base64],<data>` URL.

    Base64 may be standard or urlsafe, with or without padding, wrapped in whitespace or
    percent-encoded; the size is checked from the encoded length before anything is decoded.
    """
    if url[:5].lower() != "data:":
        raise _refuse("image_url is not a data: URL.", param)
    header, comma, data = url[5:].partition(",")
    if not comma:
        raise _refuse("image_url is a malformed data: URL (no ',' before the data).", param)
    parts = header.split(";")
    is_base64 = len(parts) > 1 and parts[-1].strip().lower() == "base64"
    if is_base64:
        parts.pop()
    if not _MEDIA_TYPE.fullmatch(parts[0].strip()) or not all(
        _DATA_PARAM.fullmatch(part.strip()) for part in parts[1:]
    ):
        raise _refuse(f"image_url is a malformed data: URL (bad header {header[:80]!r}).", param)
    if _BAD_PERCENT.search(data):
        raise _refuse("image_url is a malformed data: URL (bad percent-escape).", param)
    too_large = f"image_url is larger than the {max_bytes}-byte limit."
    if is_base64:
        decoded = _decode_base64(data, param=param, max_bytes=max_bytes, too_large=too_large)
    else:
        # Each decoded byte takes 1 to 3 characters, so a third of the length is a floor.
        if len(data) // 3 > max_bytes:
            raise _refuse(too_large, param)
        decoded = unquote_to_bytes(data)
        if len(decoded) > max_bytes:
            raise _refuse(too_large, param)
    if not decoded:
        raise _refuse("image_url is an empty data: URL.", param)
    return decoded


def _decode_base64(data: str, *, param: str, max_bytes: int, too_large: str) -> bytes:
    if "%" in data:
        try:
            data = unquote_to_bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise _refuse("image_url data: URL is not valid base64.", param) from None
    compact = "".join(data.split()).rstrip("=")  # str.split is ~10x faster than a regex on 20 MB
    # Every 4 characters carry 3 bytes: this is the exact decoded size, known before decoding.
    if len(compact) * 3 // 4 > max_bytes:
        raise _refuse(too_large, param)
    if len(compact) % 4 == 1:  # no base64 string has this length, whatever its padding
        raise _refuse("image_url data: URL is not valid base64 (truncated).", param)
    standard = compact.translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("image_url data: URL is not valid base64.", param) from None


# --- http(s) ---------------------------------------------------------------------------------------


async def fetch_image_url(
    url: str,
    *,
    param: str,
    allow_private: bool,
    timeout: float,
    max_bytes: int,
    max_redirects: int = 5,
    address_policy: AddressPolicy | None = None,
    resolve: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
) -> bytes:
    """The bytes behind `url` (a data:, http or https URL), or InvalidRequest naming `param`.

    `address_policy` replaces the allow_private rule (every resolved address of every hop passes
    through it); `resolve` replaces DNS and `verify` the trusted CAs. Those three exist for
    operators with special networks and for tests; the server passes none of them.
    """
    url = url.strip()
    if url[:5].lower() == "data:":
        return decode_data_url(url, param=param, max_bytes=max_bytes)
    current = _http_url(url, param)  # scheme and host first: nothing is built for a file: URL
    fetcher = _Fetcher(
        param=param,
        policy=address_policy or default_policy(allow_private),
        resolve=resolve or resolve_host,
        max_bytes=max_bytes,
    )
    try:
        async with asyncio.timeout(timeout):
            async with httpx2.AsyncClient(
                trust_env=False,  # no proxy from the environment: it would reach the name, not the IP
                follow_redirects=False,
                timeout=httpx2.Timeout(timeout),
                verify=_default_tls() if verify is True else verify,
                # No connection reuse: a TLS connection is verified for one name, and another name
                # on the same IP and port must not ride on it.
                limits=httpx2.Limits(max_keepalive_connections=0),
            ) as client:
                for _ in range(max_redirects + 1):
                    outcome = await fetcher.hop(client, current)
                    if isinstance(outcome, bytes):
                        return outcome
                    current = outcome
    except TimeoutError:
        raise _refuse(f"could not fetch image_url: no complete answer within {timeout:g} s.", param) from None
    raise _refuse(f"could not fetch image_url: more than {max_redirects} redirects.", param)


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """The system-trusted (certifi) TLS context, built once: building it costs ~100 ms of CPU a time."""
    return httpx2.create_ssl_context()


def _http_url(raw: str, param: str) -> httpx2.URL:
    try:
        url = httpx2.URL(raw)
    except (httpx2.InvalidURL, ValueError, TypeError) as exc:
        raise _refuse(f"image_url is not a valid URL: {exc}", param) from None
    if url.scheme not in ("http", "https"):
        shown = url.scheme or "none"
        raise _refuse(f"image_url must be an http(s) URL or a data: URL, not scheme '{shown}'.", param)
    if not url.raw_host:
        raise _refuse("image_url has no host.", param)
    return url


class _Fetcher:
    """One fetch: the checks and limits that every hop of a redirect chain goes through."""

    def __init__(self, *, param: str, policy: AddressPolicy, resolve: Resolver, max_bytes: int) -> None:
        self.param = param
        self.policy = policy
        self.resolve = resolve
        self.max_bytes = max_bytes

    async def addresses(self, url: httpx2.URL) -> Sequence[IPAddress]:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self.resolve(host, port)
        except (OSError, UnicodeError, ValueError) as exc:
            raise _refuse(
                f"could not fetch image_url: cannot resolve host '{host}' ({exc}).", self.param
            ) from None
        if not addresses:
            raise _refuse(f"could not fetch image_url: host '{host}' has no address.", self.param)
        for address in addresses:
            reason = self.policy(address)
            if reason is not None:
                # The address itself stays out of the message: it would map the internal network.
                raise _refuse(
                    f"image_url host '{host}' resolves to a {reason} address, which this server does not "
                    "fetch from.",
                    self.param,
                )
        return addresses

    async def hop(self, client: httpx2.AsyncClient, url: httpx2.URL) -> bytes | httpx2.URL:
        """The body of a 2xx answer, or the checked next URL of a redirect."""
        addresses = await self.addresses(url)
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Accept": "image/*, */*;q=0.5",
            "Accept-Encoding": "identity",
            "User-Agent": "limner-image-fetch",
        }
        extensions = {"sni_hostname": url.raw_host.decode("ascii")}
        failure: Exception | None = None
        for address in addresses:  # every one was checked; the first that accepts a connection serves
            try:
                request = client.build_request(
                    "GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                failure = exc
                continue
            except _NETWORK_ERRORS as exc:
                raise self._network_error(exc) from None
            try:
                return await self._outcome(url, response)
            except _NETWORK_ERRORS as exc:
                raise self._network_error(exc) from None
            finally:
                await response.aclose()
        raise self._network_error(failure or OSError("no address accepted a connection"))

    def _network_error(self, exc: Exception) -> InvalidRequest:
        detail = str(exc) or type(exc).__name__
        return _refuse(f"could not fetch image_url: {detail}", self.param)

    async def _outcome(self, url: httpx2.URL, response: httpx2.Response) -> bytes | httpx2.URL:
        status = response.status_code
        if status in REDIRECT_STATUSES and "location" in response.headers:
            try:
                target = url.join(response.headers["location"])
            except (httpx2.InvalidURL, ValueError) as exc:
                raise _refuse(f"image_url redirected to an invalid URL: {exc}", self.param) from None
            return _http_url(str(target), self.param)
        if not 200 <= status < 300:
            raise _refuse(f"image_url answered HTTP {status}; expected 200.", self.param)
        return await self._body(response)

    async def _body(self, response: httpx2.Response) -> bytes:
        too_large = f"image_url is larger than the {self.max_bytes}-byte limit."
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise _refuse(too_large, self.param)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _refuse(
                f"image_url answered with Content-Encoding '{encoding}'; send it uncompressed.", self.param
            )
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > self.max_bytes:
                raise _refuse(too_large, self.param)
            chunks.append(chunk)
        if received == 0:
            raise _refuse("image_url answered with an empty body.", self.param)
        return b"".join(chunks)
