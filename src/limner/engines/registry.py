"""Model name -> (rule profile, engine). Engines are built from the settings and loaded lazily.

Every OpenAI model name is served by the one shared sketch engine unless the config maps it elsewhere;
config names that are not OpenAI's get a local profile built from their table (contract section 10).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from limner import rules
from limner.engines.base import Engine
from limner.errors import EngineUnavailable


class ModelTable(Protocol):
    """What the registry needs of one configured model (limner.server.settings.ModelConfig)."""

    engine: str
    sizes: list[str]
    size_multiple: int | None
    max_pixels: int | None
    default_size: str | None
    concurrency: int | None
    max_queue: int

    def engine_options(self) -> dict[str, Any]: ...


@dataclass
class ServedModel:
    name: str
    profile: rules.ModelProfile
    engine_key: str
    concurrency: int
    max_queue: int


def _sketch() -> Engine:
    from limner.engines.sketch import SketchEngine

    return SketchEngine()


def _diffusers(name: str, options: Mapping[str, Any]) -> Engine:
    try:
        module = importlib.import_module("limner.engines.diffusers")
    except ImportError as exc:  # pragma: no cover - the module itself imports nothing heavy
        raise EngineUnavailable(
            f"Model '{name}' needs the diffusers engine: pip install 'limner[diffusers]'"
        ) from exc
    engine: Engine = module.create_engine(name, options)
    return engine


def _default_size(max_side: int, multiple: int) -> str:
    """A square default for a free-size local model: 512x512 where the model can make it."""
    side = max(multiple, min(512, max_side) // multiple * multiple)
    return f"{side}x{side}"


class EngineRegistry:
    def __init__(self, models: Mapping[str, ModelTable], *, sketch_concurrency: int = 1) -> None:
        self.engines: dict[str, Engine] = {}
        self.models: dict[str, ServedModel] = {}
        for name, profile in rules.OPENAI_PROFILES.items():
            if name not in models:
                self.models[name] = ServedModel(name, profile, "sketch", sketch_concurrency, 64)
        if any(name not in models for name in rules.OPENAI_PROFILES) or any(
            m.engine == "sketch" for m in models.values()
        ):
            self.engines["sketch"] = _sketch()
        for name, table in models.items():
            self._add(name, table, sketch_concurrency)

    def _add(self, name: str, table: ModelTable, sketch_concurrency: int) -> None:
        if table.engine == "sketch":
            key, concurrency = "sketch", table.concurrency or sketch_concurrency
            if "sketch" not in self.engines:
                self.engines["sketch"] = _sketch()
        elif table.engine == "diffusers":
            key, concurrency = f"diffusers:{name}", table.concurrency or 1
            self.engines[key] = _diffusers(name, table.engine_options())
        else:
            raise ValueError(f"model '{name}': unknown engine '{table.engine}' (use 'sketch' or 'diffusers')")
        engine = self.engines[key]
        profile = rules.OPENAI_PROFILES.get(name)
        if profile is None:
            info = engine.info
            sizes = table.sizes or ([f"{w}x{h}" for w, h in info.sizes] if info.sizes else [])
            multiple = table.size_multiple or max(8, info.size_multiple)
            max_pixels = table.max_pixels or info.max_pixels
            side = int(max_pixels**0.5) // multiple * multiple
            profile = rules.local_profile(
                name,
                sizes=sizes,
                size_multiple=multiple,
                max_pixels=max_pixels,
                max_side=max(side * 4, multiple),
                default_size=table.default_size or (sizes[0] if sizes else _default_size(side, multiple)),
                operations=info.operations,
            )
        self.models[name] = ServedModel(name, profile, key, concurrency, table.max_queue)

    def lookup(self, defaults: Any) -> rules.ProfileLookup:
        return rules.ProfileLookup(
            {name: m.profile for name, m in self.models.items()},
            default_generation=defaults.generation_model,
            default_gpt_generation=defaults.gpt_generation_model,
            default_edit=defaults.edit_model,
            default_variation=defaults.variation_model,
        )

    def engine_for(self, model: str) -> tuple[ServedModel, Engine]:
        served = self.models[model]
        return served, self.engines[served.engine_key]

    def status(self) -> dict[str, bool]:
        """Which engines are loaded, by engine key."""
        return {key: engine.loaded for key, engine in self.engines.items()}
