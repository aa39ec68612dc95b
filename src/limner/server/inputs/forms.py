"""Multipart bodies with limits enforced while they are read.

Starlette bounds text fields but not files. Here each file part is capped as it streams in: past the
cap its bytes are discarded (not buffered, not spooled), the rest of the body is drained so that the
client still reads a clean 400 instead of a broken pipe, and the error names the field. Files spool to
disk past 1 MB, so memory stays bounded whatever the upload. The whole body is capped separately by
the body-limit middleware (413).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from limner.errors import InvalidImage, InvalidRequest, UnknownParameter

#: The biggest text field: a 32000-character prompt in UTF-8, with room to spare.
MAX_FIELD_BYTES = 256 * 1024


class _CappedParser(MultiPartParser):
    def __init__(self, *args: object, max_file_bytes: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_file_bytes = max_file_bytes
        self.oversized: str | None = None
        self.long_field: str | None = None
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:
            if len(self._current_part.data) + end - start > self.max_part_size:
                # Starlette raises here with no field name; note the field and drop its bytes, so that
                # the error names it and the client still reads a clean 400.
                self.long_field = self.long_field or self._current_part.field_name
                return
        else:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                self.oversized = self.oversized or self._current_part.field_name
                return  # discard: the part is refused, so nothing of it is kept
        super().on_part_data(data, start, end)


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[UploadFile]] = field(default_factory=dict)

    def close(self) -> None:
        for uploads in self.files.values():
            for upload in uploads:
                upload.file.close()


async def read_form(request: Request, *, max_file_bytes: int, max_files: int, max_fields: int = 64) -> Form:
    parser = _CappedParser(
        request.headers,
        request.stream(),
        max_files=max_files,
        max_fields=max_fields,
        max_part_size=MAX_FIELD_BYTES,
        max_file_bytes=max_file_bytes,
    )
    try:
        data = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many files"):
            raise InvalidImage(
                f"Too many files: at most {max_files} may be sent ({max_files - 1} images and a mask "
                "for edits).",
                param="image",
            ) from None
        raise InvalidRequest(f"Invalid multipart body: {exc}") from None
    form = Form()
    for name, value in data.multi_items():
        if isinstance(value, UploadFile):
            form.files.setdefault(name, []).append(value)
        elif name in form.fields:
            form.close()
            raise InvalidRequest(f"The field '{name}' was sent more than once.", param=name)
        else:
            form.fields[name] = value
    if parser.long_field:
        form.close()
        raise InvalidRequest(
            f"Invalid '{parser.long_field}': the field is too long (the limit is {MAX_FIELD_BYTES // 1024} KB).",
            param=_public_param(parser.long_field),
            code="string_above_max_length",
        )
    if parser.oversized:
        form.close()
        mib = max_file_bytes / (1024 * 1024)
        raise InvalidImage(
            f"The file for '{parser.oversized}' is too large: the limit is {mib:g} MB per file.",
            param=_public_param(parser.oversized),
        )
    return form


def check_part_kinds(form: Form, *, file_fields: Collection[str], text_fields: Collection[str]) -> None:
    """A known field sent as the wrong kind of part is a 400 that says what it must be (a client that
    sends `image` as text has a bug to fix, which `unknown_parameter` would hide); an unknown file
    part is `unknown_parameter` as usual (unknown text parts are the request model's to refuse)."""
    for name in form.fields:
        if name in file_fields:
            param = _public_param(name)
            raise InvalidRequest(
                f"'{param}' must be a file upload (a multipart part with a filename), not a text field.",
                param=param,
                code="invalid_type",
            )
    for name in form.files:
        if name in file_fields:
            continue
        if name in text_fields:
            raise InvalidRequest(
                f"'{name}' must be a text field, not a file upload.", param=name, code="invalid_type"
            )
        raise UnknownParameter(name)


def _public_param(name: str) -> str:
    """The param an error names: `image[]` parts are the `image` field (as OpenAI reports it)."""
    return "image" if name == "image[]" else name
