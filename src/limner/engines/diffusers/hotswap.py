"""LoRA adapters on a compiled model: fixed slots made before compiling, adapters' weights copied in.

    layout = slot_layout(catalogue, "transformer")    # at start-up: the modules and rank the slots need
    slots = HotswapSlots(catalogue, layout, itemsize) # the engine's AdapterSlots when compile = true
    slots.prepare(pipes)                      # at load, before torch.compile
    with slots.applied(pipes, wanted): pipe(...)

Loading an adapter the usual way adds modules and attributes to the denoiser, and `set_adapters`
replaces its float scales: each is a new graph for torch.compile (a recompilation in a request, or a
graph break per layer). diffusers' and PEFT's answer is the hotswap, used here as they describe it:

* **Slots before compiling.** `max_loras` LoRA adapters are added to the denoiser before it is
  compiled, on the union of the modules the adapters known at start-up adapt, at the largest of their
  ranks (or `lora_rank`), all active, their scales made tensors (PEFT's
  `prepare_model_for_compiled_hotswap`) and set to zero: the compiled graph has the LoRA layers, and a
  request without adapters adds exactly zero to the base model's output.
* **Adapters copied in.** A request's adapter is swapped into a slot in place
  (`load_lora_weights(..., hotswap=True)`: smaller ranks padded with zeros, modules it does not adapt
  zeroed) and its scale written into the slot's scale tensors: no new module, no new attribute, no
  recompilation. A slot keeps its adapter until another needs it, so repeated requests swap nothing.
* **What cannot be swapped is refused** (a 400 naming `lora`, or the start-up for a configured
  adapter): an adapter of the text encoder (diffusers hotswaps the denoiser only), one of a higher rank
  than the slots, or one adapting a module the slots do not cover (the slots are shaped at start-up: an
  adapter added to `lora_dir` later must fit them; `lora_rank` leaves room for higher ranks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from limner.engines.diffusers.adapters import (
    Adapter,
    AdapterCatalogue,
    AdapterMismatch,
    AdapterSet,
    AdapterSlots,
)
from limner.engines.diffusers.loading import _module
from limner.engines.diffusers.options import option_error
from limner.errors import InvalidValue

logger = logging.getLogger("limner.engines.diffusers")


@dataclass(frozen=True)
class SlotLayout:
    """The adapter slots of a compiled denoiser: which modules, at what rank, how many."""

    component: str  # "unet" or "transformer"
    #: module (within the component) -> (elements of one rank of its down matrix, of its up matrix)
    modules: dict[str, tuple[int, int]]
    rank: int
    count: int

    def bytes(self, itemsize: int) -> int:
        per_slot = sum(down + up for down, up in self.modules.values()) * self.rank
        return self.count * per_slot * itemsize

    def check(self, adapter: Adapter) -> None:
        """AdapterMismatch when the slots cannot hold `adapter`."""
        if adapter.components != {self.component}:
            raise AdapterMismatch(
                "it adapts the text encoder, and a compiled model swaps adapters of its denoiser only "
                "(diffusers' hotswap)"
            )
        if adapter.rank > self.rank:
            raise AdapterMismatch(
                f"its rank {adapter.rank} is above the rank of the compiled model's adapter slots "
                f"({self.rank}; the option lora_rank raises it)"
            )
        outside = [m for m, _, _ in adapter.modules if m.partition(".")[2] not in self.modules]
        if outside:
            raise AdapterMismatch(
                f"it adapts {len(outside)} modules the compiled model's adapter slots do not cover (such "
                f"as {outside[0]}): the slots are shaped by the adapters found at start-up"
            )


def slot_layout(catalogue: AdapterCatalogue, component: str) -> SlotLayout:
    """The slots the adapters known at start-up need: their modules, at their largest rank or
    `lora_rank` (a configured adapter the slots could never hold stops the start-up; one in `lora_dir`
    is left out, and refused when asked for)."""
    options = catalogue.options
    known: list[Adapter] = []
    for adapter in catalogue.configured.values():
        if adapter.components != {component}:
            raise option_error(
                f"loras.{adapter.name}",
                "adapts the text encoder, and a compiled model swaps adapters of its denoiser only "
                "(diffusers' hotswap): drop compile, or use an adapter of the denoiser alone",
            )
        if options.lora_rank is not None and adapter.rank > options.lora_rank:
            raise option_error(
                "lora_rank",
                f"{options.lora_rank} is below the rank {adapter.rank} of adapter '{adapter.name}'",
            )
        known.append(adapter)
    for name in catalogue.dir_names():
        found = catalogue.lookup(name)
        if (
            isinstance(found, Adapter)
            and found.components == {component}
            and (options.lora_rank is None or found.rank <= options.lora_rank)
        ):
            known.append(found)
    if not known:
        raise option_error(
            "compile",
            "with adapters needs at least one adapter of the denoiser at start-up (in loras or lora_dir): "
            "the compiled model's adapter slots are shaped by them",
        )
    modules: dict[str, tuple[int, int]] = {}
    for adapter in known:
        for qualified, down, up in adapter.modules:
            modules[qualified.partition(".")[2]] = (down, up)
    rank = options.lora_rank or max(adapter.rank for adapter in known)
    return SlotLayout(component, modules, rank, options.max_loras)


class HotswapSlots(AdapterSlots):
    """AdapterSlots for a compiled denoiser: `count` fixed slots, adapters swapped into them in place."""

    def __init__(self, catalogue: AdapterCatalogue, layout: SlotLayout, itemsize: int) -> None:
        super().__init__(catalogue, max_loaded=layout.count, reserve=layout.bytes(itemsize))
        self.layout = layout
        self._held: list[str | None] = [None] * layout.count
        #: Per slot: each scale tensor with its value for a scale of 1 (the adapter's alpha / rank).
        self._scales: list[list[tuple[Any, Any]]] = [[] for _ in range(layout.count)]

    @staticmethod
    def _slot(index: int) -> str:
        return f"limner_slot_{index}"

    def prepare(self, pipes: Sequence[Any]) -> None:
        """(at load, before compiling) Add the slots to each pipeline's denoiser, at scale zero."""
        peft = _module("peft")
        hotswap = _module("peft.utils.hotswap")
        names = [self._slot(i) for i in range(self.layout.count)]
        for pipe in pipes:
            denoiser = getattr(pipe, self.layout.component)
            for name in names:
                # Kaiming A and zero B (peft's default): a slot that never held an adapter adds zero.
                config = peft.LoraConfig(
                    r=self.layout.rank,
                    lora_alpha=self.layout.rank,
                    target_modules=sorted(self.layout.modules),
                )
                denoiser.add_adapter(config, adapter_name=name)
            denoiser.set_adapter(names)
            hotswap.prepare_model_for_compiled_hotswap(denoiser, config=denoiser.peft_config)
        with self._cond:
            self._held = [None] * self.layout.count
            for index in range(self.layout.count):
                self._scales[index] = [(t, t.clone()) for t in self._scale_tensors(pipes, index)]
                self._set_scale(index, 0.0)

    def reset(self) -> None:
        super().reset()
        with self._cond:
            self._held = [None] * self.layout.count
            self._scales = [[] for _ in range(self.layout.count)]

    def on_text_encoders(self) -> AdapterSet:
        return ()  # the slots adapt the denoiser only

    def _scale_tensors(self, pipes: Sequence[Any], index: int) -> list[Any]:
        layer = _module("peft.tuners.lora").LoraLayer
        slot = self._slot(index)
        return [
            module.scaling[slot]
            for pipe in pipes
            for module in getattr(pipe, self.layout.component).modules()
            if isinstance(module, layer) and slot in module.scaling
        ]

    def _set_scale(self, index: int, scale: float) -> None:
        for tensor, unit in self._scales[index]:
            tensor.copy_(unit * scale)

    def _switch(self, pipes: Sequence[Any], wanted: AdapterSet) -> None:
        """(no call runs) Each wanted adapter into a slot (the one holding it already, else a free one),
        at its scale; the other slots at zero."""
        names = {name for name, _ in wanted}
        free = [i for i, held in enumerate(self._held) if held not in names]
        used: set[int] = set()
        for name, scale in wanted:
            index = self._held.index(name) if name in self._held else free.pop(0)
            if self._held[index] != name:
                self._swap_in(pipes, index, self.catalogue.get(name))
            self._set_scale(index, scale)
            used.add(index)
        for index in set(range(self.layout.count)) - used:
            self._set_scale(index, 0.0)
        self._active = wanted

    def _swap_in(self, pipes: Sequence[Any], index: int, adapter: Adapter) -> None:
        slot = self._slot(index)
        self._held[index] = None
        try:
            for pipe in pipes:
                pipe.load_lora_weights(adapter.path, adapter_name=slot, hotswap=True)
        except Exception as exc:
            # Part of the weights may have been copied: the slot holds nothing usable, at scale zero.
            self._set_scale(index, 0.0)
            logger.warning("adapter %r could not be swapped into %s: %s", adapter.name, slot, exc)
            raise InvalidValue(
                f"Adapter '{adapter.name}' could not be swapped into model '{self.catalogue.model_name}' "
                "(its LoRA settings differ from the compiled slots'; the server log says how).",
                param="lora",
            ) from exc
        # The swap wrote the adapter's alpha / rank into the scale tensors it touched: scale 1.
        self._scales[index] = [(t, t.clone()) for t in self._scale_tensors(pipes, index)]
        self._held[index] = adapter.name
        logger.info("adapter %r of %r swapped into %s", adapter.name, self.catalogue.model_name, slot)
