"""Model name -> (rule profile, engine). Engines are built from the settings and loaded lazily.

Every OpenAI model name is served by the one shared sketch engine unless the config maps it elsewhere;
config names that are not OpenAI's get a local profile built from their table (docs/images-contract.md, section 10).
An engine comes from the table of factories below (`ENGINE_FACTORIES`), or is handed in ready-made
(`create_app(settings, engines={...})`, which is how a test serves its own engine).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from limner import rules
from limner.engines.base import Engine
from limner.errors import EngineUnavailable
from limner.extras import install_hint

#: The engine key of the shared built-in engine.
SKETCH = "sketch"


class ModelTable(Protocol):
    """What the registry needs of one configured model (limner.server.settings.ModelConfig)."""

    engine: str
    sizes: list[str]
    size_multiple: int | None
    max_pixels: int | None
    default_size: str | None
    concurrency: int | None
    max_queue: int
    batch_wait_ms: int
    response_format: Literal["url", "b64_json"] | None

    def engine_options(self) -> dict[str, Any]: ...


@dataclass
class ServedModel:
    name: str
    profile: rules.ModelProfile
    engine_key: str
    concurrency: int
    max_queue: int
    batch_wait_ms: int = 0
    #: What the engine draws from (a diffusers model's folder or hub id), for the operator's eyes.
    source: str | None = None

    @property
    def engine_name(self) -> str:
        """The configured engine ("sketch", "diffusers"), or "given" for an engine handed in."""
        return self.engine_key.split(":")[0]


def _sketch(name: str, options: Mapping[str, Any]) -> Engine:
    from limner.engines.sketch import SketchEngine

    return SketchEngine()


def _diffusers(name: str, options: Mapping[str, Any]) -> Engine:
    try:
        module = importlib.import_module("limner.engines.diffusers")
    except ImportError as exc:  # pragma: no cover - the module itself imports nothing heavy
        raise EngineUnavailable(
            f"Model '{name}' needs the diffusers engine: {install_hint('diffusers')}"
        ) from exc
    engine: Engine = module.create_engine(name, options)
    return engine


#: engine name in the config -> factory(model name, engine options). The sketch engine is built once
#: and shared by every name it serves (it is stateless); every other engine is one per model name.
ENGINE_FACTORIES: dict[str, Callable[[str, Mapping[str, Any]], Engine]] = {
    SKETCH: _sketch,
    "diffusers": _diffusers,
}

#: What a sketch-served table may hold beyond limner's own keys: the size limits of its rule profile.
#: The sketch engine has no options of its own, so anything else is refused rather than ignored.
SKETCH_OPTIONS = frozenset({"sizes", "size_multiple", "max_pixels"})

#: The waiting jobs an OpenAI name admits when the config says nothing of it.
DEFAULT_MAX_QUEUE = 64


def _default_size(max_side: int, multiple: int) -> str:
    """A square default for a free-size local model: 512x512 where the model can make it."""
    side = max(multiple, min(512, max_side) // multiple * multiple)
    return f"{side}x{side}"


class EngineRegistry:
    def __init__(
        self,
        models: Mapping[str, ModelTable],
        *,
        sketch_concurrency: int = 1,
        engines: Mapping[str, Engine] | None = None,
        default_max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.engines: dict[str, Engine] = {}
        self.models: dict[str, ServedModel] = {}
        given = dict(engines or {})
        for name, profile in rules.OPENAI_PROFILES.items():
            if name not in models and name not in given:
                self.models[name] = ServedModel(name, profile, SKETCH, sketch_concurrency, default_max_queue)
                self._shared_sketch()
        for name, table in models.items():
            if name not in given:
                self._add(name, table, sketch_concurrency)
        keys: dict[int, str] = {}  # names handed one engine object share it, as sketch names do
        for name, engine in given.items():
            own = models.get(name)
            key = keys.setdefault(id(engine), f"given:{name}")
            self.engines[key] = engine
            concurrency = (own.concurrency if own else None) or 1
            sharing = [m for m in self.models.values() if m.engine_key == key]
            if sharing and sharing[0].concurrency != concurrency:
                raise ValueError(
                    f"models.{name}.concurrency = {concurrency} cannot be honoured: '{sharing[0].name}' "
                    f"shares its engine with {sharing[0].concurrency} workers"
                )
            self.models[name] = ServedModel(
                name,
                self._profile(name, own, engine),
                key,
                concurrency,
                own.max_queue if own else default_max_queue,
                own.batch_wait_ms if own else 0,
            )

    def _shared_sketch(self) -> Engine:
        if SKETCH not in self.engines:
            self.engines[SKETCH] = ENGINE_FACTORIES[SKETCH](SKETCH, {})
        return self.engines[SKETCH]

    def _add(self, name: str, table: ModelTable, sketch_concurrency: int) -> None:
        factory = ENGINE_FACTORIES.get(table.engine)
        if factory is None:
            known = ", ".join(f"'{k}'" for k in ENGINE_FACTORIES)
            raise ValueError(f"model '{name}': unknown engine '{table.engine}' (use {known})")
        if table.engine == SKETCH:
            unknown = sorted(set(table.engine_options()) - SKETCH_OPTIONS)
            if unknown:
                raise ValueError(
                    f"models.{name}.{unknown[0]}: unknown option for the sketch engine (it takes "
                    "sizes, size_multiple, max_pixels, default_size, concurrency, max_queue, batch_wait_ms "
                    "and response_format)"
                )
            key, engine = SKETCH, self._shared_sketch()
            concurrency = table.concurrency or sketch_concurrency
            if concurrency != sketch_concurrency:
                # One shared engine has one set of workers: a second number cannot be honoured.
                raise ValueError(
                    f"models.{name}.concurrency = {concurrency} cannot be honoured: every sketch-served "
                    f"name shares the sketch engine's {sketch_concurrency} workers (set "
                    "sketch_concurrency instead)"
                )
        else:
            key = f"{table.engine}:{name}"
            engine = self.engines[key] = factory(name, table.engine_options())
            concurrency = table.concurrency or 1
        source = table.engine_options().get("source") if table.engine != SKETCH else None
        self.models[name] = ServedModel(
            name,
            self._profile(name, table, engine),
            key,
            concurrency,
            table.max_queue,
            table.batch_wait_ms,
            str(source) if source else None,
        )

    @staticmethod
    def _profile(name: str, table: ModelTable | None, engine: Engine) -> rules.ModelProfile:
        profile = EngineRegistry._own_profile(name, table, engine)
        if table is not None and table.response_format is not None:
            profile = dataclasses.replace(profile, default_response_format=table.response_format)
        return profile

    @staticmethod
    def _own_profile(name: str, table: ModelTable | None, engine: Engine) -> rules.ModelProfile:
        profile = rules.OPENAI_PROFILES.get(name)
        if profile is not None:
            return profile
        info = engine.info
        sizes = (table.sizes if table else []) or ([f"{w}x{h}" for w, h in info.sizes] if info.sizes else [])
        multiple = (table.size_multiple if table else None) or max(8, info.size_multiple)
        max_pixels = (table.max_pixels if table else None) or info.max_pixels
        side = int(max_pixels**0.5) // multiple * multiple
        default = (table.default_size if table else None) or (
            sizes[0] if sizes else _default_size(side, multiple)
        )
        return rules.local_profile(
            name,
            sizes=sizes,
            size_multiple=multiple,
            max_pixels=max_pixels,
            max_side=max(side * 4, multiple),
            default_size=default,
            operations=info.operations,
            edit_max_images=info.max_images,
        )

    def lookup(self, defaults: Any) -> rules.ProfileLookup:
        return rules.ProfileLookup(
            {name: m.profile for name, m in self.models.items()},
            default_generation=defaults.generation_model,
            default_gpt_generation=defaults.gpt_generation_model,
            default_edit=defaults.edit_model,
            default_variation=defaults.variation_model,
            adapters=self.adapters_of,
        )

    def adapters_of(self, model: str) -> list[str]:
        """The LoRA adapters of a served model (each also served as the name MODEL:ADAPTER)."""
        served = self.models.get(model)
        return self.engines[served.engine_key].adapters() if served is not None else []

    def engine_for(self, model: str) -> tuple[ServedModel, Engine]:
        served = self.models[model]
        return served, self.engines[served.engine_key]

    def status(self) -> dict[str, bool]:
        """Which engines are loaded, by engine key."""
        return {key: engine.loaded for key, engine in self.engines.items()}
