"""The model one diffusers engine serves, shared by the engine's parts (loading, checks, calls)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limner.engines.base import EngineInfo
from limner.engines.diffusers.options import DiffusersOptions

if TYPE_CHECKING:
    from limner.engines.diffusers.capabilities import Capabilities


@dataclass
class Model:
    """One served model: its name and options, where it runs, and what it can do (its capabilities and
    engine info, computed from the configs, then again once the pipeline is loaded). Shared by the
    engine's parts (loading, checks, calls)."""

    model_name: str
    options: DiffusersOptions
    device: str
    dtype: Any
    folder: str | None
    caps: Capabilities | None = None
    info: EngineInfo | None = None
    #: The denoiser's step cache (limner.engines.diffusers.step_cache.StepCache), when configured.
    step_cache: Any = None
    #: Weight-only quantization of the denoiser (limner.engines.diffusers.precision.Quantize).
    quantize: Any = None
    #: "model" or "group": weights kept in host memory, brought to the device when needed.
    offload: str | None = None
    #: The fitted latent-to-RGB map for previews (fitted_preview.PreviewFit), once loaded.
    preview_fit: Any = None


class ModelView:
    """A part of the engine that reads the shared Model as its own attributes."""

    def __init__(self, model: Model) -> None:
        self.model = model

    @property
    def model_name(self) -> str:
        return self.model.model_name

    @property
    def options(self) -> DiffusersOptions:
        return self.model.options

    @property
    def device(self) -> str:
        return self.model.device

    @property
    def dtype(self) -> Any:
        return self.model.dtype

    @property
    def _folder(self) -> str | None:
        return self.model.folder

    @property
    def caps(self) -> Capabilities:
        assert self.model.caps is not None
        return self.model.caps

    @property
    def info(self) -> EngineInfo:
        assert self.model.info is not None
        return self.model.info
