"""ImagesApi and AsyncImagesApi: the seeds' three operations, each also ``*_with_http_info``.

Requests are validated client-side against the same models the server parses with (limner.types),
so a typo in a field name fails here with a pydantic ValidationError instead of a round trip. Fields
newer than limner.types can still be sent through ``extra_body``. limner's extensions (seed,
negative_prompt, num_inference_steps, guidance_scale) are ordinary fields of the models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import httpx2
from pydantic import BaseModel

from limner.client._async_client import AsyncApiClient
from limner.client._base import Call, encode_json, form_value, new_idempotency_key, parse_body
from limner.client._client import ApiClient
from limner.client._files import FileInput, file_parts
from limner.client._response import ApiResponse
from limner.client._streaming import AsyncStream, Stream
from limner.types import (
    CreateImageEditRequest,
    CreateImageRequest,
    CreateImageVariationRequest,
    ImagesResponse,
)

Timeout = float | httpx2.Timeout | None


def _validated(model: type[BaseModel], base: BaseModel | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a request model and keyword fields (keywords win) and validate them as ``model``."""
    merged = base.model_dump(exclude_unset=True) if base is not None else {}
    merged.update(fields)
    return model.model_validate(merged).model_dump(mode="json", exclude_none=True)


def generation_call(
    request: CreateImageRequest | None,
    fields: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
) -> Call:
    payload = {**_validated(CreateImageRequest, request, fields), **(extra_body or {})}
    return Call(
        "POST",
        "/images/generations",
        json_body=encode_json(payload),
        stream=bool(payload.get("stream")),
        extra_headers=dict(extra_headers or {}),
        timeout=timeout,
        idempotency_key=new_idempotency_key(),
    )


def _multipart_call(
    path: str,
    scalars: Mapping[str, Any],
    files: list[Any],
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
) -> Call:
    merged = {**scalars, **(extra_body or {})}
    form = [(name, form_value(value)) for name, value in merged.items() if value is not None]
    return Call(
        "POST",
        path,
        form=form,
        files=files,
        stream=bool(merged.get("stream")),
        extra_headers=dict(extra_headers or {}),
        timeout=timeout,
        idempotency_key=new_idempotency_key(),
    )


def edit_call(
    image: FileInput | Sequence[FileInput],
    prompt: str,
    mask: FileInput | None,
    opts: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
) -> Call:
    scalars = _validated(CreateImageEditRequest, None, {"prompt": prompt, **opts})
    files = file_parts("image", image) + (file_parts("mask", mask) if mask is not None else [])
    return _multipart_call("/images/edits", scalars, files, extra_body, extra_headers, timeout)


def variation_call(
    image: FileInput,
    opts: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
) -> Call:
    scalars = _validated(CreateImageVariationRequest, None, opts)
    return _multipart_call(
        "/images/variations", scalars, file_parts("image", image), extra_body, extra_headers, timeout
    )


def parse_images_response(response: httpx2.Response) -> ImagesResponse:
    return parse_body(ImagesResponse, response, "an ImagesResponse")


