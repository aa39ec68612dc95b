"""POST /v1/images/edits: multipart (files) or JSON (image_url references, GPT image models)."""

from __future__ import annotations

from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from limner import rules
from limner.engines.jobs import EditJob
from limner.errors import InvalidRequest
from limner.server.inputs import uploads
from limner.server.inputs.forms import check_part_kinds, read_form
from limner.server.inputs.parsing import content_type, json_object, validate
from limner.server.serving.work import Work, note_model, prepare
from limner.types import CreateImageEditRequest, EditImageJsonRequest, ImageRef

router = APIRouter()

FILE_FIELDS = ("image", "image[]", "mask")


@router.post("/images/edits")
async def create_image_edit(request: Request) -> Response:
    return await request.app.state.jobs.respond(request, "edit", parse)


async def parse(request: Request) -> Work:
    """The request (multipart or JSON), checked and resolved into the engine's work."""
    kind = content_type(request)
    if kind == "application/json":
        return await _json_edit(request)
    if kind != "multipart/form-data":
        raise InvalidRequest(
            f"Unsupported content type '{kind}' for this endpoint: send multipart/form-data (files) or "
            "application/json (image_url references)."
        )
    settings = request.app.state.settings
    form = await read_form(
        request, max_file_bytes=settings.max_upload_bytes, max_files=rules.MAX_IMAGES_PER_EDIT + 1
    )
    try:
        check_part_kinds(form, file_fields=FILE_FIELDS, text_fields=CreateImageEditRequest.model_fields)
        note_model(request, form.fields.get("model"))
        req = validate(CreateImageEditRequest, dict(form.fields))
        profile = request.app.state.lookup.for_edit(req.model)
        note_model(request, profile.name)
        sources: list[BinaryIO] = [
            u.file for u in form.files.get("image", []) + form.files.get("image[]", [])
        ]
        masks = form.files.get("mask", [])
        if len(masks) > 1:
            raise InvalidRequest("Only one mask may be sent.", param="mask")
        return await _edit(request, req, profile, sources, masks[0].file if masks else None)
    finally:
        form.close()


async def _edit(
    request: Request,
    req: CreateImageEditRequest | EditImageJsonRequest,
    profile: rules.ModelProfile,
    sources: list[Any],
    mask_source: Any,
    *,
    image_param: str = "image",
) -> Work:
    uploads.check_count(profile, len(sources))
    rules.check_prompt(profile, req.prompt)  # cheap checks before any image is decoded
    max_pixels = request.app.state.settings.max_input_pixels
    # JSON edits name the failing item (`images[1]`), as the body does; multipart names the field.
    images: list[Image.Image] = [
        await uploads.decode(src, param=image_param.format(index=i), profile=profile, max_pixels=max_pixels)
        for i, src in enumerate(sources)
    ]
    mask = await uploads.edit_mask(profile, images, mask_source, max_pixels=max_pixels)
    resolved = rules.resolve_edit(request.app.state.lookup, req, input_size=images[0].size)
    return prepare(
        request,
        resolved,
        lambda settings: settings.into(
            EditJob, prompt=resolved.prompt, images=images, mask=mask, input_fidelity=resolved.input_fidelity
        ),
        input_sizes=[im.size for im in images],
    )


async def _json_edit(request: Request) -> Work:
    data = await json_object(request)
    note_model(request, data.get("model"))
    req = validate(EditImageJsonRequest, data)
    profile = request.app.state.lookup.for_edit(req.model)
    note_model(request, profile.name)
    if not profile.gpt_fields:
        raise InvalidRequest(
            f"The JSON body is for GPT image models; model '{profile.name}' edits take multipart/form-data.",
            param="model",
        )
    if not req.images:
        raise InvalidRequest("'images' must hold at least one image.", param="images")
    uploads.check_count(profile, len(req.images))
    sources = [await _fetch(request, ref, f"images[{i}]") for i, ref in enumerate(req.images)]
    mask = await _fetch(request, req.mask, "mask") if req.mask is not None else None
    return await _edit(request, req, profile, sources, mask, image_param="images[{index}]")


async def _fetch(request: Request, ref: ImageRef, param: str) -> bytes:
    if ref.file_id is not None and ref.image_url is not None:
        raise InvalidRequest(f"'{param}' must have exactly one of image_url or file_id.", param=param)
    if ref.file_id is not None:
        raise InvalidRequest(
            "file_id references are not supported: this server has no Files API. Send the image as "
            "image_url instead, either a data: URL (data:image/png;base64,...) or an http(s) URL.",
            param="images" if param.startswith("images") else param,
            code="unsupported_parameter",
        )
    if not ref.image_url:
        raise InvalidRequest(f"'{param}' must have an image_url.", param=param)
    from limner.server.inputs.fetch import (
        fetch_image_url,  # only JSON edits fetch; keeps httpx2 off the start-up path
    )

    settings = request.app.state.settings
    return await fetch_image_url(
        ref.image_url,
        param=param,
        allow_private=settings.allow_private_image_urls,
        timeout=settings.image_url_timeout,
        max_bytes=settings.image_url_max_bytes,
    )
