from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer, start_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real `limner serve` on 127.0.0.1 with the default config and no keys, shared by tests."""
    with start_server(tmp_path_factory.mktemp("limner-data")) as running:
        yield running


@pytest.fixture()
def fresh_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
