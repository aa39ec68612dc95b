"""Server settings: CLI flags over a TOML config file over defaults.

The config file (``limner serve --config limner.toml``)::

    public_url = "https://images.example.com"   # links in url responses are built from this
    url_ttl_seconds = 3600                       # how long url-mode images live
    trusted_proxies = ["127.0.0.1"]             # X-Forwarded-Proto/Host honoured only from these
    max_request_bytes = 104857600                # whole request body
    max_upload_bytes = 52428800                  # one uploaded file
    allow_private_image_urls = false             # JSON edits: fetch image_url from private addresses
    auth = "keys"                                # or "none"; unset: keys once any key was ever created
    secret = "..."                               # link-signing secret, >= 32 bytes ($LIMNER_SECRET wins)
    image_url_timeout = 10.0
    image_url_max_bytes = 20971520

    [defaults]                                   # the default-model rule (docs/images-contract.md, section 10)
    generation_model = "dall-e-2"
    gpt_generation_model = "gpt-image-1.5"
    edit_model = "gpt-image-1.5"
    variation_model = "dall-e-2"

    [models."dall-e-3"]                          # any name, OpenAI's included, can be remapped
    engine = "diffusers"
    source = "/models/sdxl-turbo"

    metrics = true                               # GET /metrics, behind the key once keys are required
                                                 # (metrics_require_key = false opens it even then)
    ui = true                                    # the playground at /
    log_format = "text"                          # or "json": one object per line, one line per request
    max_queued_per_key = 16                      # per API key (or address): 429 beyond this many waiting
    max_running_per_key = 2                      # ...and this many running at once

    [models.my-model]                            # a local name: GPT-image fields, both formats
    engine = "sketch"
    sizes = ["512x512", "768x768"]

Out of the box every OpenAI model name is served by the built-in sketch engine.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from limner import rules

#: The most a request's head (request line and headers) may hold, for `limner serve` and Ray's proxy
#: alike; browsers and SDKs send a few KiB.
MAX_HEADER_BYTES = 64 * 1024


class ModelConfig(BaseModel):
    """One served model name: which engine draws it, and that engine's options."""

    model_config = ConfigDict(extra="allow")

    engine: str = "sketch"
    #: The sizes the model accepts ("WxH"); empty = any multiple of size_multiple up to max_pixels.
    #: Unset values come from the engine (a diffusers model: multiples of 64 up to its max_size).
    #: These limits are both the rule profile's (local names) and the engine's own.
    sizes: list[str] = Field(default_factory=list)
    size_multiple: int | None = None
    max_pixels: int | None = None
    default_size: str | None = None
    #: Concurrency and queue in front of this model's engine.
    concurrency: int | None = None
    max_queue: int = 32
    #: How long a free worker waits for more compatible jobs to fill a batch (0: never waits).
    batch_wait_ms: int = 0
    #: The answer's format when a request names none (the model's own default otherwise: url for the
    #: DALL-E names, b64_json for the others), for clients that read only one of them.
    response_format: Literal["url", "b64_json"] | None = None

    def engine_options(self) -> dict[str, Any]:
        """The engine's own options: the table less limner's keys, with the size limits that are set
        (so that the engine and the rule profile agree on what the model can make)."""
        own = {"engine", "default_size", "concurrency", "max_queue", "batch_wait_ms", "response_format"}
        return {k: v for k, v in self.model_dump().items() if k not in own and v not in (None, [])}


