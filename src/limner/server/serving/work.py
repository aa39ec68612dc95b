"""The Work a route hands on: a request checked and resolved, with the engine job it becomes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from limner import rules
from limner.engines.jobs import Job, JobSettings
from limner.errors import InvalidValue
from limner.server.errors import for_log, log
from limner.server.links import base_url


@dataclass
class Work:
    """One request's work: the resolved request, the model that serves it, the job, and the edit
    inputs' sizes (for usage)."""

    resolved: rules.Resolved
    model: str
    job: Job
    input_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The stream events' prefix: image_generation, or image_edit (variations included)."""
        return "image_generation" if self.resolved.operation == "generate" else "image_edit"


def new_seed() -> int:
    return secrets.randbelow(2**31)


def job_settings(resolved: rules.Resolved) -> JobSettings:
    """What every engine job shares, from a resolved request (the server picks a missing seed)."""
    return JobSettings(
        width=resolved.width,
        height=resolved.height,
        n=resolved.n,
        seed=resolved.seed if resolved.seed is not None else new_seed(),
        detail=resolved.detail,
        transparent=resolved.background == "transparent",
        negative_prompt=resolved.negative_prompt,
        num_inference_steps=resolved.num_inference_steps,
        guidance_scale=resolved.guidance_scale,
        style=resolved.style,  # type: ignore[arg-type]  # rules checked it is vivid, natural or None
        loras=resolved.loras,
    )


def note_model(request: Request, name: object) -> None:
    """The model a request names, for the access record and the request metrics, as soon as it is
    known, so that a 400 for a served model is counted under it. Only served names are kept: anything
    else a client sends stays "-" (no free text in labels or log fields)."""
    if isinstance(name, str) and name in request.app.state.registry.models:
        request.state.model = name


def client_of(request: Request) -> str:
    """Whose job this is, for fairness and per-key limits: the API key's id, else the address."""
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return str(key_id)
    return f"addr:{request.client.host}" if request.client else "addr:-"


def link_base(request: Request) -> str:
    """Where links to stored images start: the configured public URL, else the request's own host."""
    settings = request.app.state.settings
    return base_url(request, settings.public_url, settings.trusted_proxies)


def prepare(
    request: Request,
    resolved: rules.Resolved,
    make_job: Callable[[JobSettings], Job],
    input_sizes: list[tuple[int, int]] | None = None,
) -> Work:
    """The job for the resolved model (built by make_job from the shared settings), checked by its
    engine: what it refuses (a size the model cannot make) is a plain 400 before anything is queued
    or streamed, never a failure in the middle of a stream."""
    state = request.app.state
    # One line per image request for the operator: `user` / `safety_identifier` exist for abuse
    # monitoring, which on a self-hosted server means this log.
    log.info(
        "%s %s model=%s n=%d size=%s user=%s",
        getattr(request.state, "request_id", "-"),
        resolved.operation,
        resolved.profile.name,
        resolved.n,
        resolved.size,
        for_log(resolved.user),
    )
    # For the access record and the request metrics.
    request.state.model, request.state.n, request.state.size = (
        resolved.profile.name,
        resolved.n,
        resolved.size,
    )
    _, engine = state.registry.engine_for(resolved.profile.name)
    settings = job_settings(resolved)
    job = make_job(settings)
    if job.loras and not engine.info.adapters:
        raise InvalidValue(f"Model '{resolved.profile.name}' takes no LoRA adapters.", param="lora")
    engine.check(job)
    # What was drawn, for the access record: the prompt, steps, seed and adapters.
    request.state.drawn = {
        "prompt": for_log(resolved.prompt, 300) if resolved.prompt else None,
        "steps": resolved.num_inference_steps,
        "seed": settings.seed,
        "lora": dict(job.loras) or None,
    }
    if job.loras and state.metrics is not None:
        state.metrics.adapters_used(resolved.profile.name, [name for name, _ in job.loras])
    return Work(resolved, resolved.profile.name, job, input_sizes or [])
