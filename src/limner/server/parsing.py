"""Request bodies into wire models, every failure as a 400 that names its param."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from limner.errors import InvalidRequest
from limner.server.errors import from_validation_errors

M = TypeVar("M", bound=BaseModel)

JSON_HINT = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The API expects a JSON payload, but what was sent was not valid JSON.)"
)


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest(JSON_HINT) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def validate(model: type[M], data: dict[str, Any]) -> M:
    """Validate with `model`, dropping explicit nulls first ("null means use the default")."""
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None
