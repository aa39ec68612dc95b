"""ImagesResponse and its parts (docs/images-contract.md, section 5a)."""

from typing import Literal

from limner.types._base import ResponseModel


class Image(ResponseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(ResponseModel):
    text_tokens: int
    image_tokens: int


class OutputTokensDetails(ResponseModel):
    image_tokens: int
    text_tokens: int


class ImagesUsage(ResponseModel):
    """Usage on stream `completed` events (no output_tokens_details)."""

    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_tokens_details: InputTokensDetails


class ImageGenUsage(ImagesUsage):
    """Usage in ImagesResponse (GPT image models)."""

    output_tokens_details: OutputTokensDetails | None = None


class ImagesResponse(ResponseModel):
    created: int
    data: list[Image] | None = None
    background: Literal["transparent", "opaque"] | None = None
    output_format: Literal["png", "webp", "jpeg"] | None = None
    # The spec lists three sizes; gpt-image-2 and local models make others, so this is a free WxH.
    size: str | None = None
    quality: Literal["low", "medium", "high"] | None = None
    usage: ImageGenUsage | None = None
