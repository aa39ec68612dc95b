#!/usr/bin/env python3
"""The README's two set-up commands, with nothing but python3 on the machine.

    python3 scripts/dev.py serve [limner serve options]   # the server on the built-in engine
    python3 scripts/dev.py test [pytest options]          # the whole test suite

Each creates ./.venv on first use and installs limner into it (editable), then runs the command.
`test` also installs the test tools and the [diffusers] extra, CPU torch first, so that pip never
pulls a CUDA build of torch just to satisfy diffusers' requirement. Once installed, a later run skips
pip until pyproject.toml changes (a stamp in .venv says what was installed from which pyproject).
"""

from __future__ import annotations

import hashlib
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


STAMP = VENV / "limner-installed"


def installed(what: str) -> bool:
    """Whether `what` ("serve" or "test") was installed here from the pyproject.toml as it is now."""
    return STAMP.is_file() and STAMP.read_text().split() == [_pyproject_digest(), what]


def stamp(what: str) -> None:
    STAMP.write_text(f"{_pyproject_digest()} {what}\n")


def _pyproject_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()[:16]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__)
        return 2
    python = ensure_venv()
    if argv[0] == "serve":
        # Whatever test installed holds serve's too (the same package, with more extras).
        if not (installed("serve") or installed("test")):
            pip_install(python, "-e", ".")
            stamp("serve")
        print(ACTIVATE_HINT, flush=True)
        os.execv(python, [str(python), "-m", "limner", "serve", *argv[1:]])
    if not installed("test"):
        pip_install(python, TORCH)
        pip_install(python, "-e", ".[test,diffusers]")
        stamp("test")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([str(python), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
