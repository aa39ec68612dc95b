"""The layering written in pyproject.toml's import-linter contracts holds: floors import only the
floors below them, the client SDK nothing of the server side, and no modules import each other in a
circle. A violation fails this test, and so CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_the_server_starts_without_the_http_client_or_torch() -> None:
    """httpx2 is for image_url fetches and callbacks, torch for diffusers models: imported when used."""
    code = "import sys, limner.server.app; print(sorted(m for m in ('httpx2', 'torch', 'diffusers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
