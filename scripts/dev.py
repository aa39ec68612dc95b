#!/usr/bin/env python3
"""The README's two set-up commands, with nothing but python3 on the machine.

    python3 scripts/dev.py serve [limner serve options]   # the server on the built-in engine
    python3 scripts/dev.py test [pytest options]          # the whole test suite

Each creates ./.venv on first use and installs limner into it (editable), then runs the command.
`test` also installs the test tools and the [diffusers] extra, CPU torch first, so that pip never
pulls a CUDA build of torch just to satisfy diffusers' requirement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
TORCH = os.environ.get("LIMNER_TORCH_SPEC", "torch==2.13.0")
#: Said before the server starts: the `limner` command is in the venv, not on PATH.
ACTIVATE_HINT = (
    f"limner is installed in {VENV.relative_to(ROOT)}: in another shell, `source "
    f"{(BIN / 'activate').relative_to(ROOT)}` puts the `limner` command (keys, generate, edit, ...) on "
    "your PATH."
)


def run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_venv() -> Path:
    python = BIN / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    return python


def pip_install(python: Path, *args: str) -> None:
    run(python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__)
        return 2
    python = ensure_venv()
    if argv[0] == "serve":
        pip_install(python, "-e", ".")
        print(ACTIVATE_HINT, flush=True)
        os.execv(python, [str(python), "-m", "limner", "serve", *argv[1:]])
    pip_install(python, TORCH)
    pip_install(python, "-e", ".[test,diffusers]")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([str(python), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
