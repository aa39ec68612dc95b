"""limner's own OpenAPI document: what `/openapi.json` serves and `/docs` shows.

The image routes read their bodies by hand (JSON or multipart, limits enforced while reading), so
FastAPI cannot see them; this module describes them from the same pydantic models the server validates
with (`limner.types`), so that the document and the server cannot drift apart. A client generated from
it (openapi-python-client, openapi-generator) can generate, edit with image and mask, vary, stream,
and read the error envelope.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from limner import __version__, types
from limner.rules import OPENAI_PROFILES

REF = "#/components/schemas/{model}"

#: Any WxH the rules may accept (which sizes a model takes is the rule table's job: a 400 says so).
SIZE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$",
    "description": "WIDTHxHEIGHT, or auto. Fixed lists for DALL-E and most GPT image models "
    "(per model: GET /v1/models); gpt-image-2 and local models take any WxH within their limits "
    "(GET /v1/models lists them).",
    "examples": ["1024x1024", "1536x1024", "1024x1536", "256x256", "512x512", "auto"],
}
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

_ERRORS = {
    "400": "Invalid request: `error.param` names the field.",
    "401": "Missing or wrong API key.",
    "404": "Unknown model (`model_not_found`) or route.",
    "413": "The request body is over the server's limit.",
    "429": "The model's queue is full: retry after the Retry-After header's seconds.",
    "500": "Server error (no internals in the message).",
    "503": "A model or the key database is unavailable.",
    "507": "Image storage is unavailable (url responses only).",
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _schemas() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (types.CreateImageRequest, "validation"),
        (types.CreateImageEditRequest, "validation"),
        (types.EditImageJsonRequest, "validation"),
        (types.CreateImageVariationRequest, "validation"),
        (types.ImagesResponse, "serialization"),
        (types.ErrorResponse, "serialization"),
        (types.ImageGenPartialImageEvent, "serialization"),
        (types.ImageGenCompletedEvent, "serialization"),
        (types.ImageEditPartialImageEvent, "serialization"),
        (types.ImageEditCompletedEvent, "serialization"),
        (types.ModelList, "serialization"),
    ]
    _, document = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = document["$defs"]
    for name in ("CreateImageRequest", "CreateImageEditRequest", "EditImageJsonRequest"):
        schemas[name]["properties"]["size"] = _nullable(SIZE_SCHEMA)
    schemas["CreateImageVariationRequest"]["properties"]["size"] = _nullable(SIZE_SCHEMA)
    for schema in schemas.values():
        model = schema.get("properties", {}).get("model")
        if model is not None:
            model["examples"] = list(OPENAI_PROFILES)
    # Multipart bodies: the scalar fields plus the files the server reads beside them.
    edit = copy.deepcopy(schemas["CreateImageEditRequest"])
    edit["title"] = "CreateImageEditMultipartRequest"
    edit["properties"] = {
        "image": {
            "anyOf": [BINARY, {"type": "array", "items": BINARY, "maxItems": 16}],
            "description": "The image to edit, or several (GPT image models: up to 16).",
        },
        "mask": {**BINARY, "description": "A PNG whose alpha 0 marks the area to edit."},
        **edit["properties"],
    }
    edit["required"] = ["image", "prompt"]
    schemas["CreateImageEditMultipartRequest"] = edit
    variation = copy.deepcopy(schemas["CreateImageVariationRequest"])
    variation["title"] = "CreateImageVariationMultipartRequest"
    variation["properties"] = {"image": {**BINARY, "description": "A square PNG."}, **variation["properties"]}
    variation["required"] = ["image"]
    schemas["CreateImageVariationMultipartRequest"] = variation
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _responses(events: tuple[str, str] | None) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": _ref("ImagesResponse")}}
    if events is not None:
        ok["text/event-stream"] = {
            "schema": {
                "oneOf": [_ref(events[0]), _ref(events[1])],
                "description": "With `stream: true`: each image's partial images, then its completed "
                "event, as server-sent events.",
            }
        }
    responses: dict[str, Any] = {
        "200": {
            "description": "The images.",
            "headers": {
                "x-request-id": {"schema": {"type": "string"}},
                "openai-processing-ms": {"schema": {"type": "integer"}},
            },
            "content": ok,
        }
    }
    for status, description in _ERRORS.items():
        entry: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        }
        if status == "429":
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        responses[status] = entry
    return responses


def _image_paths() -> dict[str, Any]:
    return {
        "/v1/images/generations": {
            "post": {
                "operationId": "createImage",
                "summary": "Create images from a prompt.",
                "tags": ["Images"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateImageRequest")}},
                },
                "responses": _responses(("ImageGenPartialImageEvent", "ImageGenCompletedEvent")),
            }
        },
        "/v1/images/edits": {
            "post": {
                "operationId": "createImageEdit",
                "summary": "Edit images with a prompt and an optional mask.",
                "tags": ["Images"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _ref("CreateImageEditMultipartRequest"),
                            "encoding": {"image": {"contentType": "image/png, image/jpeg, image/webp"}},
                        },
                        "application/json": {"schema": _ref("EditImageJsonRequest")},
                    },
                },
                "responses": _responses(("ImageEditPartialImageEvent", "ImageEditCompletedEvent")),
            }
        },
        "/v1/images/variations": {
            "post": {
                "operationId": "createImageVariation",
                "summary": "Make variations of an image.",
                "tags": ["Images"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": _ref("CreateImageVariationMultipartRequest")}
                    },
                },
                "responses": _responses(None),
            }
        },
    }


def build(app: FastAPI) -> dict[str, Any]:
    """The whole document: FastAPI's view of the plain routes, the image routes described here."""
    document = get_openapi(
        title="limner",
        version=__version__,
        openapi_version="3.1.0",
        summary="A self-hosted implementation of the OpenAI Images API.",
        description="Point any client of the Images API at this server by changing its base URL. "
        "limner's extensions (`seed`, `negative_prompt`, `num_inference_steps`, `guidance_scale`) are "
        "ordinary fields of each request.",
        routes=app.routes,
    )
    paths = document.setdefault("paths", {})
    paths.update(_image_paths())
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_schemas())
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `limner keys create` (needed once a key exists).",
        }
    }
    for path, item in paths.items():
        if path.startswith("/v1/"):
            for operation in item.values():
                operation["security"] = [{"bearerAuth": []}]
    return document


def install(app: FastAPI) -> None:
    """Serve the document at /openapi.json, built once on first use."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cache:
            cache.update(build(app))
        return cache

    app.openapi = openapi  # type: ignore[method-assign]
