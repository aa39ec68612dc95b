"""limner.server.inputs.fetch against real HTTP(S) servers on 127.0.0.1 (no traffic goes anywhere else).

Public hosts cannot exist in a test, so the per-hop re-check on redirects is shown two ways: the
address rule itself on a table of addresses, and real redirect chains fetched with an address
policy that allows 127.0.0.1 only, which counts and refuses exactly as the default rule would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from limner.errors import InvalidRequest
from limner.server.inputs.fetch import (
    AddressPolicy,
    IPAddress,
    blocked_reason,
    decode_data_url,
    fetch_image_url,
)

LOOPBACK = ipaddress.ip_address("127.0.0.1")
PARAM = "images[0].image_url"
HUGE_BYTES = 60 * 1024 * 1024
CHUNK = 64 * 1024


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (24, 16), os.urandom(24 * 16 * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class Origin:
    """What a test server saw: request paths and headers in order, and bytes sent by streaming routes."""

    base: str
    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    streamed: dict[str, int] = field(default_factory=dict)
    stream_done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    origin: Origin  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        self.origin.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        url = urllib.parse.urlsplit(self.path)
        route = url.path
        query = urllib.parse.parse_qs(url.query)
        if route == "/png":
            self._reply(200, PNG, {"Content-Type": "image/png"})
        elif route.startswith("/redirect/"):
            left = int(route.rsplit("/", 1)[1])
            self._redirect("/png" if left <= 1 else f"/redirect/{left - 1}")
        elif route == "/relative":
            self._redirect("png")  # relative to /relative: /png
        elif route == "/loop":
            self._redirect("/loop")
        elif route == "/redirect-to":
            self._redirect(query["target"][0])
        elif route == "/missing":
            self._reply(404, b"not here", {"Content-Type": "text/plain"})
        elif route == "/empty":
            self._reply(200, b"", {"Content-Type": "image/png"})
        elif route == "/gzip":
            self._reply(200, gzip.compress(PNG), {"Content-Type": "image/png", "Content-Encoding": "gzip"})
        elif route == "/huge":
            self._stream(route, declared=None)
        elif route == "/declared-huge":
            self._stream(route, declared=HUGE_BYTES)
        elif route == "/slow":
            self.origin.stop.wait(5)  # no answer at all for 5 s
        elif route == "/drip":
            self._drip()
        else:
            self._reply(500, b"unknown route", {})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._reply(302, b"", {"Location": location})

    def _stream(self, route: str, declared: int | None) -> None:
        """60 MB made on the fly, counting what the socket accepted before the client hung up."""
        # A small send buffer keeps the count close to what the client really read.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        sent = 0
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if declared is not None:
                self.send_header("Content-Length", str(declared))
            self.end_headers()  # HTTP/1.0 without Content-Length: the body ends when the socket closes
            block = b"\x89" * CHUNK
            while sent < HUGE_BYTES and not self.origin.stop.is_set():
                self.wfile.write(block)
                sent += len(block)
        except OSError:
            pass  # the client hung up: the point of the test
        finally:
            self.origin.streamed[route] = sent
            self.origin.stream_done.set()

    def _drip(self) -> None:
        """One byte every 50 ms for up to 5 s: each read is quick, only a total deadline stops it."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(100):
                if self.origin.stop.wait(0.05):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        except OSError:
            pass


@contextlib.contextmanager
def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Origin]:
    class Handler(_Handler):  # one class per server, so that each sees its own Origin
        pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    origin = Origin(base=f"{'https' if tls else 'http'}://127.0.0.1:{port}", port=port)
    Handler.origin = origin
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: origin.sni.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        origin.stop.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def shared_origin() -> Iterator[Origin]:
    with _serve() as origin:
        yield origin


@pytest.fixture()
def origin(shared_origin: Origin) -> Origin:
    shared_origin.requests.clear()
    shared_origin.streamed.clear()
    shared_origin.stream_done.clear()
    return shared_origin


