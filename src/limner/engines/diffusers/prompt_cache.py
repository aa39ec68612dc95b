"""`prompt_cache_mb`: the text encoders' outputs kept in an LRU, shared by every request of a model.

    cache = PromptCache(256 * 2**20, context=lambda: adapters_on_text_encoders)
    cache.install(pipe)      # wraps each text encoder's forward

The cache sits at the text encoders themselves, not at each family's `encode_prompt`, so that one
mechanism serves every family, whatever it feeds its encoders: the key is everything a forward call
receives (the token ids and attention mask, the image a Qwen-Image editor encodes with its prompt, the
flags such as `output_hidden_states`), plus which encoder and what `context()` says (the LoRA adapters in
force on the text encoders). Equal keys are equal inputs, so a hit returns what the encoder would: the
output is lossless. A batch of prompts is looked up row by row (each row's inputs are its key), the
rows not seen before run as one smaller batch, and the rows are joined again: a request's prompt hits
whatever batch it was first encoded in. Each hit returns copies of the kept tensors, so that a pipeline that changes its
embeddings in place never changes the cache. The outputs stay on the device (a hit costs a copy, not a
transfer); their bytes count against `prompt_cache_mb`, least recently used out first.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import weakref
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
    if isinstance(value, dict):
        items = {k: _copy(v, torch) for k, v in value.items() if not _unread(v)}
        if isinstance(value, _module("transformers.utils.generic").ModelOutput):
            # Its constructor's checks cost four times the copy of a small output (a cache hit's
            # whole cost): an empty one, filled through __setitem__, which sets the attributes too.
            kind: Any = type(value)
            copied = kind.__new__(kind)
            for key, item in items.items():
                copied[key] = item
            return copied
        return type(value)(**items)
    if isinstance(value, tuple | list):
        return type(value)(_copy(v, torch) for v in value)
    return value


#: _by_row's answer when a call cannot be split by rows (then one key covers the whole call).
_UNSPLIT = object()


def _batch_rows(inputs: Any, torch: Any) -> int | None:
    """The batch size when every tensor among the inputs has it as its first dimension, else None."""
    sizes: set[int] = set()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            sizes.add(int(value.shape[0]) if value.ndim else -1)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(inputs)
    return sizes.pop() if len(sizes) == 1 and -1 not in sizes else None


def _rows(value: Any, rows: list[int], torch: Any) -> Any:
    """The inputs with only these rows of every tensor."""
    if isinstance(value, torch.Tensor):
        return value[rows]
    if isinstance(value, list | tuple):
        return type(value)(_rows(v, rows, torch) for v in value)
    if isinstance(value, dict):
        return {k: _rows(v, rows, torch) for k, v in value.items()}
    return value


def _split(value: Any, count: int, torch: Any) -> list[Any] | None:
    """An output as one output per row; None when some tensor of it is not one row per prompt."""
    if isinstance(value, torch.Tensor):
        return [value[i : i + 1] for i in range(count)] if value.ndim and value.shape[0] == count else None
    if value is None or isinstance(value, bool | int | float | str):
        return [value] * count
    if isinstance(value, dict):
        parts = {k: _split(v, count, torch) for k, v in value.items() if not _unread(v)}
        if any(p is None for p in parts.values()):
            return None
        return [type(value)(**{k: p[i] for k, p in parts.items() if p is not None}) for i in range(count)]
    if isinstance(value, tuple | list):
        items = [_split(v, count, torch) for v in value]
        if any(p is None for p in items):
            return None
        return [type(value)(p[i] for p in items if p is not None) for i in range(count)]
    return None


def _join(rows: list[Any], torch: Any) -> Any:
    """Per-row outputs as one batch output (new tensors: the kept ones are never handed out)."""
    first = rows[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(rows)
    if isinstance(first, dict):
        return type(first)(**{k: _join([r[k] for r in rows], torch) for k in first})
    if isinstance(first, tuple | list):
        return type(first)(_join([r[i] for r in rows], torch) for i in range(len(first)))
    return first


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


def _weak_forward(bound: Callable[..., Any]) -> Callable[[], Callable[..., Any] | None]:
    """A module's forward, held without holding the module (when it is a bound method)."""
    if inspect.ismethod(bound):
        return weakref.WeakMethod(bound)
    return lambda: bound  # a hook put a plain function there: no cycle through the module


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

    def _wrap(self, name: str, bound: Callable[..., Any], torch: Any) -> Callable[..., Any]:
        # The wrapper lives on the module: a strong reference to the module's bound forward would be a
        # cycle, and an unloaded model would wait for a garbage collection (~0.25 s) to free it.
        weak = _weak_forward(bound)
        del bound

        def cached_forward(*args: Any, **kwargs: Any) -> Any:
            forward = weak()
            assert forward is not None  # the module calls it: it is alive
            rows = _batch_rows((args, kwargs), torch)
            if rows is not None and rows > 1:
                joined = self._by_row(name, forward, torch, args, kwargs, rows)
                if joined is not _UNSPLIT:
                    return joined
            return self._whole(name, forward, torch, args, kwargs)

        return cached_forward

    def _key(self, name: str, torch: Any, inputs: Any) -> bytes | None:
        key = hashlib.sha256(f"{name}|{self.context()!r}".encode())
        return key.digest() if _digest(inputs, torch, key) else None

    def _find(self, digest: bytes) -> Any:
        """(under the lock) The kept output, counted as a hit, or None."""
        kept = self._kept.get(digest)
        if kept is not None:
            self._kept.move_to_end(digest)
            self.hits += 1
            return kept[0]
        return None

    def _keep(self, digest: bytes, output: Any, torch: Any) -> None:
        size = _nbytes(output, torch)
        with self._lock:
            self.misses += 1
            if size is not None and size <= self.max_bytes and digest not in self._kept:
                self._kept[digest] = (_copy(output, torch), size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (_, dropped) = self._kept.popitem(last=False)
                    self.bytes -= dropped

    def _whole(self, name: str, forward: Callable[..., Any], torch: Any, args: Any, kwargs: Any) -> Any:
        """One key for the whole call."""
        digest = self._key(name, torch, (list(args), kwargs))
        if digest is None:
            return forward(*args, **kwargs)
        with self._lock:
            kept = self._find(digest)
        if kept is not None:
            return _copy(kept, torch)
        output = forward(*args, **kwargs)
        self._keep(digest, output, torch)
        return output

    def _by_row(
        self, name: str, forward: Callable[..., Any], torch: Any, args: Any, kwargs: Any, rows: int
    ) -> Any:
        """A batch of prompts, one key per row: the rows seen before come from the cache, the others
        run as one smaller batch. _UNSPLIT when the output is not one row per prompt."""
        digests = []
        for row in range(rows):
            digest = self._key(name, torch, _rows((list(args), kwargs), [row], torch))
            if digest is None:
                return _UNSPLIT
            digests.append(digest)
        with self._lock:
            found = [self._find(d) for d in digests]
        missing = [row for row, kept in enumerate(found) if kept is None]
        if missing:
            sub_args, sub_kwargs = _rows((list(args), kwargs), missing, torch)
            output = forward(*sub_args, **sub_kwargs)
            pieces = _split(output, len(missing), torch)
            if pieces is None:
                return output if len(missing) == rows else forward(*args, **kwargs)
            for row, piece in zip(missing, pieces, strict=True):
                self._keep(digests[row], piece, torch)
                found[row] = piece
        return _join(found, torch)

    def counters(self) -> dict[str, float]:
        with self._lock:
            return {
                "prompt_cache_hits": self.hits,
                "prompt_cache_misses": self.misses,
                "prompt_cache_bytes": self.bytes,
            }