class ImagesApi:
    """The synchronous Images API. ``ImagesApi()`` uses a default ApiClient (Configuration from env)."""

    def __init__(self, api_client: ApiClient | None = None) -> None:
        self.api_client = api_client or ApiClient()

    def __enter__(self) -> ImagesApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.api_client.close()

    def _result(self, call: Call) -> ApiResponse[Any]:
        response, retries = self.api_client.send(call)
        data: ImagesResponse | Stream = (
            Stream(response, max_event_bytes=self.api_client.configuration.max_stream_event_bytes)
            if call.stream
            else parse_images_response(response)
        )
        return ApiResponse(data, response.status_code, response.headers, retries)

    # createImage: POST /images/generations

    @overload
    def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> Stream: ...

    @overload
    def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: Literal[False] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImagesResponse: ...

    def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImagesResponse | Stream:
        """Create images from a prompt: pass a CreateImageRequest, or its fields as keywords."""
        return self.create_image_with_http_info(
            create_image_request,
            stream=stream,
            extra_body=extra_body,
            extra_headers=extra_headers,
            timeout=timeout,
            **fields,
        ).data

    def create_image_with_http_info(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ApiResponse[Any]:
        if stream is not None:
            fields["stream"] = stream
        return self._result(generation_call(create_image_request, fields, extra_body, extra_headers, timeout))

    # createImageEdit: POST /images/edits (multipart)

    @overload
    def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> Stream: ...

    @overload
    def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: Literal[False] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse: ...

    def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse | Stream:
        """Edit one image, or several (a list), with a prompt and an optional mask."""
        return self.create_image_edit_with_http_info(
            image,
            prompt,
            mask=mask,
            stream=stream,
            extra_body=extra_body,
            extra_headers=extra_headers,
            timeout=timeout,
            **opts,
        ).data

    def create_image_edit_with_http_info(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ApiResponse[Any]:
        if stream is not None:
            opts["stream"] = stream
        return self._result(edit_call(image, prompt, mask, opts, extra_body, extra_headers, timeout))

    # createImageVariation: POST /images/variations (multipart)

    def create_image_variation(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse:
        """Make variations of one image."""
        return self.create_image_variation_with_http_info(
            image, extra_body=extra_body, extra_headers=extra_headers, timeout=timeout, **opts
        ).data

    def create_image_variation_with_http_info(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ApiResponse[Any]:
        return self._result(variation_call(image, opts, extra_body, extra_headers, timeout))


class AsyncImagesApi:
    """The asynchronous Images API: the same methods as ImagesApi, as coroutines."""

    def __init__(self, api_client: AsyncApiClient | None = None) -> None:
        self.api_client = api_client or AsyncApiClient()

    async def __aenter__(self) -> AsyncImagesApi:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.api_client.close()

    async def _result(self, call: Call) -> ApiResponse[Any]:
        response, retries = await self.api_client.send(call)
        data: ImagesResponse | AsyncStream = (
            AsyncStream(response, max_event_bytes=self.api_client.configuration.max_stream_event_bytes)
            if call.stream
            else parse_images_response(response)
        )
        return ApiResponse(data, response.status_code, response.headers, retries)

    @overload
    async def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> AsyncStream: ...

    @overload
    async def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: Literal[False] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImagesResponse: ...

    async def create_image(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImagesResponse | AsyncStream:
        result = await self.create_image_with_http_info(
            create_image_request,
            stream=stream,
            extra_body=extra_body,
            extra_headers=extra_headers,
            timeout=timeout,
            **fields,
        )
        return result.data

    async def create_image_with_http_info(
        self,
        create_image_request: CreateImageRequest | None = None,
        *,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ApiResponse[Any]:
        if stream is not None:
            fields["stream"] = stream
        return await self._result(
            generation_call(create_image_request, fields, extra_body, extra_headers, timeout)
        )

    @overload
    async def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> AsyncStream: ...

    @overload
    async def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: Literal[False] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse: ...

    async def create_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse | AsyncStream:
        result = await self.create_image_edit_with_http_info(
            image,
            prompt,
            mask=mask,
            stream=stream,
            extra_body=extra_body,
            extra_headers=extra_headers,
            timeout=timeout,
            **opts,
        )
        return result.data

    async def create_image_edit_with_http_info(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        stream: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ApiResponse[Any]:
        if stream is not None:
            opts["stream"] = stream
        return await self._result(edit_call(image, prompt, mask, opts, extra_body, extra_headers, timeout))

    async def create_image_variation(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImagesResponse:
        result = await self.create_image_variation_with_http_info(
            image, extra_body=extra_body, extra_headers=extra_headers, timeout=timeout, **opts
        )
        return result.data

    async def create_image_variation_with_http_info(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ApiResponse[Any]:
        return await self._result(variation_call(image, opts, extra_body, extra_headers, timeout))
