"""The jobs API's bodies (limner's extension: asynchronous jobs and Idempotency-Key)."""

from typing import Literal

from limner.types._base import ResponseModel
from limner.types.errors import ErrorObject
from limner.types.responses import ImagesResponse

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


class JobProgress(ResponseModel):
    step: int
    steps: int


class ImageJob(ResponseModel):
    """An image request accepted to run in the background (`Prefer: respond-async`)."""

    id: str
    object: Literal["image.job"] = "image.job"
    status: JobStatus
    created_at: int
    model: str | None = None
    operation: Literal["generate", "edit", "vary"]
    #: "async": asked for with Prefer: respond-async; "sync": a call kept for its Idempotency-Key.
    mode: Literal["async", "sync"] | None = None
    #: While queued: how many jobs run before it.
    queue_position: int | None = None
    #: While in progress: the engine's step of steps.
    progress: JobProgress | None = None
    #: When completed: the ImagesResponse the synchronous call would have returned.
    result: ImagesResponse | None = None
    #: When failed: the error, as the synchronous call would have raised it.
    error: ErrorObject | None = None
    expires_at: int | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


class ImageJobList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ImageJob]
    first_id: str | None = None
    #: The cursor for the next page: `jobs.list(after=page.last_id)`.
    last_id: str | None = None
    has_more: bool = False
