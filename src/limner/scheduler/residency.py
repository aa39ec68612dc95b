"""Residency: which engines are loaded, within what memory, and the only caller of `engine.load()` and
`engine.close()`.

An engine is loaded at start-up when its configuration says so (`load = "startup"` or `"pinned"`),
else on first use: a lane's worker about to run a batch asks `using(key)`, and the jobs wait in their
queue meanwhile. Every engine is closed at shutdown.

With a memory budget for a device, the engines on it must fit: what each takes is known before it is
loaded (`engine.memory().estimated`, from its files) and measured once it is. A load that does not fit
first unloads the least recently used **idle** engines (no batch running, no job queued: `work(key)`),
never a pinned one and never one with work; when even that cannot make room, the load waits for work to
drain, up to `load_wait_seconds`, then the batch fails with a 503 that says why (`NoRoom`). One engine
loads at a time per device, so two loads never both count on the same free bytes. A load that fails
frees what it took (the engine is closed again) and fails the batch; the next batch tries again.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from limner.engines.base import Engine
from limner.errors import EngineUnavailable
from limner.scheduler.tickets import Observer, Unobserved

log = logging.getLogger("limner.scheduler")

#: How long a load waits for room (busy models to drain) before its batch fails with a 503.
DEFAULT_LOAD_WAIT_SECONDS = 60.0
#: Share of a device's memory that `memory_budget = "auto"` gives the models.
AUTO_SHARE = 0.9
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_AMOUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


class NoRoom(EngineUnavailable):
    """A model could not be loaded within the memory budget in time: the models that hold it are busy."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, code="model_not_loaded", headers={"Retry-After": str(max(1, retry_after))})


def normal_device(device: str) -> str:
    """ "cuda" and "cuda:0" are one device."""
    return f"{device}:0" if device in ("cuda", "xpu") else device


def device_total_bytes(device: str) -> int:
    """The memory of a device: the accelerator's own (torch), or the machine's for "cpu"."""
    if device == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    torch: Any = importlib.import_module("torch")
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(int(device.partition(":")[2] or 0)).total_memory)
    if device == "mps":
        return int(torch.mps.recommended_max_memory())
    raise ValueError(f"memory_budget: cannot tell how much memory device {device!r} has; give a size")


