"""`prompt_cache_mb`: the text encoders' outputs kept in an LRU, shared by every request of a model.

    cache = PromptCache(256 * 2**20, context=lambda: adapters_on_text_encoders)
    cache.install(pipe)      # wraps each text encoder's forward

The cache sits at the text encoders themselves, not at each family's `encode_prompt`, so that one
mechanism serves every family, whatever it feeds its encoders: the key is everything a forward call
receives (the token ids and attention mask, the image a Qwen-Image editor encodes with its prompt, the
flags such as `output_hidden_states`), plus which encoder and what `context()` says (the LoRA adapters in
force on the text encoders). Equal keys are equal inputs, so a hit returns what the encoder would: the
output is lossless. Each hit returns copies of the kept tensors, so that a pipeline that changes its
embeddings in place never changes the cache. The outputs stay on the device (a hit costs a copy, not a
transfer); their bytes count against `prompt_cache_mb`, least recently used out first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from limner.engines.diffusers.loading import _module


def _digest(value: Any, torch: Any, into: Any) -> bool:
    """Feed a forward argument into the hash; False for one that cannot be keyed (then no caching)."""
    if isinstance(value, torch.Tensor):
        into.update(f"T{value.dtype}{tuple(value.shape)}{value.device.type}".encode())
        into.update(value.detach().contiguous().cpu().numpy().tobytes())
        return True
    if value is None or isinstance(value, bool | int | float | str):
        into.update(f"V{value!r}".encode())
        return True
    if isinstance(value, list | tuple):
        into.update(f"L{len(value)}".encode())
        return all(_digest(v, torch, into) for v in value)
    if isinstance(value, dict):
        into.update(f"D{len(value)}".encode())
        return all(into.update(repr(k).encode()) or _digest(v, torch, into) for k, v in sorted(value.items()))
    return False


def _unread(value: Any) -> bool:
    """The attention cache that decoder-style text encoders (Qwen, Gemma) return for generating
    further tokens: no pipeline reads it when it encodes a prompt. Not kept (it is no tensor to copy)."""
    return type(value).__module__ == "transformers.cache_utils"


def _copy(value: Any, torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):  # transformers' ModelOutput is a dict too: rebuilt as itself
        return type(value)(**{k: _copy(v, torch) for k, v in value.items() if not _unread(v)})
    if isinstance(value, tuple | list):
        return type(value)(_copy(v, torch) for v in value)
    return value


def _nbytes(value: Any, torch: Any) -> int | None:
    """The bytes of an output's tensors; None for an output holding anything else (not cached)."""
    if isinstance(value, torch.Tensor):
        return int(value.numel() * value.element_size())
    if value is None or isinstance(value, bool | int | float | str):
        return 0
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if not _unread(v)}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else None
    if items is None:
        return None
    total = 0
    for item in items:
        size = _nbytes(item, torch)
        if size is None:
            return None
        total += size
    return total


class PromptCache:
    """An LRU of text-encoder outputs, bounded in bytes, shared by the threads that run the model."""

    def __init__(self, max_bytes: int, *, context: Callable[[], Hashable] = lambda: ()) -> None:
        self.max_bytes = max_bytes
        self.context = context
        self._lock = threading.Lock()
        self._kept: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        #: Seconds the encoders ran (misses), for the share of a request spent encoding.
        self.encode_seconds = 0.0

    def install(self, pipe: Any, prefix: str = "") -> list[str]:
        """Wrap the forward of each text encoder of `pipe` (keys start with `prefix`: pipelines with
        weights of their own keep apart); the names of those wrapped."""
        torch = _module("torch")
        wrapped = []
        for name, component in pipe.components.items():
            if name.startswith("text_encoder") and isinstance(component, torch.nn.Module):
                if not getattr(component, "_limner_prompt_cache", False):
                    component.forward = self._wrap(prefix + name, component.forward, torch)
                    component._limner_prompt_cache = True
                wrapped.append(name)
        return wrapped

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self.bytes = 0

    def _wrap(self, name: str, forward: Callable[..., Any], torch: Any) -> Callable[..., Any]:
        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            key = hashlib.sha256(f"{name}|{self.context()!r}".encode())
            if not _digest((list(args), kwargs), torch, key):
                return forward(*args, **kwargs)
            digest = key.digest()
            with self._lock:
                kept = self._kept.get(digest)
                if kept is not None:
                    self._kept.move_to_end(digest)
                    self.hits += 1
            if kept is not None:
                return _copy(kept[0], torch)
            started = time.perf_counter()
            output = forward(*args, **kwargs)
            size = _nbytes(output, torch)
            with self._lock:
                self.misses += 1
                self.encode_seconds += time.perf_counter() - started
                if size is not None and size <= self.max_bytes and digest not in self._kept:
                    self._kept[digest] = (_copy(output, torch), size)
                    self.bytes += size
                    while self.bytes > self.max_bytes:
                        _, (_, dropped) = self._kept.popitem(last=False)
                        self.bytes -= dropped
            return output

        return cached_forward

    def counters(self) -> dict[str, float]:
        with self._lock:
            return {
                "prompt_cache_hits": self.hits,
                "prompt_cache_misses": self.misses,
                "prompt_cache_bytes": self.bytes,
            }
