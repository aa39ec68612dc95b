"""`import limner.client` stays light: no server, web framework, torch, diffusers (nor CLI libraries)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_TOP = {"fastapi", "starlette", "uvicorn", "torch", "diffusers", "transformers", "typer", "rich"}
FORBIDDEN_LIMNER = {"server", "engines", "cli", "scheduler", "imaging", "storage"}

PROBE = "import json, sys; import limner.client; print(json.dumps(sorted(sys.modules)))"


def test_import_loads_no_server_framework_or_heavy_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert "limner.client" in loaded and "limner.types" in loaded and "httpx2" in loaded
    offenders = [
        name
        for name in loaded
        if name.split(".")[0] in FORBIDDEN_TOP
        or (name.startswith("limner.") and name.split(".")[1] in FORBIDDEN_LIMNER)
    ]
    assert offenders == []