def only_loopback_127_0_0_1(calls: list[IPAddress]) -> AddressPolicy:
    """A policy that lets 127.0.0.1 through and judges every other address by the default rule."""

    def policy(address: IPAddress) -> str | None:
        calls.append(address)
        return None if address == LOOPBACK else blocked_reason(address)

    return policy


async def fetch(url: str, **overrides: object) -> bytes:
    options: dict[str, object] = {
        "param": PARAM,
        "allow_private": False,
        "timeout": 5.0,
        "max_bytes": 1024 * 1024,
    }
    options.update(overrides)
    return await fetch_image_url(url, **options)  # type: ignore[arg-type]


def refused(exc: pytest.ExceptionInfo[InvalidRequest]) -> str:
    """The message of a refusal, after checking it is the 400 envelope this module promises."""
    error = exc.value
    assert error.status_code == 400
    assert error.param == PARAM
    assert error.code == "invalid_image_url"
    return error.message


# --- the address rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.7", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback (IPv4 inside IPv6)"),
        ("::ffff:10.1.2.3", "private (IPv4 inside IPv6)"),
        ("64:ff9b::a9fe:a9fe", "link-local (IPv4 inside IPv6)"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", "loopback (IPv4 inside IPv6)"),  # 6to4 of 127.0.0.1
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "non-global"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("::127.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::1", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


# --- data: URLs ------------------------------------------------------------------------------------

BLOB = bytes(range(256)) * 3 + b"\xfb\xff"  # has bytes whose base64 uses + and / (or - and _)
STANDARD = base64.b64encode(BLOB).decode()
URLSAFE = base64.urlsafe_b64encode(BLOB).decode()


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png;base64,{STANDARD}",
        f"data:;base64,{STANDARD}",
        f"DATA:image/png;BASE64,{STANDARD}",
        f"data:image/png;name=x.png;base64,{STANDARD}",
        f"data:image/png;base64,{URLSAFE}",
        f"data:image/png;base64,{STANDARD.rstrip('=')}",
        f"data:image/png;base64,{URLSAFE.rstrip('=')}",
        "data:image/png;base64," + "\n".join(STANDARD[i : i + 76] for i in range(0, len(STANDARD), 76)),
        "data:image/png;base64," + urllib.parse.quote(STANDARD, safe=""),
        "data:application/octet-stream," + urllib.parse.quote(BLOB, safe=""),
    ],
    ids=[
        "base64",
        "no-media-type",
        "upper-case",
        "media-parameter",
        "urlsafe",
        "no-padding",
        "urlsafe-no-padding",
        "line-wrapped",
        "percent-encoded-base64",
        "percent-encoded",
    ],
)
def test_data_url_decodes(url: str) -> None:
    assert decode_data_url(url, param=PARAM, max_bytes=len(BLOB)) == BLOB


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64", "no ','"),
        ("http://example.invalid/x.png", "not a data: URL"),
        ("data:image png;base64,AAAA", "bad header"),
        ("data:image/png;charset;base64,AAAA", "bad header"),
        ("data:image/png;base64,AAA*", "not valid base64"),
        ("data:image/png;base64,AA=A", "not valid base64"),
        ("data:image/png;base64,AAAAA", "truncated"),
        ("data:image/png;base64,%E9%E9AA", "not valid base64"),
        ("data:image/png;base64,%ZZAA", "percent-escape"),
        ("data:image/png,%4", "percent-escape"),
        ("data:image/png;base64,", "empty"),
    ],
)
def test_data_url_malformed(url: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        decode_data_url(url, param=PARAM, max_bytes=1024)
    assert words in refused(exc)


@pytest.mark.parametrize(
    "url",
    [f"data:image/png;base64,{STANDARD}", "data:application/octet-stream," + urllib.parse.quote(BLOB)],
    ids=["base64", "percent-encoded"],
)
def test_data_url_over_cap(url: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        decode_data_url(url, param=PARAM, max_bytes=len(BLOB) - 1)
    assert "larger than" in refused(exc)


def test_data_url_cap_is_checked_before_decoding() -> None:
    # 8 MB of '*' would be refused as bad base64 if it were decoded; the size check comes first.
    url = "data:image/png;base64," + "*" * (8 * 1024 * 1024)
    with pytest.raises(InvalidRequest) as exc:
        decode_data_url(url, param=PARAM, max_bytes=4 * 1024 * 1024)
    assert "larger than" in refused(exc)


@pytest.mark.asyncio
async def test_fetch_hands_data_urls_to_the_decoder() -> None:
    assert await fetch(f"data:image/png;base64,{STANDARD}") == BLOB


# --- schemes and the default rule --------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:70/_x", "//no-scheme/x.png"]
)
async def test_other_schemes_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch(url, allow_private=True)
    assert "http(s) URL or a data: URL" in refused(exc)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),  # a name is judged by what it resolves to
        ("[::ffff:127.0.0.1]", "loopback (IPv4 inside IPv6)"),
        ("2130706433", "loopback"),  # 127.0.0.1 as one decimal number, resolved by the C library
        ("127.1", "loopback"),
    ],
)
async def test_private_refused_before_any_connection(origin: Origin, host: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"http://{host}:{origin.port}/png")
    assert f"resolves to a {reason} address" in refused(exc)
    assert origin.requests == []


