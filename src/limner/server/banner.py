"""The short block `limner serve` logs once it is ready: where it listens, where its data lives,
whether keys are required, and each model with its engine and whether it is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from limner.engines.registry import EngineRegistry
from limner.server.auth import is_loopback
from limner.server.settings import Settings


def startup_lines(
    settings: Settings, registry: EngineRegistry, hashes: Mapping[str, str] | None, *, create_key: str = ""
) -> list[str]:
    """`create_key` is the command that makes a key in this server's store (shown when none is active)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if hashes is None:
        keys = "not required" + (" (auth = none)" if settings.auth == "none" else " (no key created yet)")
    else:
        keys = f"required ({len(hashes)} active)"
        if not hashes:
            keys += f": every call is refused until you create one with `{create_key}`"
    lines = [
        f"limner serving on http://{host}:{settings.port}",
        f"  data dir: {settings.data_dir}",
        f"  API keys: {keys}",
        "  models:",
    ]
    width = max(len(name) for name in registry.models)
    for name, served in registry.models.items():
        engine = registry.engines[served.engine_key]
        state = "loaded" if engine.loaded else "loads on first request"
        source = f" {served.source}" if served.source else ""
        lines.append(f"    {name:<{width}}  {served.engine_name}{source}  {state}")
    return lines


def startup_warnings(settings: Settings, hashes: Mapping[str, str] | None) -> list[str]:
    warnings = []
    if hashes is None and not is_loopback(settings.host):
        warnings.append(
            f"listening on {settings.host} with no API key: anyone who can reach this port can use it. "
            "Create one with `limner keys create`."
        )
    images = settings.data_dir / "images"
    if not _writable(images):
        warnings.append(
            f"the data dir {images} is not writable: url-mode responses will fail with 507 "
            "(b64_json keeps working)."
        )
    return warnings


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)
