"""GET /v1/models bodies."""

from typing import Any, Literal

from pydantic import Field

from limner.types._base import ResponseModel


class Model(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    #: limner extension: what the model accepts (operations, sizes or size rule, qualities, max n, max
    #: input images, mask, streaming, transparency, fields). OpenAI's servers do not send it.
    capabilities: dict[str, Any] | None = Field(default=None, description="limner extension.")
    #: limner extension: whether the model is loaded (`state`: loaded, loading, unloaded), the bytes it
    #: takes on its device (`estimated` from its files, `measured` once loaded) and for how long it has
    #: been idle; for an adapter's name (MODEL:ADAPTER), also `base` and `adapter`.
    residency: dict[str, Any] | None = Field(default=None, description="limner extension.")


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[Model]
