"""Residency: which engines are loaded, and the only caller of `engine.load()` and `engine.close()`.

An engine is loaded at start-up when its configuration says so (`load_at_startup`), else on first use,
when a lane's worker is about to run its first batch (the jobs wait in their queue meanwhile); every
engine is closed at shutdown. Residency knows what is resident, since when, and how long each engine
has been idle (no batch running), which is what a memory budget needs to choose what to unload.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from limner.engines.base import Engine
from limner.scheduler.tickets import Observer, Unobserved


@dataclass
class _State:
    lock: threading.Lock
    loaded_at: float | None = None
    load_seconds: float | None = None
    running: int = 0
    idle_since: float | None = None


class Residency:
    """The engines by lane key, and the model names each one serves (for the observer)."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        models: Mapping[str, list[str]],
        observer: Observer | None = None,
    ) -> None:
        self.engines = dict(engines)
        self.models = {key: list(models.get(key, [])) for key in self.engines}
        self.observer: Observer = observer or Unobserved()
        self._states = {key: _State(threading.Lock()) for key in self.engines}

    def load_at_startup(self) -> None:
        """Load every engine whose configuration asks to be loaded before the first request."""
        for key, engine in self.engines.items():
            if engine.load_at_startup:
                self.ensure(key)

    def ensure(self, key: str) -> None:
        """Load the engine if it is not resident (one load at a time per engine; idempotent)."""
        engine, state = self.engines[key], self._states[key]
        if engine.loaded:
            return
        with state.lock:
            if engine.loaded:
                return
            started = time.perf_counter()
            engine.load()
            seconds = time.perf_counter() - started
            state.loaded_at, state.load_seconds, state.idle_since = time.time(), seconds, time.monotonic()
        for model in self.models[key]:
            self.observer.model_loaded(model, seconds)

    @contextlib.contextmanager
    def in_use(self, key: str) -> Iterator[None]:
        """Around a batch: the engine is busy (not idle) while it runs."""
        state = self._states[key]
        with state.lock:
            state.running += 1
        try:
            yield
        finally:
            with state.lock:
                state.running -= 1
                if not state.running:
                    state.idle_since = time.monotonic()

    def close_all(self) -> None:
        """Shutdown: close every engine (each frees what it holds)."""
        for key, engine in self.engines.items():
            with self._states[key].lock:
                engine.close()
                self._states[key].loaded_at = None

    def loaded(self, key: str) -> bool:
        return self.engines[key].loaded

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per engine: whether it is loaded, how long its load took, and for how long it has been idle."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for key, engine in self.engines.items():
            state = self._states[key]
            idle = None if state.running or state.idle_since is None else round(now - state.idle_since, 3)
            out[key] = {
                "loaded": engine.loaded,
                "load_seconds": None if state.load_seconds is None else round(state.load_seconds, 3),
                "running": state.running,
                "idle_seconds": idle if engine.loaded else None,
            }
        return out
