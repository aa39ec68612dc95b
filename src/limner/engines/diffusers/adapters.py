"""LoRA adapters per request: which adapters a model has, whether each fits it, and switching them on
the engine's worker, between pipeline calls only.

    catalogue.resolve((("style", None), ("detail", 0.4))) -> (("detail", 0.4), ("style", 0.8))
    with slots.applied(pipes, wanted): pipe(...)

* **Where adapters come from.** The model's `loras` table (each a `.safetensors` file, a folder holding
  one, or a hub id in the local cache) and its `lora_dir`, whose `.safetensors` files are adapters named
  by their stems, looked up when first asked for.
* **Fit, before anything is loaded.** diffusers loads an adapter whose keys match no module with a
  warning in the log and no effect. Each adapter's keys are read with the pipeline class's own
  `lora_state_dict` (which converts the other trainers' formats) and checked against the checkpoint's
  safetensors headers: every adapted module must exist in its component, with the shapes the adapter
  expects, and every component must be one the family's loader adapts (`_lora_loadable_modules`: the
  text encoders of SD, SDXL, FLUX.1 and SD3; the denoiser alone elsewhere). A configured adapter that
  does not fit stops the start-up; one from `lora_dir` is a 400 naming `lora`.
* **Switching.** PEFT applies every active adapter to every row of a call, and `set_adapters` rewrites
  the shared modules, so a call runs with one adapter set, and the set changes only when no call runs on
  the pipeline (`AdapterSlots`: calls that want the set in place run together; one that wants another
  waits for them). A call without adapters runs with the adapters disabled: exactly the base model's
  pixels. At most `max_loaded_loras` stay loaded, least recently used unloaded first, within the bytes
  set aside for them (`reserve`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limner.engines.diffusers.loading import _module
from limner.engines.diffusers.options import ADAPTER_NAME, DiffusersOptions
from limner.engines.diffusers.sizing import tensor_bytes
from limner.errors import InvalidValue

logger = logging.getLogger("limner.engines.diffusers")

#: An adapter's key: the adapted module, then the LoRA part (the formats diffusers' loaders produce).
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)\b")
_DOWN = ("lora_A", "lora.down", "lora_down")

#: One request's adapters, resolved: (name, scale) pairs sorted by name, no zero scale. () = none.
AdapterSet = tuple[tuple[str, float], ...]


class AdapterMismatch(ValueError):
    """An adapter that does not fit the model (the message says how)."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str  # the .safetensors file
    scale: float  # used when a request names the adapter without a scale
    bytes: int  # on the device, at the model's dtype
    configured: bool
    #: The pipeline components it adapts ("unet", "transformer", "text_encoder"...).
    components: frozenset[str] = frozenset()
    #: Its largest rank, and each adapted module ("component.module") with the elements of one rank of
    #: its down and up matrices (what a compiled model's adapter slots are shaped by: hotswap.py).
    rank: int = 0
    modules: tuple[tuple[str, int, int], ...] = ()

    @property
    def on_text_encoder(self) -> bool:
        return any(c.startswith("text_encoder") for c in self.components)


def _adapter_file(source: str) -> str:
    """The .safetensors file of a source: a file, a folder holding one, or a hub id in the cache."""
    if os.path.isfile(source):
        return source
    folder = source
    if not os.path.isdir(source):
        try:
            folder = _module("huggingface_hub").snapshot_download(source, local_files_only=True)
        except Exception as exc:
            raise AdapterMismatch(
                f"'{source}' is neither a file, a folder, nor a hub id in the local Hugging Face cache"
            ) from exc
    standard = os.path.join(folder, "pytorch_lora_weights.safetensors")
    if os.path.isfile(standard):
        return standard
    found = sorted(p for p in Path(folder).glob("*.safetensors"))
    if len(found) != 1:
        raise AdapterMismatch(f"'{source}' should hold one .safetensors file; it holds {len(found)}")
    return str(found[0])