class StorageConfig(BaseModel):
    """`[storage]`: where url-mode images live."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["files", "s3"] = "files"
    bucket: str = ""
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    #: Answer with presigned S3 URLs (expiring with the link) instead of limner's own links.
    presign: bool = False
    #: "path" for stores reached by a host name that has no per-bucket subdomains (MinIO in compose:
    #: http://minio:9000/bucket/key); "virtual" or "auto" (botocore's choice) otherwise.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generation_model: str = rules.DEFAULT_GENERATION_MODEL
    gpt_generation_model: str = rules.DEFAULT_GPT_GENERATION_MODEL
    edit_model: str = rules.DEFAULT_EDIT_MODEL
    variation_model: str = rules.DEFAULT_VARIATION_MODEL


def default_data_dir() -> Path:
    env = os.environ.get("LIMNER_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "limner"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(default_factory=default_data_dir)
    public_url: str | None = None
    url_ttl_seconds: int = 3600
    sweep_interval_seconds: float = 60.0
    trusted_proxies: list[str] = Field(default_factory=list)
    max_request_bytes: int = 100 * 1024 * 1024
    max_upload_bytes: int = 50 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096
    allow_private_image_urls: bool = False
    image_url_timeout: float = 10.0
    image_url_max_bytes: int = 20 * 1024 * 1024
    #: "keys": every /v1 call needs a key; "none": open. None: keys once any key was ever created in
    #: the data dir (recorded there, so revoking every key closes the server instead of opening it).
    auth: Literal["keys", "none"] | None = None
    #: Waiting requests each OpenAI name served by default admits (configured models: their max_queue).
    default_max_queue: int = 64
    #: What `x-limner-replica` says (default: host name and process id).
    replica_id: str | None = None
    #: Behind a proxy that sets x-request-id itself (Ray Serve's): use its id, add none of our own.
    proxy_request_id: bool = False
    #: Keys and jobs in PostgreSQL, shared by replicas (default: SQLite files in the data dir).
    keys_url: str | None = Field(default=None, repr=False)
    jobs_url: str | None = Field(default=None, repr=False)
    #: The link-signing secret (>= 32 bytes), shared by servers that serve each other's links.
    #: Default: $LIMNER_SECRET, else a random one kept in the data dir.
    secret: str | None = Field(default=None, repr=False)
    #: GET /metrics (Prometheus): off with false; behind the API key with metrics_require_key.
    metrics: bool = True
    #: None (default): behind the API key whenever keys are required; false: open even then.
    metrics_require_key: bool | None = None
    #: Label request counts with key ids (more series: one per key).
    metrics_per_key: bool = False
    #: The playground at /.
    ui: bool = True
    #: "text": readable lines; "json": one JSON object per line (and one per request) for log shippers.
    log_format: Literal["text", "json"] = "text"
    #: Asynchronous jobs may name a callback URL only under one of these URLs (same scheme, host and port;
    #: the path under the entry's by whole segments).
    callback_allow: list[str] = Field(default_factory=list)
    #: Callbacks may go to loopback and private addresses (receivers on the same machine or network).
    callback_allow_private: bool = False
    #: Signs callbacks (X-Limner-Signature), >= 32 bytes; default: a random one of its own in the data
    #: dir (callback.key), never the link-signing secret.
    callback_secret: str | None = Field(default=None, repr=False)
    #: A job whose run was started this many times (a restart runs what was running) is failed instead
    #: of being started again: one that takes the server down (out of memory) must not do so forever.
    max_job_attempts: int = Field(default=3, ge=1)
    #: How long a replica's claim on a job holds without renewal (renewed three times within it):
    #: replicas sharing `jobs_url` take over the jobs of one that stopped after this long.
    job_lease_seconds: float = Field(default=30.0, ge=1.0)
    #: How long a synchronous request's answer is kept for a retry with its Idempotency-Key (retries come
    #: within minutes; an asynchronous job's result is kept for url_ttl_seconds, since it is fetched later).
    idempotency_ttl_seconds: int = Field(default=600, ge=1)
    #: The most bytes of kept synchronous answers per API key (the oldest go first, at each sweep).
    max_kept_bytes_per_key: int = Field(default=1024**3, ge=0)
    #: Per API key (or client address without keys): waiting jobs, and jobs running at once.
    max_queued_per_key: int | None = None
    max_running_per_key: int | None = None
    sketch_concurrency: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    #: What the models of each device may take together: "20GiB", "80%", "auto" (90 % of the device's
    #: memory), or a table by device ({ "cuda:0" = "20GiB", cpu = "8GiB" }). Unset: no budget, every
    #: model stays loaded once loaded. Models are then loaded on demand and idle ones unloaded.
    memory_budget: str | int | dict[str, str | int] | None = None
    #: How long a request for a model that is not loaded waits for busy models to make room.
    load_wait_seconds: float = Field(default=60.0, gt=0)
    defaults: Defaults = Field(default_factory=Defaults)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Settings:
        """Read the TOML file (if any), then apply the non-None overrides (CLI flags)."""
        data: dict[str, Any] = {}
        if config is not None:
            with open(config, "rb") as f:
                data = tomllib.load(f)
        for variable, key in (
            ("LIMNER_SECRET", "secret"),
            ("LIMNER_KEYS_URL", "keys_url"),
            ("LIMNER_JOBS_URL", "jobs_url"),
        ):
            if os.environ.get(variable):
                data[key] = os.environ[variable]
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "models":
                data.setdefault("models", {}).update(value)
            else:
                data[key] = value
        return cls.model_validate(data)
