"""The wire schema, once: pydantic models for requests, responses, stream events and errors.

Both the server and the client import this package; it imports pydantic and nothing else of limner,
so that `import limner.client` stays light.
"""

from limner.types.errors import ErrorObject, ErrorResponse
from limner.types.events import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageEditStreamEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImageGenStreamEvent,
    ImageStreamEvent,
    parse_stream_event,
)
from limner.types.jobs import ImageJob, ImageJobList, JobProgress
from limner.types.models import Model, ModelList
from limner.types.requests import (
    EXTENSION_FIELDS,
    Background,
    CreateImageEditRequest,
    CreateImageRequest,
    CreateImageVariationRequest,
    EditImageJsonRequest,
    ImageRef,
    InputFidelity,
    Moderation,
    OutputFormat,
    Quality,
    ResponseFormat,
    Style,
)
from limner.types.responses import (
    Image,
    ImageGenUsage,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
    OutputTokensDetails,
)

__all__ = [
    "EXTENSION_FIELDS",
    "Background",
    "CreateImageEditRequest",
    "CreateImageRequest",
    "CreateImageVariationRequest",
    "EditImageJsonRequest",
    "ErrorObject",
    "ErrorResponse",
    "Image",
    "ImageEditCompletedEvent",
    "ImageEditPartialImageEvent",
    "ImageEditStreamEvent",
    "ImageGenCompletedEvent",
    "ImageGenPartialImageEvent",
    "ImageGenStreamEvent",
    "ImageGenUsage",
    "ImageJob",
    "ImageJobList",
    "ImageRef",
    "ImageStreamEvent",
    "ImagesResponse",
    "ImagesUsage",
    "InputFidelity",
    "InputTokensDetails",
    "JobProgress",
    "Model",
    "ModelList",
    "Moderation",
    "OutputFormat",
    "OutputTokensDetails",
    "Quality",
    "ResponseFormat",
    "Style",
    "parse_stream_event",
]