def parse_amount(value: object, total: Callable[[], int]) -> int:
    """Bytes from "20GiB", "512MB", "85%", "auto" (90 % of `total()`) or an integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return int(total() * AUTO_SHARE)
        if text.endswith("%"):
            share = text[:-1].strip()
            if share.replace(".", "", 1).isdigit() and 0 < float(share) <= 100:
                return int(total() * float(share) / 100)
        match = _AMOUNT.fullmatch(text)
        if match and match.group(2) in _UNITS and float(match.group(1)) > 0:
            return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(
        f'memory_budget: expected a size such as "20GiB", a share such as "80%", or "auto"; got {value!r}'
    )


def resolve_budgets(setting: object, devices: set[str]) -> dict[str, int]:
    """Per device, the bytes its models may take: one value for every device, or a table by device."""
    if setting is None:
        return {}
    if isinstance(setting, Mapping):
        given = {normal_device(str(k)): v for k, v in setting.items()}
        unknown = sorted(set(given) - devices)
        if unknown:
            known = ", ".join(sorted(devices)) or "none"
            raise ValueError(f"memory_budget: no model runs on {unknown[0]!r} (models run on: {known})")
        return {d: parse_amount(v, functools.partial(device_total_bytes, d)) for d, v in given.items()}
    return {d: parse_amount(setting, functools.partial(device_total_bytes, d)) for d in devices}


def gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


@dataclass
class _State:
    loaded_at: float | None = None
    load_seconds: float | None = None
    loading: bool = False
    running: int = 0
    idle_since: float | None = None
    last_used: float = 0.0
    loads: int = 0
    evictions: int = 0
    failures: int = 0


class Residency:
    """The engines by lane key, the model names each one serves (for the observer and errors), and the
    memory budget of each device (none: every engine loads whatever it takes)."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        models: Mapping[str, list[str]],
        observer: Observer | None = None,
        *,
        budgets: Mapping[str, int] | None = None,
        load_wait_seconds: float = DEFAULT_LOAD_WAIT_SECONDS,
        work: Callable[[str], int] | None = None,
    ) -> None:
        self.engines = dict(engines)
        self.models = {key: list(models.get(key, [])) for key in self.engines}
        self.observer: Observer = observer or Unobserved()
        self.budgets = dict(budgets or {})
        self.load_wait_seconds = load_wait_seconds
        #: Jobs queued or taken by a worker, per lane key: an engine with work is never unloaded.
        self.work: Callable[[str], int] = work or (lambda key: 0)
        self._cond = threading.Condition()
        self._states = {key: _State() for key in self.engines}
        self._check_fits()

    # -- the budget -------------------------------------------------------------------------------

    def _device(self, key: str) -> str | None:
        device = self.engines[key].memory().device
        return None if device is None else normal_device(device)

    def _budgeted(self, key: str) -> bool:
        device = self._device(key)
        return device is not None and device in self.budgets

    def _name(self, key: str) -> str:
        return ", ".join(f"'{m}'" for m in self.models[key]) or f"'{key}'"

    def _check_fits(self) -> None:
        """A model that cannot fit even with every evictable model unloaded is a start-up error."""
        pinned_keys = [k for k, e in self.engines.items() if e.pinned]
        for key, engine in self.engines.items():
            if not self._budgeted(key):
                continue
            device = self._device(key)
            budget = self.budgets[str(device)]
            pinned = [k for k in pinned_keys if k != key and self._device(k) == device]
            need = engine.memory().charge + sum(self.engines[k].memory().charge for k in pinned)
            if need > budget:
                beside = f" beside the pinned {', '.join(self._name(k) for k in pinned)}" if pinned else ""
                raise ValueError(
                    f"model {self._name(key)} needs about {gib(engine.memory().charge)}{beside}, more than "
                    f"the memory budget of {device} ({gib(budget)}): raise memory_budget, unpin a model, "
                    "or serve it elsewhere"
                )

    def _used(self, device: str, *, but: str | None = None) -> int:
        return sum(
            self.engines[k].memory().charge
            for k, s in self._states.items()
            if k != but and self._device(k) == device and (s.loading or self.engines[k].loaded)
        )

    def _evictable(self, key: str, device: str) -> list[str]:
        """Loaded engines on the device that may be unloaded now, least recently used first."""
        now = [
            k
            for k, s in self._states.items()
            if k != key
            and self._device(k) == device
            and self.engines[k].loaded
            and not s.loading
            and not s.running
            and not self.engines[k].pinned
            and self.work(k) == 0
        ]
        return sorted(now, key=lambda k: self._states[k].last_used)

    def _make_room(self, key: str) -> bool:
        """(under the lock) True when the engine fits now, after unloading idle engines if that is
        enough; unloads nothing when it is not."""
        device = self._device(key)
        if device is None or device not in self.budgets:
            return True
        if any(s.loading for k, s in self._states.items() if k != key and self._device(k) == device):
            return False  # one load at a time per device: the other one's bytes are not counted yet
        budget, need = self.budgets[device], self.engines[key].memory().charge
        free = budget - self._used(device, but=key)
        if need <= free:
            return True
        victims, freed = [], 0
        for other in self._evictable(key, device):
            victims.append(other)
            freed += self.engines[other].memory().charge
            if need <= free + freed:
                break
        if need > free + freed:
            return False
        for other in victims:
            self._unload(other, reason=f"to make room for {self._name(key)}")
        return True

    def _unload(self, key: str, *, reason: str) -> None:
        state = self._states[key]
        charge = self.engines[key].memory().charge
        self.engines[key].close()
        state.loaded_at, state.idle_since = None, None
        state.evictions += 1
        log.info("unloaded %s (%s freed) %s", self._name(key), gib(charge), reason)
        for model in self.models[key]:
            self.observer.model_unloaded(model)

    def _no_room(self, key: str) -> NoRoom:
        device = str(self._device(key))
        busy = [
            k
            for k in self.engines
            if k != key and self._device(k) == device and (self.engines[k].loaded or self._states[k].loading)
        ]
        holders = ", ".join(self._name(k) for k in busy) or "nothing"
        return NoRoom(
            f"Model {self._name(key)} is not loaded, and the memory budget of this server's {device} is "
            f"held by {holders}, busy for the last {self.load_wait_seconds:g} s. Try again later.",
            retry_after=max(1, int(self.load_wait_seconds // 4)),
        )

    # -- loading and using ------------------------------------------------------------------------

    def load_at_startup(self) -> None:
        """Load every engine whose configuration asks to be loaded before the first request: pinned
        ones first, so that those the budget cannot keep as well are the evictable ones."""
        keys = [k for k, e in self.engines.items() if e.load_at_startup]
        for key in sorted(keys, key=lambda k: not self.engines[k].pinned):
            with self.using(key):
                pass

    def ensure(self, key: str) -> None:
        """Load the engine if it is not resident (for callers that do not run it: tests, start-up)."""
        with self.using(key):
            pass

    @contextlib.contextmanager
    def using(self, key: str) -> Iterator[float | None]:
        """Around a batch: the engine is loaded (loading it first, within the budget, if it is not)
        and busy while the block runs. Yields the seconds this batch waited for a load, or None when
        the engine was already resident."""
        waited = self.acquire(key)
        try:
            yield waited
        finally:
            self.release(key)

    def acquire(self, key: str) -> float | None:
        """The engine, loaded and marked busy (release() ends that): the seconds waited for a load,
        None when it was resident. Raises NoRoom when the budget could not make room in time, and
        what the engine's load raised when that failed."""
        engine, state = self.engines[key], self._states[key]
        asked = time.perf_counter()
        with self._cond:
            deadline: float | None = None
            while True:
                if engine.loaded and not state.loading:
                    state.running += 1
                    return None
                if not state.loading and self._make_room(key):
                    state.loading = True
                    break
                # Someone else loads it, or there is no room yet: wait for a load or a batch to end.
                if not state.loading:
                    deadline = deadline or time.monotonic() + self.load_wait_seconds
                    if time.monotonic() >= deadline:
                        raise self._no_room(key)
                # Queues drain without a word to this lock: look again every so often.
                self._cond.wait(0.1)
        self._load(key)
        return time.perf_counter() - asked

    def release(self, key: str) -> None:
        state = self._states[key]
        with self._cond:
            state.running -= 1
            state.last_used = time.monotonic()
            if not state.running:
                state.idle_since = state.last_used
            self._cond.notify_all()

    def _load(self, key: str) -> None:
        """Load (state.loading is set, the bytes are counted): on success the caller holds a run."""
        engine, state = self.engines[key], self._states[key]
        started = time.perf_counter()
        try:
            engine.load()
        except BaseException:
            with contextlib.suppress(Exception):
                engine.close()  # whatever the failed load took goes back
            with self._cond:
                state.loading = False
                state.failures += 1
                self._cond.notify_all()
            for model in self.models[key]:
                self.observer.model_load_failed(model)
            raise
        seconds = time.perf_counter() - started
        with self._cond:
            state.loading = False
            state.loads += 1
            state.running += 1
            state.loaded_at, state.load_seconds = time.time(), seconds
            state.last_used = state.idle_since = time.monotonic()
            self._cond.notify_all()
        if self._budgeted(key):
            memory = engine.memory()
            log.info(
                "loaded %s in %.2f s: %s measured (%s estimated)",
                self._name(key),
                seconds,
                gib(memory.measured or 0),
                gib(memory.estimated),
            )
        for model in self.models[key]:
            self.observer.model_loaded(model, seconds)

    def close_all(self) -> None:
        """Shutdown: close every engine (each frees what it holds)."""
        with self._cond:
            for key, engine in self.engines.items():
                engine.close()
                self._states[key].loaded_at = None

    def loaded(self, key: str) -> bool:
        return self.engines[key].loaded

    # -- what it reports --------------------------------------------------------------------------

    def state_of(self, key: str) -> str:
        if self._states[key].loading:
            return "loading"
        return "loaded" if self.engines[key].loaded else "unloaded"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per engine: its state, bytes, how long its load took, for how long it has been idle, and
        how often it was loaded and unloaded."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        with self._cond:
            for key, engine in self.engines.items():
                state, memory = self._states[key], engine.memory()
                idle = None if state.running or state.idle_since is None else round(now - state.idle_since, 3)
                out[key] = {
                    "state": self.state_of(key),
                    "loaded": engine.loaded,
                    "pinned": engine.pinned,
                    "device": memory.device,
                    "bytes": {
                        "estimated": memory.estimated,
                        "measured": memory.measured,
                        "reserved": memory.reserved,
                        "allocated": memory.allocated,
                    },
                    "load_seconds": None if state.load_seconds is None else round(state.load_seconds, 3),
                    "running": state.running,
                    "idle_seconds": idle if engine.loaded else None,
                    "loads": state.loads,
                    "evictions": state.evictions,
                    "load_failures": state.failures,
                }
        return out

    def budget_report(self) -> dict[str, dict[str, Any]]:
        """Per budgeted device: the budget, the bytes resident, and which models hold them."""
        with self._cond:
            return {
                device: {
                    "budget": budget,
                    "resident": self._used(device),
                    "models": [
                        m
                        for k, e in self.engines.items()
                        if self._device(k) == device and e.loaded
                        for m in self.models[k]
                    ],
                }
                for device, budget in self.budgets.items()
            }