@pytest.mark.asyncio
async def test_allowed_private_fetch_returns_the_bytes(origin: Origin) -> None:
    assert await fetch(f"{origin.base}/png", allow_private=True) == PNG
    (path, headers), *_ = origin.requests
    assert path == "/png"
    assert headers["host"] == f"127.0.0.1:{origin.port}"
    assert headers["accept-encoding"] == "identity"


@pytest.mark.asyncio
async def test_unresolvable_host_is_a_400(origin: Origin) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch("http://limner-no-such-host.invalid/x.png", allow_private=True)
    assert "could not fetch image_url" in refused(exc)


# --- redirects ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redirects_are_followed_and_every_hop_is_checked(origin: Origin) -> None:
    calls: list[IPAddress] = []
    body = await fetch(f"{origin.base}/redirect/3", address_policy=only_loopback_127_0_0_1(calls))
    assert body == PNG
    assert origin.paths() == ["/redirect/3", "/redirect/2", "/redirect/1", "/png"]
    assert calls == [LOOPBACK] * 4  # one check per hop, before its connection


@pytest.mark.asyncio
async def test_relative_redirect(origin: Origin) -> None:
    assert await fetch(f"{origin.base}/relative", allow_private=True) == PNG
    assert origin.paths() == ["/relative", "/png"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.2:{port}/png", "loopback"),
        ("http://[::1]:{port}/png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
    ],
)
async def test_redirect_to_a_refused_address(origin: Origin, target: str, reason: str) -> None:
    calls: list[IPAddress] = []
    location = urllib.parse.quote(target.format(port=origin.port), safe="")
    with pytest.raises(InvalidRequest) as exc:
        await fetch(
            f"{origin.base}/redirect-to?target={location}", address_policy=only_loopback_127_0_0_1(calls)
        )
    assert f"resolves to a {reason} address" in refused(exc)
    assert len(origin.requests) == 1  # the first hop only: the refused one was never connected to
    assert calls[0] == LOOPBACK
    assert len(calls) == 2


@pytest.mark.asyncio
async def test_redirect_to_another_scheme_refused(origin: Origin) -> None:
    location = urllib.parse.quote("file:///etc/passwd", safe="")
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}/redirect-to?target={location}", allow_private=True)
    assert "not scheme 'file'" in refused(exc)


@pytest.mark.asyncio
async def test_redirect_limit(origin: Origin) -> None:
    assert await fetch(f"{origin.base}/redirect/3", allow_private=True, max_redirects=3) == PNG
    origin.requests.clear()
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}/redirect/3", allow_private=True, max_redirects=2)
    assert "more than 2 redirects" in refused(exc)
    assert origin.paths() == ["/redirect/3", "/redirect/2", "/redirect/1"]


