"""How many bytes a model takes on its device: estimated from its files before it is loaded, measured
once it is.

    estimate_folder("/models/sd15", torch.float16) -> 2_132_000_000
    measure(pipe, "cuda") -> 2_130_000_000

The estimate reads only the safetensors headers (tensor shapes and dtypes: no weights), of the
components `model_index.json` names, and counts floating tensors at the dtype the model will run in
(the pipeline converts them when it loads). A checkpoint stored as pickled `.bin` files has no header
to read: its file sizes stand in. The measurement counts the parameters and buffers on the device, each
storage once (modules that share weights, such as the pipelines `from_pipe` builds, share storages).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from limner.engines.diffusers.loading import _module

logger = logging.getLogger("limner.engines.diffusers")

#: Bytes per element of each safetensors dtype.
_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_FLOATS = frozenset({"F64", "F32", "F16", "BF16"})
#: A weight file with a variant infix (`diffusion_pytorch_model.fp16.safetensors`): diffusers loads the
#: plain files unless a variant is asked for, so a variant is counted only where it is all there is.
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema)\.")


def tensor_bytes(path: str | Path, itemsize: int) -> int:
    """The bytes of a safetensors file's tensors once floating ones are converted to `itemsize`; the
    file's size when its header cannot be read (a damaged file fails when it is loaded, with a 503
    that names its model, not at start-up, where it would stop every other model too)."""
    try:
        return _header_bytes(path, itemsize)
    except Exception as exc:
        logger.warning("cannot read the tensors of %s (%s): counting its file size", path, exc)
        return os.path.getsize(path)


def _header_bytes(path: str | Path, itemsize: int) -> int:
    safetensors = _module("safetensors")
    total = 0
    with safetensors.safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118  (a safe_open handle is not iterable)
            piece = handle.get_slice(key)
            dtype, count = piece.get_dtype(), _numel(piece.get_shape())
            total += count * (itemsize if dtype in _FLOATS else _ITEMSIZE.get(dtype, 4))
    return total


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for side in shape:
        count *= int(side)
    return count


def _weight_files(folder: Path) -> list[Path]:
    safetensors = sorted(folder.glob("*.safetensors"))
    plain = [p for p in safetensors if not _VARIANT.search(p.name)]
    if plain or safetensors:
        return plain or safetensors
    return sorted(folder.glob("*.bin"))


def estimate_folder(folder: str | Path, dtype: Any) -> int:
    """The device bytes of a diffusers checkpoint folder's weights at `dtype` (a torch dtype)."""
    root = Path(folder)
    itemsize = int(_module("torch").empty(0, dtype=dtype).element_size())
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    # model_index.json maps each component to [library, class]; null entries are absent components.
    parts = [name for name, value in index.items() if isinstance(value, list) and value[0] is not None]
    folders = [root / part for part in parts if (root / part).is_dir()] or [root]
    total = 0
    for part in folders:
        for path in _weight_files(part):
            if path.suffix == ".safetensors":
                total += tensor_bytes(path, itemsize)
            else:
                total += os.path.getsize(path)
    return total


def measure(pipes: Iterable[Any], device: str) -> int:
    """The bytes of the parameters and buffers of every module of these pipelines that live on
    `device` (each storage once)."""
    torch = _module("torch")
    modules = [
        c for p in pipes for c in getattr(p, "components", {}).values() if isinstance(c, torch.nn.Module)
    ]
    return measure_modules(modules, device)


def measure_modules(modules: Iterable[Any], device: str) -> int:
    """The bytes of these torch modules' parameters and buffers on `device` (each storage once)."""
    torch = _module("torch")
    want = torch.device(device)
    seen: set[tuple[str, int]] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            total += _tensor_bytes(tensor, torch, want, seen)
    return total


def _tensor_bytes(tensor: Any, torch: Any, want: Any, seen: set[tuple[str, int]]) -> int:
    """A tensor's bytes on `want`, each storage once; a quantized weight (a torchao tensor subclass)
    by the tensors it holds (int8 data and scales), not the dtype it poses as."""
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        names, _ = data.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(data, name), torch, want, seen) for name in names)
    if data.device.type != want.type or (want.index is not None and data.device.index != want.index):
        return 0
    storage = data.untyped_storage()
    key = (str(data.device), storage.data_ptr())
    if key in seen:
        return 0
    seen.add(key)
    return int(storage.nbytes())
