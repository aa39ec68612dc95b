"""The OpenAI error envelope: {"error": {"message", "type", "param", "code"}}."""

from limner.types._base import ResponseModel


class ErrorObject(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorObject
