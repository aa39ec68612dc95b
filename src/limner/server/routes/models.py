"""GET /v1/models and GET /v1/models/{id}: what this server serves."""

from __future__ import annotations

from fastapi import APIRouter, Request

from limner.errors import ModelNotFound
from limner.types import Model, ModelList

router = APIRouter()


def _model(request: Request, name: str) -> Model:
    served = request.app.state.registry.models[name]
    return Model(id=name, created=request.app.state.started, owned_by=served.profile.owned_by)


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model(request, name) for name in request.app.state.registry.models])


@router.get("/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Model:
    if model_id not in request.app.state.registry.models:
        raise ModelNotFound(model_id)
    return _model(request, model_id)
