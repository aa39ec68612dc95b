"""POST /v1/images/generations."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from limner import rules
from limner.engines.jobs import GenerateJob
from limner.errors import InvalidRequest
from limner.server.inputs.parsing import content_type, json_object, validate
from limner.server.serving.work import Work, note_model, prepare
from limner.types import CreateImageRequest

router = APIRouter()


@router.post("/images/generations")
async def create_image(request: Request) -> Response:
    return await request.app.state.jobs.respond(request, "generate", parse)


async def parse(request: Request) -> Work:
    """The request, checked and resolved into the engine's work (a 400 for anything invalid)."""
    if content_type(request) not in ("application/json", ""):
        raise InvalidRequest(
            f"Unsupported content type '{content_type(request)}' for this endpoint: send application/json."
        )
    data = await json_object(request)
    note_model(request, data.get("model"))
    req = validate(CreateImageRequest, data)
    state = request.app.state
    note_model(request, state.lookup.for_generation(req).name)  # the default, if none was named
    resolved = rules.resolve_generation(state.lookup, req)
    return prepare(request, resolved, lambda settings: settings.into(GenerateJob, prompt=resolved.prompt))
