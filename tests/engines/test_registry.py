"""The engine registry directly: which engine serves each name, what each table may hold, and the
profile each name gets."""

from __future__ import annotations

import pytest

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.registry import SKETCH, EngineRegistry
from limner.server.settings import ModelConfig


class Given(EngineBase):
    @property
    def info(self) -> EngineInfo:
        return EngineInfo("given", sizes=((64, 64),))

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        """Nothing to load."""


def test_every_openai_name_is_served_by_one_shared_sketch_engine() -> None:
    registry = EngineRegistry({})
    served = {m.engine_key for m in registry.models.values()}
    assert served == {SKETCH} and len(registry.engines) == 1 and "gpt-image-1" in registry.models


def test_a_local_name_gets_a_profile_from_its_table_and_engine() -> None:
    registry = EngineRegistry(
        {"house": ModelConfig(engine="sketch", sizes=["512x512"], response_format="url")}
    )
    profile = registry.models["house"].profile
    assert profile.sizes == ("512x512",) and profile.default_response_format == "url"
    assert registry.models["house"].engine_name == "sketch" and registry.models["house"].source is None


def test_an_engine_handed_in_serves_its_names_and_shares_by_identity() -> None:
    engine = Given()
    registry = EngineRegistry({}, engines={"a": engine, "b": engine})
    assert registry.models["a"].engine_key == registry.models["b"].engine_key
    assert registry.engine_for("a")[1] is engine and registry.models["a"].profile.sizes == ("64x64",)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (ModelConfig(engine="warp-drive"), "unknown engine 'warp-drive'"),
        (ModelConfig(engine="sketch", bogus=1), "models.m.bogus: unknown option"),  # type: ignore[call-arg]
        (ModelConfig(engine="sketch", concurrency=5), "cannot be honoured"),
    ],
)
def test_a_table_it_cannot_honour_is_refused_by_name(table: ModelConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineRegistry({"m": table}, sketch_concurrency=1)
