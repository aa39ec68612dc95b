"""GET /v1/models and GET /v1/models/{id}: what this server serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from limner import rules
from limner.engines.base import EngineInfo
from limner.errors import ModelNotFound
from limner.types import EXTENSION_FIELDS, Model, ModelList

router = APIRouter(tags=["Models"])


def _model(request: Request, name: str, adapter: str | None = None) -> Model:
    state = request.app.state
    served, engine = state.registry.engine_for(name)
    residency = state.scheduler.residency
    held = residency.snapshot()[served.engine_key]
    shown = {k: held[k] for k in ("state", "bytes", "idle_seconds", "pinned")}
    if adapter is not None:
        shown |= {"base": name, "adapter": adapter}
    elif engine.info.adapters:
        shown["adapters"] = engine.adapters()
    return Model(
        id=name if adapter is None else f"{name}:{adapter}",
        created=state.started,
        owned_by=served.profile.owned_by,
        capabilities=capabilities(served.profile, engine.info),
        residency=shown,
    )


def capabilities(profile: rules.ModelProfile, info: EngineInfo) -> dict[str, Any]:
    """What the model accepts, from the same rule profile and engine info that refuse what it does not:
    an extra field on each model object (clients that do not know it ignore it; the playground builds
    its form from it). For a diffusers model, `family`, `pipeline`, `edits` (image-to-image or
    reference images) and `guidance` (what guidance_scale drives: cfg, embedded, true_cfg) say how."""
    refused = {
        "negative_prompt": not info.negative_prompt,
        "guidance_scale": not info.guidance_scale,
    }
    fields = ["response_format", *(f for f in EXTENSION_FIELDS if not refused.get(f))]
    if profile.gpt_fields:
        fields += [
            "background",
            "moderation",
            "output_format",
            "output_compression",
            "stream",
            "partial_images",
        ]
    if profile.input_fidelity and info.input_fidelity:
        fields.append("input_fidelity")
    if profile.style:
        fields.append("style")
    rule = None
    if profile.free_size:
        rule = {
            "multiple": profile.size_multiple,
            "max_side": profile.max_side,
            "max_pixels": profile.max_pixels,
            "max_aspect": profile.max_aspect,
        }
    edits = "edit" in profile.operations
    return {
        **{k: v for k, v in info.extras.items() if k in ("family", "pipeline", "guidance", "edits")},
        "operations": sorted(profile.operations),
        "sizes": list(profile.sizes),
        "size_rule": rule,
        "auto_size": profile.gpt_fields,
        "default_size": profile.default_size,
        "qualities": list(profile.qualities),
        "max_n": min(10, profile.max_n),
        "max_images": profile.edit_max_images if edits else 0,
        "mask": edits and info.mask,
        "streaming": profile.gpt_fields,
        "transparency": profile.gpt_fields and info.transparency,
        "negative_prompt": info.negative_prompt,
        "guidance_scale": info.guidance_scale,
        "response_formats": ["url", "b64_json"],
        "default_response_format": profile.default_response_format,
        "fields": sorted(fields),
    }


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    """Every served name, and after each model with LoRA adapters one name MODEL:ADAPTER per adapter
    (so that clients that can only pick a model can use them)."""
    registry = request.app.state.registry
    data = []
    for name in registry.models:
        data.append(_model(request, name))
        data += [_model(request, name, adapter) for adapter in registry.adapters_of(name)]
    return ModelList(data=data)


@router.get("/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Model:
    base, adapter = request.app.state.lookup.split(model_id)
    if base not in request.app.state.registry.models:
        raise ModelNotFound(model_id)
    return _model(request, base, adapter)
