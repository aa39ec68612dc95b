"""File inputs for edits and variations: every accepted form becomes one multipart part.

Accepted forms (``FileInput``): a path (str or os.PathLike), bytes, a binary file object, a
``(filename, content)`` or ``(filename, content, content_type)`` tuple, or a PIL image. The content
type comes from the bytes (magic numbers), so an unnamed buffer or a misnamed file is still sent as
what it is; an explicit content type in a tuple wins, because the caller said so.

Everything that can be read again (bytes, paths, seekable files, PIL images) is read into memory and
can be re-sent on a retry. A non-seekable stream (a pipe, a socket) is sent as it is read, and marks the
request as not replayable, so the retry policy never re-sends half a body.
"""

from __future__ import annotations

import io
import mimetypes
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FileContent = bytes | bytearray | memoryview | IO[bytes]
# The last member stands for a PIL.Image.Image: typed as Any so that PIL is never imported here.
FileInput = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | IO[bytes]
    | tuple[str | None, FileContent]
    | tuple[str | None, FileContent, str | None]
    | Any
)

_SNIFF_BYTES = 16

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def sniff_content_type(head: bytes) -> str | None:
    """The image type named by the first bytes (magic numbers), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def extension_for(content_type: str | None) -> str:
    return _EXTENSIONS.get(content_type or "", "bin")


class _PrefixedReader:
    """A non-seekable stream whose first bytes were read to sniff its type: gives them back first.

    It has no seek/tell/fileno on purpose, so the multipart encoder streams it with chunked encoding.
    """

    def __init__(self, prefix: bytes, raw: IO[bytes]) -> None:
        self._prefix = prefix
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._raw.read(size)


@dataclass(frozen=True)
class FilePart:
    """One multipart file part, ready for httpx2's ``files=``."""

    field: str
    filename: str
    content: bytes | _PrefixedReader
    content_type: str

    @property
    def replayable(self) -> bool:
        return isinstance(self.content, bytes)

    def as_httpx(self) -> tuple[str, tuple[str, Any, str]]:
        return self.field, (self.filename, self.content, self.content_type)


def _is_pil_image(value: object) -> bool:
    # Only look for PIL when the caller has imported it: a PIL image cannot exist otherwise.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def _pil_to_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        image = image.convert("RGBA")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_file_object(fileobj: IO[bytes]) -> bytes | _PrefixedReader:
    if isinstance(fileobj, io.TextIOBase):
        raise TypeError("Image files must be opened in binary mode ('rb'), not text mode.")
    seekable = getattr(fileobj, "seekable", None)
    try:
        can_seek = bool(seekable()) if callable(seekable) else False
    except (OSError, ValueError):
        can_seek = False
    if can_seek:
        data = fileobj.read()
    else:
        prefix = fileobj.read(_SNIFF_BYTES)
        return _PrefixedReader(bytes(prefix), fileobj)
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"The file object returned {type(data).__name__}, not bytes.")
    return bytes(data)


def to_file_part(field: str, value: FileInput) -> FilePart:
    """Turn any accepted file form into a FilePart; the content type is sniffed from the bytes."""
    filename: str | None = None
    content_type: str | None = None
    content: bytes | _PrefixedReader

    if isinstance(value, tuple):
        if len(value) not in (2, 3):
            raise TypeError("A file tuple is (filename, content) or (filename, content, content_type).")
        filename = value[0]
        raw = value[1]
        content_type = value[2] if len(value) == 3 else None
        content = bytes(raw) if isinstance(raw, bytes | bytearray | memoryview) else _read_file_object(raw)
    elif isinstance(value, str | os.PathLike):
        path = Path(os.fspath(value))
        content = path.read_bytes()
        filename = path.name
    elif isinstance(value, bytes | bytearray | memoryview):
        content = bytes(value)
    elif _is_pil_image(value):
        content = _pil_to_png(value)
    elif callable(getattr(value, "read", None)):
        content = _read_file_object(value)
        name = getattr(value, "name", None)
        filename = Path(name).name if isinstance(name, str) else None
    else:
        raise TypeError(
            f"Unsupported file input {type(value).__name__}: pass a path, bytes, a binary file object, "
            "a (filename, bytes, content_type) tuple or a PIL image."
        )

    head = content[:_SNIFF_BYTES] if isinstance(content, bytes) else content._prefix
    sniffed = sniff_content_type(head)
    if content_type is None:
        content_type = sniffed or (mimetypes.guess_type(filename)[0] if filename else None)
        content_type = content_type or "application/octet-stream"
    if not filename:
        filename = f"{field.rstrip('[]')}.{extension_for(content_type)}"
    return FilePart(field, filename, content, content_type)


def file_parts(field: str, value: FileInput | Sequence[FileInput]) -> list[FilePart]:
    """A single file is sent as ``field``; a list as several ``field[]`` parts, as the API and SDK do."""
    if isinstance(value, list):
        if not value:
            raise ValueError(f"'{field}' is an empty list: pass at least one image.")
        return [to_file_part(f"{field}[]", item) for item in value]
    return [to_file_part(field, value)]
