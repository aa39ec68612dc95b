from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import RunningServer, start_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One throw-away PostgreSQL cluster for the session (tests take a fresh database in it each)."""
    from tests.support.postgres import binaries, throwaway_cluster

    if binaries() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]'")
    with throwaway_cluster() as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real `limner serve` on 127.0.0.1 with the default config and no keys, shared by tests."""
    with start_server(tmp_path_factory.mktemp("limner-data")) as running:
        yield running


# -- diffusers: tiny random pipelines saved once per session (tests/support/tiny_pipeline.py) --------


def _require_diffusers() -> None:
    for name in ("torch", "diffusers", "transformers", "tokenizers"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            pytest.skip(f"{name} is not importable ({exc}); install the extra: pip install -e '.[diffusers]'")


@pytest.fixture(autouse=True)
def _skip_without_diffusers(request: pytest.FixtureRequest) -> None:
    """Tests marked `diffusers` are skipped, with the reason, where the extra is not installed."""
    if request.node.get_closest_marker("diffusers") is not None:
        _require_diffusers()


@pytest.fixture(scope="session")
def tiny_text2image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text-to-image pipeline (4-channel UNet) saved with save_pretrained."""
    _require_diffusers()
    from tests.support.tiny_pipeline import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def tiny_inpaint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny inpainting checkpoint (9-channel UNet) saved with save_pretrained."""
    _require_diffusers()
    from tests.support.tiny_pipeline import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-inpaint") / "pipeline", inpaint=True, seed=1)


@pytest.fixture(scope="session")
def tiny_engine(tiny_text2image_dir: Path) -> Iterator[Any]:
    """One loaded engine on the tiny text-to-image folder, shared by the tests that only run jobs."""
    from limner.engines.diffusers import create_engine
    from tests.support.tiny_pipeline import TINY_STEPS

    engine = create_engine("tiny", {"source": str(tiny_text2image_dir), "device": "cpu", "steps": TINY_STEPS})
    engine.load()
    yield engine


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StableDiffusionXLPipeline (two text encoders, `text_time` UNet) saved with save_pretrained."""
    _require_diffusers()
    from tests.support.tiny_pipeline import save_tiny_sdxl_pipeline

    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "pipeline")


@pytest.fixture(scope="session")
def family_dirs() -> dict[str, Path]:
    """A tiny pipeline of each current family (tests/support/family_pipelines.py), built once."""
    _require_diffusers()
    from tests.support.family_pipelines import build_all

    return build_all()
