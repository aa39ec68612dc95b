"""The short block `limner serve` logs once it is ready: where it listens, where its data lives,
whether keys are required, and each model with its engine and whether it is loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from limner.engines.registry import EngineRegistry
from limner.server.auth import is_loopback
from limner.server.settings import Settings

if TYPE_CHECKING:
    from limner.ray_app import RayOptions


def _address(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def _keys(settings: Settings, hashes: Mapping[str, str] | None, create_key: str) -> str:
    if hashes is None:
        return "not required" + (" (auth = none)" if settings.auth == "none" else " (no key created yet)")
    keys = f"required ({len(hashes)} active)"
    if not hashes:
        keys += f": every call is refused until you create one with `{create_key}`"
    return keys


def startup_lines(
    settings: Settings, registry: EngineRegistry, hashes: Mapping[str, str] | None, *, create_key: str = ""
) -> list[str]:
    """`create_key` is the command that makes a key in this server's store (shown when none is active)."""
    lines = [
        f"limner serving on {_address(settings)}",
        f"  data dir: {settings.data_dir}",
        f"  API keys: {_keys(settings, hashes, create_key)}",
        "  models:",
    ]
    width = max(len(name) for name in registry.models)
    for name, served in registry.models.items():
        engine = registry.engines[served.engine_key]
        state = "loaded" if engine.loaded else "loads on first request"
        source = f" {served.source}" if served.source else ""
        lines.append(f"    {name:<{width}}  {served.engine_name}{source}  {state}")
    return lines


def ray_lines(settings: Settings, options: RayOptions) -> list[str]:
    """The block `limner serve --ray` logs once Ray Serve answers: every replica runs the whole app, so
    the models are the configuration's (each replica logs its own block to Ray's log files)."""
    if options.min_replicas is not None or options.max_replicas is not None:
        replicas = (
            f"{options.min_replicas or 1} to {options.max_replicas or max(1, options.replicas)} replicas"
        )
    else:
        replicas = f"{options.replicas} replica{'s' if options.replicas != 1 else ''}"
    keys = "in PostgreSQL" if settings.keys_url else f"in {settings.data_dir}"
    if settings.auth == "none":
        keys = "not required (auth = none)"
    lines = [
        f"limner serving on {_address(settings)} through Ray Serve ({replicas})",
        f"  data dir: {settings.data_dir}",
        f"  API keys: {keys}",
        "  models (in every replica):",
    ]
    width = max([len(name) for name in settings.models] + [len("every other OpenAI name")])
    for name, table in settings.models.items():
        source = table.engine_options().get("source") if table.engine != "sketch" else None
        lines.append(f"    {name:<{width}}  {table.engine}{f' {source}' if source else ''}")
    lines.append(f"    {'every other OpenAI name':<{width}}  sketch")
    return lines


def startup_warnings(settings: Settings, hashes: Mapping[str, str] | None) -> list[str]:
    warnings = []
    if hashes is None and not is_loopback(settings.host):
        warnings.append(
            f"listening on {settings.host} with no API key: anyone who can reach this port can use it, and "
            "every client shares one owner, so anyone can list, read and cancel everyone's jobs "
            "(/v1/images/jobs). Create a key with `limner keys create`."
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
