"""Errors that carry their OpenAI envelope: HTTP status, type, code and param.

Raised anywhere below the server (rules, imaging, engines, storage); the server has one handler that
renders them as {"error": {...}}. Tree:

    LimnerError                         500 server_error
    ├── InvalidRequest                  400 invalid_request_error (param names the field)
    │   ├── InvalidValue                400 code invalid_value
    │   ├── UnknownParameter            400 code unknown_parameter
    │   └── InvalidImage                400 an upload that is not a usable image (param names it)
    ├── AuthenticationFailed            401
    ├── NotFound                        404
    │   └── ModelNotFound               404 code model_not_found, param model
    ├── PayloadTooLarge                 413
    ├── RateLimited                     429 code rate_limit_exceeded (+ Retry-After)
    ├── EngineUnavailable               503 (an engine or extra that is not installed or not loaded)
    ├── ServiceUnavailable              503 (the key database cannot be read)
    │   └── JobStoreUnavailable         503 (the job store cannot be written: read-only, database down)
    └── StorageUnavailable              507 (url-mode images cannot be stored: disk full, read-only)
        └── JobStoreFull                507 (the job store's disk or database is full)

    JobCancelled (an Exception, not a LimnerError: no envelope of its own)
                                        the client left, or the job was cancelled; the server
                                        answers 499 (nginx's "client closed request"), which
                                        nobody reads
"""

from __future__ import annotations

from typing import Any


class LimnerError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(LimnerError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidValue(InvalidRequest):
    default_code = "invalid_value"


class UnknownParameter(InvalidRequest):
    default_code = "unknown_parameter"

    def __init__(self, param: str) -> None:
        super().__init__(f"Unknown parameter: '{param}'.", param=param)


class InvalidImage(InvalidRequest):
    """An upload that is not a usable image (corrupt, wrong format, too large, hostile)."""

    default_code = "invalid_image"


class AuthenticationFailed(LimnerError):
    status_code = 401
    error_type = "invalid_request_error"


class NotFound(LimnerError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )


class PayloadTooLarge(LimnerError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(LimnerError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1, reason: str = "queue_full") -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        #: What was exceeded (queue_full, max_queued_per_key, max_running_per_key): a metrics label.
        self.reason = reason


class EngineUnavailable(LimnerError):
    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"


class ServiceUnavailable(LimnerError):
    """A part of the server it cannot work without is unusable. The message says what, never why in
    detail (that is the log's job)."""

    status_code = 503
    error_type = "server_error"


class StorageUnavailable(LimnerError):
    """url-mode images cannot be stored (disk full, read-only data dir); b64_json keeps working."""

    status_code = 507
    error_type = "server_error"
    default_code = "storage_unavailable"


class JobStoreUnavailable(ServiceUnavailable):
    """The job store cannot record a job (a read-only data dir, PostgreSQL down or not answering):
    asynchronous and idempotent requests are refused; plain ones are still served."""

    default_code = "job_store_unavailable"


class JobStoreFull(StorageUnavailable):
    """The job store's disk (or database) is full: nothing more can be recorded until space is freed."""

    default_code = "job_store_full"


class JobCancelled(Exception):
    """The client went away; the engine stops at its next check. Never sent to anyone."""
