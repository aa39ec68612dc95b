"""Request bodies into wire models, every failure as a 400 that names its param (pydantic's errors
included: from_validation_errors, which the app's error handlers use too)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from limner.errors import InvalidRequest, UnknownParameter

M = TypeVar("M", bound=BaseModel)

JSON_HINT = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)"
)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class HugeNumber:
    """A JSON integer too long to convert (Python refuses ints over 4300 digits): kept as a marker so
    that validation names the field it was sent in, instead of the parser failing the whole body."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"  # what an enum error message shows


def _parse_int(text: str) -> int | HugeNumber:
    try:
        return int(text)
    except ValueError:
        return HugeNumber(len(text))


async def json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body, parse_int=_parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest(JSON_HINT) from None
    except RecursionError:
        field = _deep_field(body)
        raise InvalidRequest(
            f"The JSON body nests too deeply{f' in {field!r}' if field else ''}.", param=field
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_text(data)
    request.state.json_object = data  # for the fingerprint of a request with a key: parsed once
    return data


def parsed_json_object(request: Request) -> dict[str, Any] | None:
    """The JSON object `json_object` read from this request's body, if it did."""
    data: dict[str, Any] | None = getattr(request.state, "json_object", None)
    return data


def check_text(value: Any, param: str | None = None) -> None:
    """Refuse strings that are not valid Unicode (a lone surrogate such as "\\ud800" is valid JSON but
    cannot be encoded to UTF-8: left in, it fails later, in a log line or a response, as a 500)."""
    if isinstance(value, str):
        if not _encodable(value):
            raise InvalidRequest(
                f"Invalid value for '{param}': the string is not valid Unicode (it holds a lone surrogate).",
                param=param,
                code="invalid_value",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            name = key if param is None else f"{param}.{key}"
            if not _encodable(key):
                safe = key.encode("utf-8", "backslashreplace").decode("utf-8")
                raise InvalidRequest(
                    f"Invalid parameter name {safe!r}: it is not valid Unicode.",
                    param=safe,
                    code="invalid_value",
                )
            check_text(item, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{param}[{index}]")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _deep_field(body: bytes, limit: int = 256) -> str | None:
    """The top-level key under which a JSON body nests past `limit` levels (only scanned after the
    parser gave up, so the cost is paid by that request alone)."""
    depth, in_string, escaped, key, last_string = 0, False, False, None, None
    start = 0
    for index, byte in enumerate(body):
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                last_string = body[start:index].decode("utf-8", "replace")
        elif char == '"':
            in_string, start = True, index + 1
        elif char == ":" and depth == 1:
            key = last_string
        elif char in "[{":
            depth += 1
            if depth > limit:
                return key
        elif char in "]}":
            depth -= 1
    return key


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate with `model`, dropping explicit nulls first ("null means use the default")."""
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def _param(loc: Sequence[Any]) -> str | None:
    """('body', 'images', 0, 'image_url') -> 'images[0].image_url'; FastAPI's 'body'/'query' dropped."""
    # A union's member appears in the location as its type ('lora', 'dict[str,float]'): not a field.
    parts = [p for p in loc if p not in ("body", "query", "form") and not (isinstance(p, str) and "[" in p)]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif out:
            out += f".{p}"
        else:
            out = str(p)
    return out or None


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "string": "a string",
    "str": "a string",
    "list": "an array",
    "dict": "an object",
    "model": "an object",
}


def _shown(value: Any, cap: int = 80) -> str:
    """A client value as an error message shows it: repr'd (escaped) and capped."""
    text = repr(value)
    return text if len(text) <= cap else text[:cap] + f"... ({len(text)} characters)"


def _described(value: Any) -> str:
    if isinstance(value, HugeNumber):
        return f"an integer of {value.digits} digits"
    return f"{type(value).__name__} {_shown(value)}"


def from_validation_errors(errors: Sequence[Any]) -> InvalidRequest:
    """The first pydantic error as an OpenAI-style 400 naming its param."""
    err = errors[0]
    loc = err.get("loc", ())
    param = _param(loc)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return UnknownParameter(param or "")
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        return InvalidRequest(
            f"Invalid value: {_shown(err.get('input'))}. Supported values are: {expected}.",
            param=param,
            code="invalid_value",
        )
    for suffix in ("_type", "_parsing"):
        if kind.endswith(suffix):
            name = kind[: -len(suffix)]
            if name == "model_attributes":
                name = "model"
            wanted = _TYPE_NAMES.get(name, name)
            return InvalidRequest(
                f"Invalid type for '{param}': expected {wanted}, but got {_described(err.get('input'))} "
                "instead.",
                param=param,
                code="invalid_type",
            )
    return InvalidRequest(
        f"Invalid value for '{param}': {err.get('msg', 'invalid')}.", param=param, code="invalid_value"
    )
