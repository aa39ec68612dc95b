from pydantic import BaseModel, ConfigDict


class RequestModel(BaseModel):
    """A request body: unknown fields are refused (the server answers 400 unknown_parameter)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseModel(BaseModel):
    """A response body: lenient, so that clients survive fields the API adds later."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
