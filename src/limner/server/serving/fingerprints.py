"""What makes two requests "the same" for an Idempotency-Key: the route, then JSON by its parsed value
and multipart by its parts (the boundary changes on every retry of most clients), each without the
fields sent with a value that means the default; anything else by its bytes.

A multipart body is hashed while it arrives (`Fingerprint.feed`, with python-multipart's streaming
parser, the one Starlette reads forms with), so a 48 MB upload costs no second pass over the whole
body after it is read.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

from python_multipart.multipart import MultipartParser, parse_options_header

from limner import rules

#: Fields whose spec default, sent explicitly, means the same as the field absent
#: (docs/images-contract.md, section 10): such a request is the same request. Not response_format:
#: limner honours it for every model, so "url" sent is not "url" implied.
NO_OP_DEFAULTS = {k: v for k, v in rules.SPEC_DEFAULTS.items() if k != "response_format"}


def _no_op(name: str, value: object) -> bool:
    if name not in NO_OP_DEFAULTS or value is None:
        return value is None  # an explicit null means the default too
    default = NO_OP_DEFAULTS[name]
    return value == default or (isinstance(value, str) and value.strip().lower() == str(default).lower())


class _Parts:
    """python-multipart's callbacks: each part's name and data into the digest as they stream; a plain
    field's value is held (it is small) until its end, to leave out a no-op default."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.field = b""
        self.value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name = b""
        self.is_file = False
        self.data: list[bytes] = []

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self._add("field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("value", data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def _add(self, which: str, data: bytes) -> None:
        setattr(self, which, getattr(self, which) + data)

    def part_begin(self) -> None:
        self.headers, self.data = {}, []

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = options.get(b"name", b"")
        self.is_file = b"filename" in options
        if self.is_file:
            self.digest.update(self.name + b"\0")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            self.digest.update(data[start:end])
        else:
            self.data.append(data[start:end])

    def part_end(self) -> None:
        if not self.is_file:
            value = b"".join(self.data)
            if _no_op(self.name.decode("utf-8", "replace"), value.decode("utf-8", "replace")):
                return
            self.digest.update(self.name + b"\0" + value)
        self.digest.update(b"\0")


class Fingerprint:
    """Fed the body as it arrives (only multipart is hashed then); `hexdigest(body)` at its end."""

    def __init__(self, route: str, content_type: str) -> None:
        self.kind = content_type.split(";")[0].strip().lower()
        self._start = hashlib.sha256(route.encode() + b"\0" + self.kind.encode() + b"\0")
        self._parser: MultipartParser | None = None
        if self.kind == "multipart/form-data":
            _, options = parse_options_header(content_type)
            boundary = options.get(b"boundary")
            if boundary:
                self._parts = self._start.copy()
                self._parser = MultipartParser(boundary, cast(Any, _Parts(self._parts).callbacks()))

    def feed(self, chunk: bytes) -> None:
        if self._parser is not None:
            try:
                self._parser.write(chunk)
            except Exception:  # not valid multipart: hashed by its bytes instead
                self._parser = None

    def hexdigest(self, body: bytes, parsed: object = None) -> str:
        """`body`: all that was fed. JSON is hashed by its parsed value (`parsed`: the value the route's
        parsing read from it, when it did: not parsed twice), anything else by its bytes."""
        if self._parser is not None:
            try:
                self._parser.finalize()
                return self._parts.hexdigest()
            except Exception:  # a truncated body: by its bytes
                pass
        digest = self._start.copy()
        if self.kind == "application/json":
            try:
                if parsed is None:
                    parsed = json.loads(body)
                if isinstance(parsed, dict):
                    parsed = {k: v for k, v in parsed.items() if not _no_op(k, v)}
                digest.update(json.dumps(parsed, sort_keys=True).encode())
                return digest.hexdigest()
            except (ValueError, RecursionError):
                pass
        digest.update(body)
        return digest.hexdigest()


def fingerprint(route: str, content_type: str, body: bytes) -> str:
    """The fingerprint of a whole body at once."""
    print_ = Fingerprint(route, content_type)
    print_.feed(body)
    return print_.hexdigest(body)
