"""Engine jobs: what an engine is asked to draw, with no wire types in them.

The server resolves every request field through the rule table first, so a job holds only resolved,
valid values: a concrete width and height, a concrete quality, a seed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from PIL import Image

from limner.errors import JobCancelled

Detail = Literal["low", "medium", "high"]

#: Called with (image_index, partial_index, preview) each time an engine has a preview to show.
PartialCallback = Callable[[int, int, Image.Image], None]


@dataclass
class JobContext:
    """What an engine may use while it works: partial-image reporting and cancellation.

    `partial_images` is how many previews the caller wants per image (0..3); engines spread them
    coarse to fine over their work and call `report_partial`. `check()` raises JobCancelled once the
    caller has gone, so engines call it between steps.
    """

    partial_images: int = 0
    on_partial: PartialCallback | None = None
    #: Called with (steps done, steps in all) as the work advances (asynchronous jobs show it).
    on_progress: Callable[[int, int], None] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled()

    def report_progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def report_partial(self, image_index: int, partial_index: int, preview: Image.Image) -> None:
        self.check()
        if self.on_partial is not None and partial_index < self.partial_images:
            self.on_partial(image_index, partial_index, preview)


J = TypeVar("J", bound="JobSettings")


@dataclass
class JobSettings:
    """What every job shares, resolved from the request once (limner.server.serving.work builds it)."""

    width: int
    height: int
    n: int = 1
    #: Image i of the job uses seed + i.
    seed: int = 0
    detail: Detail = "medium"
    #: True when the caller asked for background=transparent: engines return RGBA with real alpha.
    transparent: bool = False
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    #: dall-e-3's style: "vivid" leans hyper-real and dramatic, "natural" less so; None: no style.
    style: Literal["vivid", "natural"] | None = None
    #: LoRA adapters asked for: (name, scale), None for the adapter's configured scale.
    loras: tuple[tuple[str, float | None], ...] = ()

    def into(self, kind: type[J], **own: Any) -> J:
        """A job of `kind` with these settings and that kind's own fields (prompt, images...)."""
        return kind(**{f.name: getattr(self, f.name) for f in fields(JobSettings)}, **own)


@dataclass
class GenerateJob(JobSettings):
    prompt: str = ""


@dataclass
class EditJob(JobSettings):
    prompt: str = ""
    #: The input images, decoded (RGB or RGBA). The first is the one edited; the others guide.
    images: list[Image.Image] = field(default_factory=list)
    #: Mode "L", same size as images[0]: 255 where the picture is to be redrawn, 0 where it is kept.
    #: None: no mask, the whole picture is redrawn, guided by the inputs.
    mask: Image.Image | None = None
    #: "high" keeps more of the inputs' look; "low" lets the prompt move further.
    input_fidelity: Literal["low", "high"] = "low"


@dataclass
class VaryJob(JobSettings):
    image: Image.Image | None = None


#: Any engine job.
Job = GenerateJob | EditJob | VaryJob
