"""Request bodies of the three Images endpoints (docs/images-contract.md, sections 2 to 4), plus limner's extensions.

Closed enums are Literals so the schema documents the wire; which values a given model accepts is the
rule table's job (limner.rules), which narrows them per model with errors that name the field.
`size` and `model` are open strings in the spec and stay `str` here.
"""

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from limner.types._base import RequestModel

Quality = Literal["standard", "hd", "low", "medium", "high", "auto"]
ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]
Background = Literal["transparent", "opaque", "auto"]
Moderation = Literal["low", "auto"]
Style = Literal["vivid", "natural"]
InputFidelity = Literal["high", "low"]

#: limner's documented extensions (docs/images-contract.md, section 10), accepted on all three endpoints.
EXTENSION_FIELDS = ("seed", "negative_prompt", "num_inference_steps", "guidance_scale", "lora")


class _Extensions(RequestModel):
    seed: int | None = Field(default=None, description="limner extension: image i uses seed + i.")
    negative_prompt: str | None = Field(default=None, description="limner extension.")
    num_inference_steps: int | None = Field(default=None, description="limner extension, 1..150.")
    guidance_scale: float | None = Field(default=None, description="limner extension, 0..30.")
    lora: dict[str, float] | list[str] | None = Field(
        default=None,
        description="limner extension: LoRA adapters of the model, {name: scale} or [name, ...] (each at "
        "its configured scale). In a multipart form: that JSON, or names separated by commas.",
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_from_form(cls, value: Any) -> Any:
        """A form field is text: JSON ({"style": 0.8} or ["style"]) or names separated by commas."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except ValueError:
                return value  # refused below as what it is: not a table or a list
        return [name.strip() for name in text.split(",") if name.strip()]


class _Common(_Extensions):
    model: str | None = None
    n: int | None = None
    size: str | None = None
    user: str | None = None
    # Newer SDKs send safety_identifier in place of the deprecated `user`; accepted like `user`.
    safety_identifier: str | None = None


class CreateImageRequest(_Common):
    """POST /v1/images/generations (application/json)."""

    prompt: str
    quality: Quality | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None
    moderation: Moderation | None = None
    background: Background | None = None
    style: Style | None = None


class CreateImageEditRequest(_Common):
    """The scalar fields of POST /v1/images/edits (multipart/form-data); the files travel beside them."""

    prompt: str
    quality: Quality | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    stream: bool | None = None
    partial_images: int | None = None
    background: Background | None = None
    input_fidelity: InputFidelity | None = None


class ImageRef(RequestModel):
    """ImageRefParam: exactly one of image_url (https or data: URL) or file_id."""

    image_url: str | None = Field(default=None, max_length=20_971_520)
    file_id: str | None = None


class EditImageJsonRequest(_Common):
    """POST /v1/images/edits (application/json): GPT image models only."""

    images: list[ImageRef]
    prompt: str
    mask: ImageRef | None = None
    quality: Literal["low", "medium", "high", "auto"] | None = None
    input_fidelity: InputFidelity | None = None
    output_format: OutputFormat | None = None
    output_compression: int | None = None
    moderation: Moderation | None = None
    background: Background | None = None
    stream: bool | None = None
    partial_images: int | None = None


class CreateImageVariationRequest(_Common):
    """The scalar fields of POST /v1/images/variations (multipart/form-data); `image` travels beside."""

    response_format: ResponseFormat | None = None
