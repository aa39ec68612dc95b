"""Server-sent stream events (docs/images-contract.md, section 5b): partial images and completed images."""

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from limner.types._base import ResponseModel
from limner.types.responses import ImagesUsage


class _ImageEvent(ResponseModel):
    b64_json: str
    created_at: int
    size: str
    quality: str
    background: str
    output_format: str


class ImageGenPartialImageEvent(_ImageEvent):
    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"
    partial_image_index: int


class ImageGenCompletedEvent(_ImageEvent):
    type: Literal["image_generation.completed"] = "image_generation.completed"
    usage: ImagesUsage


class ImageEditPartialImageEvent(_ImageEvent):
    type: Literal["image_edit.partial_image"] = "image_edit.partial_image"
    partial_image_index: int


class ImageEditCompletedEvent(_ImageEvent):
    type: Literal["image_edit.completed"] = "image_edit.completed"
    usage: ImagesUsage


ImageGenStreamEvent = Annotated[
    ImageGenPartialImageEvent | ImageGenCompletedEvent, Field(discriminator="type")
]
ImageEditStreamEvent = Annotated[
    ImageEditPartialImageEvent | ImageEditCompletedEvent, Field(discriminator="type")
]
ImageStreamEvent = Annotated[
    ImageGenPartialImageEvent | ImageGenCompletedEvent | ImageEditPartialImageEvent | ImageEditCompletedEvent,
    Field(discriminator="type"),
]

_stream_event_adapter: TypeAdapter[Any] = TypeAdapter(ImageStreamEvent)


def parse_stream_event(data: Any) -> Any:
    """Parse one event's JSON (a dict or a str) into its typed model, by its `type`."""
    if isinstance(data, str | bytes):
        return _stream_event_adapter.validate_json(data)
    return _stream_event_adapter.validate_python(data)