@pytest.mark.asyncio
async def test_redirect_loop(origin: Origin) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}/loop", allow_private=True)
    assert "more than 5 redirects" in refused(exc)
    assert origin.paths() == ["/loop"] * 6


# --- answers -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_not_found(origin: Origin) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}/missing", allow_private=True)
    assert "HTTP 404" in refused(exc)


@pytest.mark.asyncio
@pytest.mark.parametrize(("route", "words"), [("/empty", "empty body"), ("/gzip", "Content-Encoding 'gzip'")])
async def test_unusable_bodies(origin: Origin, route: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}{route}", allow_private=True)
    assert words in refused(exc)


@pytest.mark.asyncio
async def test_cap_at_exactly_the_size(origin: Origin) -> None:
    assert await fetch(f"{origin.base}/png", allow_private=True, max_bytes=len(PNG)) == PNG
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}/png", allow_private=True, max_bytes=len(PNG) - 1)
    assert "larger than" in refused(exc)


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/huge", "/declared-huge"])
async def test_huge_body_stops_reading_early(origin: Origin, route: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}{route}", allow_private=True, max_bytes=1024 * 1024)
    assert "larger than the 1048576-byte limit" in refused(exc)
    assert await asyncio.to_thread(origin.stream_done.wait, 5)
    sent = origin.streamed[route]
    # The server stopped when the client hung up: at most the cap plus what socket buffers held.
    assert sent < 16 * 1024 * 1024, sent
    assert time.monotonic() - started < 5


@pytest.mark.asyncio
async def test_declared_size_refused_before_reading(origin: Origin) -> None:
    # The cap is one byte under the declared 60 MB: reading the stream would take nearly all of it
    # before refusing, so a small count at the server shows the refusal came from Content-Length.
    with pytest.raises(InvalidRequest):
        await fetch(f"{origin.base}/declared-huge", allow_private=True, max_bytes=HUGE_BYTES - 1)
    assert await asyncio.to_thread(origin.stream_done.wait, 5)
    assert origin.streamed["/declared-huge"] < 16 * 1024 * 1024


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/slow", "/drip"])
async def test_timeout(origin: Origin, route: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"{origin.base}{route}", allow_private=True, timeout=0.5)
    elapsed = time.monotonic() - started
    assert "could not fetch image_url" in refused(exc)
    assert 0.4 < elapsed < 3.0, elapsed  # the server would hold on for 5 s


@pytest.mark.asyncio
async def test_connection_refused_is_a_400() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InvalidRequest) as exc:
        await fetch(f"http://127.0.0.1:{port}/png", allow_private=True)
    assert "could not fetch image_url" in refused(exc)


# --- https: connect to the checked IP, verify the name --------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture()
def tls_origin(certificate: tuple[Path, Path]) -> Iterator[Origin]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with _serve(context) as origin:
        yield origin


async def resolve_test_names(host: str, port: int) -> list[IPAddress]:
    """A resolver where every *.test name is 127.0.0.1; nothing else resolves."""
    if host.endswith(".test"):
        return [LOOPBACK]
    raise OSError(f"no such host {host}")


@pytest.mark.asyncio
async def test_https_connects_to_the_ip_and_verifies_the_name(
    tls_origin: Origin, certificate: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    body = await fetch(
        f"https://images.test:{tls_origin.port}/png",
        allow_private=True,
        resolve=resolve_test_names,
        verify=trust,
    )
    assert body == PNG
    assert tls_origin.sni == ["images.test"]
    assert tls_origin.requests[0][1]["host"] == f"images.test:{tls_origin.port}"

    # The same IP under a name the certificate does not carry: verification is against the name.
    with pytest.raises(InvalidRequest) as exc:
        await fetch(
            f"https://other.test:{tls_origin.port}/png",
            allow_private=True,
            resolve=resolve_test_names,
            verify=trust,
        )
    assert "could not fetch image_url" in refused(exc)
    assert len(tls_origin.requests) == 1
