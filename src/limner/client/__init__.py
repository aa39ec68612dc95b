"""limner's Python client of the Images API: typed, sync and async, streaming, retrying.

    from limner.client import ApiClient, Configuration, ImagesApi

    with ApiClient(Configuration(host="http://127.0.0.1:8000/v1")) as client:
        result = ImagesApi(client).create_image(prompt="a red circle", size="256x256",
                                                response_format="b64_json")

It speaks to OpenAI and to ``limner serve`` alike, and shares its models with the server
(``limner.types``). Importing it loads no server, web framework, torch or diffusers module.
"""

from limner.client._async_client import AsyncApiClient
from limner.client._client import ApiClient
from limner.client._config import DEFAULT_HOST, AccessToken, Configuration
from limner.client._exceptions import (
    ApiConnectionError,
    ApiException,
    ApiResponseValidationError,
    ApiStreamError,
    ApiTimeoutError,
    BadRequestException,
    ConflictException,
    ForbiddenException,
    NotFoundException,
    OpenApiException,
    RateLimitException,
    ServiceException,
    UnauthorizedException,
    UnprocessableEntityException,
)
from limner.client._files import FileInput, sniff_content_type
from limner.client._images import AsyncImagesApi, ImagesApi
from limner.client._jobs import AsyncJobsApi, JobFailed, JobsApi
from limner.client._models_api import AsyncModelsApi, ModelsApi
from limner.client._response import ApiResponse
from limner.client._save import (
    async_image_bytes,
    async_save_image,
    async_save_images,
    image_bytes,
    save_image,
    save_images,
)
from limner.client._streaming import AsyncStream, Stream
from limner.types import (
    CreateImageEditRequest,
    CreateImageRequest,
    CreateImageVariationRequest,
    ErrorObject,
    ErrorResponse,
    Image,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImageJob,
    ImageJobList,
    ImagesResponse,
    ImagesUsage,
    Model,
    ModelList,
)

__all__ = [
    "DEFAULT_HOST",
    "AccessToken",
    "ApiClient",
    "ApiConnectionError",
    "ApiException",
    "ApiResponse",
    "ApiResponseValidationError",
    "ApiStreamError",
    "ApiTimeoutError",
    "AsyncApiClient",
    "AsyncImagesApi",
    "AsyncJobsApi",
    "AsyncModelsApi",
    "AsyncStream",
    "BadRequestException",
    "Configuration",
    "ConflictException",
    "CreateImageEditRequest",
    "CreateImageRequest",
    "CreateImageVariationRequest",
    "ErrorObject",
    "ErrorResponse",
    "FileInput",
    "ForbiddenException",
    "Image",
    "ImageEditCompletedEvent",
    "ImageEditPartialImageEvent",
    "ImageGenCompletedEvent",
    "ImageGenPartialImageEvent",
    "ImageJob",
    "ImageJobList",
    "ImagesApi",
    "ImagesResponse",
    "ImagesUsage",
    "JobFailed",
    "JobsApi",
    "Model",
    "ModelList",
    "ModelsApi",
    "NotFoundException",
    "OpenApiException",
    "RateLimitException",
    "ServiceException",
    "Stream",
    "UnauthorizedException",
    "UnprocessableEntityException",
    "async_image_bytes",
    "async_save_image",
    "async_save_images",
    "image_bytes",
    "save_image",
    "save_images",
    "sniff_content_type",
]
