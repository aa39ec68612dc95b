"""The README as a newcomer follows it: its examples run as written (against a test server's address),
the files they name are in the repository, the `limner` command is findable, and every install command
names an extra that exists (limner is installed from its folder, not from PyPI)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from tests.support.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
LOCAL = "http://127.0.0.1:8000"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.S)


def in_a_checkout(tmp_path: Path) -> Path:
    """A folder laid out as limner's own (the examples name docs/photo.png and docs/mask.png)."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    return tmp_path


def test_the_curl_examples_run_as_written(server: RunningServer, tmp_path: Path) -> None:
    (script,) = blocks("Using it", "sh")
    assert LOCAL in script
    where = in_a_checkout(tmp_path)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(LOCAL, server.base_url)],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 1000  # nothing like a megabyte of base64 on the terminal
    assert Image.open(where / "sun.png").size == (1536, 1024)
    edit = json.loads((where / "edit.json").read_text())
    edited = Image.open(io.BytesIO(base64.b64decode(edit["data"][0]["b64_json"])))
    assert edited.size == (1024, 1024)


def test_the_sample_files_are_an_image_and_its_mask() -> None:
    photo, mask = Image.open(ROOT / "docs/photo.png"), Image.open(ROOT / "docs/mask.png")
    assert photo.size == mask.size and photo.width == photo.height  # square: dall-e-2 edits take it too
    alpha = mask.getchannel("A")
    assert alpha.getpixel((10, 10)) == 255 and alpha.getpixel((mask.width - 10, 10)) == 0


def test_the_openai_example_runs_as_written(server: RunningServer, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    (code,) = blocks("Using it", "python")
    done = subprocess.run(
        [sys.executable, "-c", code.replace(LOCAL, server.base_url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(server.base_url)  # the DALL-E link
    assert "image_generation.partial_image" in lines and lines[-1] == "image_generation.completed"
    assert Image.open(tmp_path / "lighthouse.png").size == (1024, 1024)


def test_dev_serve_says_where_the_limner_command_is() -> None:
    assert "source .venv/bin/activate" in section("Set-up: two commands")

    def dev_serve_help() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "dev.py"), "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )

    done = dev_serve_help()
    assert done.returncode == 0, done.stderr
    assert "source .venv/bin/activate` puts the `limner` command" in done.stdout
    again = dev_serve_help()
    # Installed once from this pyproject.toml: the second start runs no pip.
    assert again.returncode == 0 and "pip install" not in again.stdout, again.stdout


def test_install_commands_name_extras_that_exist() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert "limner[" not in README  # limner is not on PyPI: every install is of this folder
    named = {
        name
        for group in re.findall(r"pip install -e '\.\[([a-z0-9,]+)\]'", README)
        for name in group.split(",")
    }
    table = set(re.findall(r"^\| `([a-z0-9]+)` \|", section("Set-up: two commands"), flags=re.M))
    assert named <= extras and table == extras
    from limner.extras import EXTRAS, install_hint

    assert (
        set(EXTRAS) == extras
        and install_hint("diffusers") == "pip install -e '.[diffusers]' in limner's folder"
    )
