"""POST /v1/images/variations (multipart; dall-e-2 rules, and local models)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from limner import rules
from limner.engines.jobs import VaryJob
from limner.errors import InvalidRequest
from limner.server.inputs import uploads
from limner.server.inputs.forms import check_part_kinds, read_form
from limner.server.inputs.parsing import content_type, validate
from limner.server.serving.work import Work, note_model, prepare
from limner.types import CreateImageVariationRequest

router = APIRouter()


@router.post("/images/variations")
async def create_image_variation(request: Request) -> Response:
    return await request.app.state.jobs.respond(request, "vary", parse)


async def parse(request: Request) -> Work:
    """The request, checked and resolved into the engine's work (a 400 for anything invalid)."""
    if content_type(request) != "multipart/form-data":
        raise InvalidRequest(
            f"Unsupported content type '{content_type(request)}' for this endpoint: send multipart/form-data."
        )
    settings = request.app.state.settings
    form = await read_form(request, max_file_bytes=settings.max_upload_bytes, max_files=2)
    try:
        check_part_kinds(form, file_fields=("image",), text_fields=CreateImageVariationRequest.model_fields)
        note_model(request, form.fields.get("model"))
        req = validate(CreateImageVariationRequest, dict(form.fields))
        profile = request.app.state.lookup.for_variation(req.model)
        note_model(request, profile.name)
        files = form.files.get("image", [])
        if len(files) != 1:
            uploads.check_count(profile, len(files))
            raise InvalidRequest("Send exactly one image.", param="image")
        resolved = rules.resolve_variation(request.app.state.lookup, req)
        image = await uploads.decode(
            files[0].file, param="image", profile=profile, max_pixels=settings.max_input_pixels
        )
    finally:
        form.close()
    return prepare(request, resolved, lambda settings: settings.into(VaryJob, image=image))
