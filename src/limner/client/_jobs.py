"""JobsApi and AsyncJobsApi: asynchronous image jobs on `limner serve` (a limner extension).

    jobs = JobsApi(client)
    job = jobs.submit_image(prompt="a lighthouse", model="gpt-image-1", seed=7)   # 202: queued
    done = jobs.wait(job.id)            # polls until the job ends; raises if it failed
    done.result.data[0].b64_json        # the ImagesResponse the synchronous call would have returned

`submit_*` take the same arguments as ImagesApi's `create_*` and send them with
`Prefer: respond-async` (and an Idempotency-Key, so a retried submit never makes two jobs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import quote

import httpx2

from limner.client._async_client import AsyncApiClient
from limner.client._base import Call, parse_body
from limner.client._client import ApiClient
from limner.client._exceptions import ApiException
from limner.client._files import FileInput
from limner.client._images import Timeout, edit_call, generation_call, variation_call
from limner.types import CreateImageRequest, ErrorResponse, ImageJob, ImageJobList


class JobFailed(ApiException):
    """The job ended in an error: `.body` holds it, as the synchronous call would have raised it."""


def _async(call: Call) -> Call:
    return replace(call, stream=False, extra_headers={**call.extra_headers, "Prefer": "respond-async"})


def _job(response: httpx2.Response) -> ImageJob:
    return parse_body(ImageJob, response, "an image job")


def _jobs(response: httpx2.Response) -> ImageJobList:
    return parse_body(ImageJobList, response, "a list of jobs")


def _ended(job: ImageJob) -> ImageJob:
    """The ended job, or JobFailed when it failed."""
    if job.status == "failed":
        body = ErrorResponse(error=job.error) if job.error is not None else "job failed"
        raise JobFailed(200, "job failed", body, httpx2.Headers())
    return job


def _listing(limit: int, before: int | None, mode: str | None, after: str | None = None) -> Call:
    query = f"?limit={limit}" + (f"&before={before}" if before is not None else "")
    query += f"&mode={mode}" if mode is not None else ""
    query += f"&after={quote(after)}" if after is not None else ""
    return Call("GET", "/images/jobs" + query)


class JobsApi:
    def __init__(self, api_client: ApiClient | None = None) -> None:
        self.api_client = api_client or ApiClient()

    def _send_job(self, call: Call) -> ImageJob:
        response, _ = self.api_client.send(call)
        return _job(response)

    def submit_image(
        self,
        request: CreateImageRequest | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImageJob:
        """Queue a generation; returns the job at once (status queued)."""
        return self._send_job(_async(generation_call(request, fields, extra_body, extra_headers, timeout)))

    def submit_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImageJob:
        return self._send_job(
            _async(edit_call(image, prompt, mask, opts, extra_body, extra_headers, timeout))
        )

    def submit_image_variation(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImageJob:
        return self._send_job(_async(variation_call(image, opts, extra_body, extra_headers, timeout)))

    def retrieve(self, job_id: str) -> ImageJob:
        return self._send_job(Call("GET", f"/images/jobs/{job_id}"))

    def cancel(self, job_id: str) -> ImageJob:
        return self._send_job(Call("DELETE", f"/images/jobs/{job_id}"))

    def list(
        self,
        *,
        limit: int = 20,
        before: int | None = None,
        mode: Literal["async", "sync"] | None = None,
        after: str | None = None,
    ) -> ImageJobList:
        """Your jobs, newest first; `mode="async"` keeps only asynchronous ones (as `limner jobs list`
        does: the client keeps every call behind an Idempotency-Key, and those are jobs too); `after`,
        the previous page's `last_id`, for the next page."""
        response, _ = self.api_client.send(_listing(limit, before, mode, after))
        return _jobs(response)

    def wait(self, job_id: str, *, interval: float = 0.5, timeout: float | None = None) -> ImageJob:
        """Poll until the job ends; raise JobFailed if it failed, TimeoutError past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := self.retrieve(job_id)).ended:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            time.sleep(interval)
        return _ended(job)


class AsyncJobsApi:
    def __init__(self, api_client: AsyncApiClient | None = None) -> None:
        self.api_client = api_client or AsyncApiClient()

    async def _send_job(self, call: Call) -> ImageJob:
        response, _ = await self.api_client.send(call)
        return _job(response)

    async def submit_image(
        self,
        request: CreateImageRequest | None = None,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **fields: Any,
    ) -> ImageJob:
        return await self._send_job(
            _async(generation_call(request, fields, extra_body, extra_headers, timeout))
        )

    async def submit_image_edit(
        self,
        image: FileInput | Sequence[FileInput],
        prompt: str,
        *,
        mask: FileInput | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImageJob:
        return await self._send_job(
            _async(edit_call(image, prompt, mask, opts, extra_body, extra_headers, timeout))
        )

    async def submit_image_variation(
        self,
        image: FileInput,
        *,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
        **opts: Any,
    ) -> ImageJob:
        return await self._send_job(_async(variation_call(image, opts, extra_body, extra_headers, timeout)))

    async def retrieve(self, job_id: str) -> ImageJob:
        return await self._send_job(Call("GET", f"/images/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> ImageJob:
        return await self._send_job(Call("DELETE", f"/images/jobs/{job_id}"))

    async def list(
        self,
        *,
        limit: int = 20,
        before: int | None = None,
        mode: Literal["async", "sync"] | None = None,
        after: str | None = None,
    ) -> ImageJobList:
        response, _ = await self.api_client.send(_listing(limit, before, mode, after))
        return _jobs(response)

    async def wait(self, job_id: str, *, interval: float = 0.5, timeout: float | None = None) -> ImageJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (job := await self.retrieve(job_id)).ended:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            await asyncio.sleep(interval)
        return _ended(job)
