"""Validate bodies against the schemas of the published OpenAPI spec (a copy in tests/data)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "openai-images-openapi.yaml"


@functools.cache
def spec() -> dict[str, Any]:
    with open(SPEC_PATH) as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


def validate(instance: Any, schema_name: str, *, free_size: bool = False) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components/schemas/<schema_name>.

    free_size: the spec lists only three sizes for `size`, but gpt-image-2 and local models make any
    WxH (newer SDKs type it as a free string); with this flag `size` only has to be a WxH string.
    """
    components = copy.deepcopy(spec()["components"])
    if free_size:
        for name in (
            "ImagesResponse",
            "ImageGenPartialImageEvent",
            "ImageGenCompletedEvent",
            "ImageEditPartialImageEvent",
            "ImageEditCompletedEvent",
        ):
            components["schemas"][name]["properties"]["size"] = {
                "type": "string",
                "pattern": r"^(auto|\d+x\d+)$",
            }
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


def validate_error(body: Any) -> None:
    validate(body, "ErrorResponse")
