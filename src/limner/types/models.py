"""GET /v1/models bodies."""

from typing import Literal

from limner.types._base import ResponseModel


class Model(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[Model]