def _per_rank(shape: tuple[int, ...] | None, rank_axis: int) -> int:
    """The elements of one rank of a LoRA matrix: down is (rank, in, ...), up is (out, rank, ...)."""
    if shape is None:
        return 0
    return math.prod(shape[:rank_axis] + shape[rank_axis + 1 :])


def _component_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a component folder's safetensors files (headers only)."""
    safetensors = _module("safetensors")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safetensors.safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (a safe_open handle is not iterable)
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


class AdapterCatalogue:
    """The adapters of one model: found, checked against the checkpoint, and resolved per request."""

    def __init__(
        self,
        model_name: str,
        options: DiffusersOptions,
        pipeline_class: Any,
        folder: str | None,
        itemsize: int,
    ) -> None:
        self.model_name = model_name
        self.options = options
        self.pipeline_class = pipeline_class
        self.folder = Path(folder) if folder else None
        self.itemsize = itemsize
        self._lock = threading.Lock()
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._found: dict[str, tuple[tuple[float, int], Adapter | AdapterMismatch]] = {}
        #: With compile: refuses (AdapterMismatch) an adapter the compiled slots cannot hold (hotswap.py).
        self.fits_slots: Callable[[Adapter], None] | None = None
        self.configured: dict[str, Adapter] = {}
        for name, (source, scale) in options.loras.items():
            try:
                self.configured[name] = self._check(name, _adapter_file(source), scale, configured=True)
            except AdapterMismatch as exc:
                raise ValueError(f"model '{model_name}': adapter loras.{name}: {exc}") from exc

    def names(self) -> list[str]:
        """Every adapter a request may name: the configured ones, then those of `lora_dir` that fit
        (each file checked once, again when it changes)."""
        return list(self.configured) + [n for n in self.dir_names() if isinstance(self.lookup(n), Adapter)]

    def dir_names(self) -> list[str]:
        if self.options.lora_dir is None:
            return []
        stems = (p.stem for p in sorted(Path(self.options.lora_dir).glob("*.safetensors")))
        return [s for s in stems if ADAPTER_NAME.fullmatch(s) and s not in self.configured]

    def has(self, name: str) -> bool:
        return name in self.configured or self._dir_file(name) is not None

    def reserve(self) -> int:
        """Bytes set aside for loaded adapters: the `max_loaded_loras` largest known at start-up (the
        files' headers only: `lora_dir`'s adapters are checked when first asked for)."""
        sizes = [a.bytes for a in self.configured.values()]
        for name in self.dir_names():
            path = self._dir_file(name)
            if path is not None:
                sizes.append(tensor_bytes(path, self.itemsize))
        return sum(sorted(sizes, reverse=True)[: self.options.max_loaded_loras])

    def get(self, name: str) -> Adapter:
        """The adapter called `name`; a 400 naming `lora` when there is none, or it does not fit."""
        found = self.lookup(name)
        if isinstance(found, AdapterMismatch):
            raise InvalidValue(
                f"Adapter '{name}' does not fit model '{self.model_name}': {found}", param="lora"
            )
        return found

    def resolve(self, wanted: Sequence[tuple[str, float | None]]) -> AdapterSet:
        """A request's adapters: each known, scales filled in from the configuration, zero scales
        dropped (they are the base model), at most `max_loras`."""
        if not wanted:
            return ()
        if len(wanted) > self.options.max_loras:
            raise InvalidValue(
                f"Model '{self.model_name}' combines at most {self.options.max_loras} adapters per "
                f"request; got {len(wanted)}.",
                param="lora",
            )
        resolved: dict[str, float] = {}
        for name, scale in wanted:
            if not self.has(name):
                known = ", ".join(f"'{n}'" for n in (list(self.configured) + self.dir_names())[:20]) or "none"
                raise InvalidValue(
                    f"Model '{self.model_name}' has no adapter '{name}'. Its adapters: {known}.", param="lora"
                )
            adapter = self.get(name)
            resolved[name] = adapter.scale if scale is None else scale
        return tuple(sorted((n, s) for n, s in resolved.items() if s != 0))

    # -- finding and checking -----------------------------------------------------------------------

    def _dir_file(self, name: str) -> str | None:
        if self.options.lora_dir is None or not ADAPTER_NAME.fullmatch(name):
            return None
        path = os.path.join(self.options.lora_dir, f"{name}.safetensors")
        return path if os.path.isfile(path) else None

    def lookup(self, name: str) -> Adapter | AdapterMismatch:
        """The adapter called `name`, or why it cannot be used."""
        found = self._checked(name)
        if isinstance(found, Adapter) and self.fits_slots is not None:
            try:
                self.fits_slots(found)
            except AdapterMismatch as exc:
                return exc
        return found

    def _checked(self, name: str) -> Adapter | AdapterMismatch:
        if name in self.configured:
            return self.configured[name]
        path = self._dir_file(name)
        if path is None:
            return AdapterMismatch("no such adapter")
        stat = os.stat(path)
        version = (stat.st_mtime, stat.st_size)
        with self._lock:
            known = self._found.get(name)
            if known is not None and known[0] == version:
                return known[1]
            try:
                found: Adapter | AdapterMismatch = self._check(name, path, 1.0, configured=False)
            except AdapterMismatch as exc:
                found = exc
            self._found[name] = (version, found)
            return found

    def _shapes_of(self, component: str) -> dict[str, tuple[int, ...]]:
        if component not in self._shapes:
            folder = self.folder / component if self.folder is not None else None
            self._shapes[component] = _component_shapes(folder) if folder and folder.is_dir() else {}
        return self._shapes[component]

    def _check(self, name: str, path: str, scale: float, *, configured: bool) -> Adapter:
        """The adapter at `path`, after checking that it fits the model (AdapterMismatch if not)."""
        try:
            state = self.pipeline_class.lora_state_dict(path)
        except Exception as exc:  # not an adapter diffusers can read for this family
            raise AdapterMismatch(f"diffusers cannot read it as a LoRA of this family ({exc})") from exc
        if isinstance(state, tuple):
            state = state[0]
        loadable = list(getattr(self.pipeline_class, "_lora_loadable_modules", []))
        modules: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
        for key, tensor in state.items():
            component, _, rest = key.partition(".")
            match = _LORA_KEY.match(rest)
            if match is None:
                continue  # alphas, DoRA magnitudes: they ride with a module counted below
            if component not in loadable:
                what = "the text encoder" if component.startswith("text_encoder") else f"'{component}'"
                raise AdapterMismatch(
                    f"it adapts {what}, which diffusers' loader for {self.pipeline_class.__name__} does "
                    f"not apply (it adapts {', '.join(loadable) or 'nothing'}); it is refused rather than "
                    "applied in part"
                )
            part = "down" if match.group("part") in _DOWN else "up"
            modules.setdefault((component, match.group("module")), {})[part] = tuple(tensor.shape)
        if not modules:
            raise AdapterMismatch("it holds no LoRA weights diffusers recognises")
        if self.folder is not None:
            for (component, module), parts in modules.items():
                weight = self._shapes_of(component).get(f"{module}.weight")
                if weight is None:
                    raise AdapterMismatch(f"it adapts {component}.{module}, which this model does not have")
                down, up = parts.get("down"), parts.get("up")
                if (down is not None and down[1] != weight[1]) or (up is not None and up[0] != weight[0]):
                    raise AdapterMismatch(
                        f"its {component}.{module} is shaped for another model ({down} x {up} against a "
                        f"weight of {weight})"
                    )
        components = frozenset(component for component, _ in modules)
        layers = tuple(
            (f"{component}.{module}", _per_rank(parts.get("down"), 1), _per_rank(parts.get("up"), 0))
            for (component, module), parts in sorted(modules.items())
        )
        rank = max((parts["down"][0] for parts in modules.values() if "down" in parts), default=0)
        return Adapter(
            name, path, scale, tensor_bytes(path, self.itemsize), configured, components, rank, layers
        )


