"""A small real HTTP server for client tests: answers from a script, records what it received.

Each entry of the script answers one request, in order (the last one repeats): a status, headers and
a body, or ``"drop"`` to close the connection without answering, or a delay before answering. Used
where the real ``limner serve`` cannot be made to misbehave on demand (429, 503, broken connections).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"created": 1, "data": [{"b64_json": "aGk="}]}'
    drop: bool = False  # close the connection without an answer
    delay: float = 0.0  # seconds to wait before answering
    chunks: list[bytes] | None = None  # stream these (with a flush each) instead of body
    content_type: str = "application/json"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def multipart(self) -> list[tuple[str, str | None, str, bytes]]:
        """(field name, filename, content type, payload) for each part of a multipart body."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        parts: list[tuple[str, str | None, str, bytes]] = []
        for part in message.iter_parts():
            params = dict(part.get_params(header="content-disposition") or [])
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts.append((str(params["name"]), params.get("filename"), part.get_content_type(), payload))
        return parts


class ScriptedServer:
    def __init__(self, script: list[Reply]) -> None:
        self.script = script
        self.received: list[Received] = []
        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _answer(self) -> None:
                body = self._body()
                with outer.lock:
                    index = len(outer.received)
                    outer.received.append(
                        Received(
                            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    outer.times.append(time.monotonic())
                reply = outer.script[min(index, len(outer.script) - 1)]
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.chunks is None:
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                # Chunked, so that a drop is a broken body, not a close-delimited end.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in reply.chunks:
                    if chunk == b"<drop>":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = _answer
            do_POST = _answer

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def attempts(self) -> int:
        return len(self.received)


@contextlib.contextmanager
def scripted(*replies: Reply) -> Iterator[ScriptedServer]:
    server = ScriptedServer(list(replies))
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