class AdapterSlots:
    """The adapters loaded in one model's pipelines and the set in force, changed between calls only."""

    def __init__(self, catalogue: AdapterCatalogue, *, max_loaded: int, reserve: int) -> None:
        self.catalogue = catalogue
        self.max_loaded = max_loaded
        self.reserve = reserve
        self._cond = threading.Condition()
        self._calls = 0
        self._active: AdapterSet = ()
        self._loaded: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first

    def reset(self) -> None:
        """The pipelines were dropped (the model was unloaded): nothing is loaded in them any more."""
        with self._cond:
            self._loaded.clear()
            self._active = ()

    def on_text_encoders(self) -> AdapterSet:
        """The adapters in force that change what the text encoders output (a prompt cache's key)."""
        return tuple((n, s) for n, s in self._active if n in self._loaded and self._loaded[n].on_text_encoder)

    @contextmanager
    def applied(self, pipes: Sequence[Any], wanted: AdapterSet) -> Iterator[None]:
        """Around one pipeline call: the pipelines run with `wanted` (the base model when empty)."""
        with self._cond:
            while self._calls and self._active != wanted:
                self._cond.wait()
            if self._active != wanted:
                self._switch(pipes, wanted)
            self._calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                self._cond.notify_all()

    def _switch(self, pipes: Sequence[Any], wanted: AdapterSet) -> None:
        """(no call runs) Load what is missing, unload the least recently used beyond the limits, then
        put `wanted` in force."""
        names = [name for name, _ in wanted]
        for name in names:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                continue
            adapter = self.catalogue.get(name)
            if self.reserve and adapter.bytes > self.reserve:
                raise InvalidValue(
                    f"Adapter '{name}' is larger than the memory this server sets aside for the adapters "
                    f"of model '{self.catalogue.model_name}'.",
                    param="lora",
                )
            self._make_room(pipes, adapter.bytes, keep=names)
            self._load(pipes, adapter)
        for pipe in pipes:
            if wanted:
                pipe.enable_lora()
                pipe.set_adapters(names, adapter_weights=[scale for _, scale in wanted])
            elif self._loaded:
                pipe.disable_lora()  # the base model's own forward: the same pixels as no adapter at all
        self._active = wanted

    def _make_room(self, pipes: Sequence[Any], incoming: int, *, keep: Sequence[str]) -> None:
        def over() -> bool:
            count = len(self._loaded) + 1 > self.max_loaded
            held = sum(a.bytes for a in self._loaded.values()) + incoming
            return count or bool(self.reserve and held > self.reserve)

        while over():
            victim = next((n for n in self._loaded if n not in keep), None)
            if victim is None:
                return  # every loaded adapter is wanted by this call: max_loras <= max_loaded_loras
            for pipe in pipes:
                pipe.delete_adapters([victim])
            del self._loaded[victim]
            logger.info("adapter %r of %r unloaded", victim, self.catalogue.model_name)

    def _load(self, pipes: Sequence[Any], adapter: Adapter) -> None:
        for pipe in pipes:
            try:
                pipe.load_lora_weights(adapter.path, adapter_name=adapter.name)
            except Exception as exc:
                self._forget(pipes, adapter.name)
                raise InvalidValue(
                    f"Adapter '{adapter.name}' could not be applied to model '{self.catalogue.model_name}'.",
                    param="lora",
                ) from exc
            # diffusers only warns when no key matched: an adapter that took nowhere is refused.
            if not any(adapter.name in names for names in pipe.get_list_adapters().values()):
                self._forget(pipes, adapter.name)
                raise InvalidValue(
                    f"Adapter '{adapter.name}' matches no module of model '{self.catalogue.model_name}'.",
                    param="lora",
                )
        self._loaded[adapter.name] = adapter
        logger.info("adapter %r of %r loaded", adapter.name, self.catalogue.model_name)

    @staticmethod
    def _forget(pipes: Sequence[Any], name: str) -> None:
        for pipe in pipes:
            if any(name in names for names in pipe.get_list_adapters().values()):
                pipe.delete_adapters([name])
