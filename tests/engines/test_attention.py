"""`attention`: one model's attention backend, honoured where its denoiser dispatches attention,
refused where it would change nothing or cannot run, and never leaked to the other models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from limner.server.app import create_app
from limner.server.settings import ModelConfig, Settings

pytestmark = pytest.mark.diffusers


def test_a_backend_applies_to_its_model_only_and_gives_the_plain_image(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    models = {
        name: ModelConfig.model_validate(
            {
                "engine": "diffusers",
                "source": str(family_dirs["flux"]),
                "device": "cpu",
                "load": "startup",
                **extra,
            }
        )
        for name, extra in (("math", {"attention": "math"}), ("plain", {}))
    }
    before = _AttentionBackendRegistry._active_backend
    with TestClient(create_app(Settings(data_dir=tmp_path, models=models))) as client:
        images = {}
        for name in models:
            answer = client.post(
                "/v1/images/generations",
                json={"model": name, "prompt": "a cat", "size": "64x64", "seed": 3, "num_inference_steps": 2},
            )
            assert answer.status_code == 200, answer.text
            images[name] = answer.json()["data"][0]["b64_json"]
        engines = client.app.state.registry.engines  # type: ignore[attr-defined]
        math = engines["diffusers:math"]._loaded.base.transformer
        plain = engines["diffusers:plain"]._loaded.base.transformer

    def backends(model: Any) -> set[Any]:
        return {
            getattr(m.processor, "_attention_backend", "-")
            for m in model.modules()
            if hasattr(m, "processor")
        }

    assert {b.value for b in backends(math) if b not in ("-", None)} == {"_native_math"}
    assert backends(plain) <= {None, "-"}  # the other model stays at the default...
    assert _AttentionBackendRegistry._active_backend == before  # ...and so does the process
    from tests.support.images import decode_b64

    pixels = [np.asarray(decode_b64(b), dtype=np.int16) for b in images.values()]
    assert int(np.abs(pixels[0] - pixels[1]).max()) <= 1  # lossless: float noise at most


@pytest.mark.parametrize(
    ("family", "value", "says"),
    [
        ("sd3", "sdpa", "calls PyTorch's attention directly"),
        ("sana", "math", "calls PyTorch's attention directly"),
        ("flux", "flash", "flash-attn"),
        ("flux", "_native_flash", "needs an accelerator"),
        ("flux", "bogus", "expected sdpa, math or one of"),
    ],
)
def test_a_backend_that_would_change_nothing_or_cannot_run_stops_the_start_up(
    family_dirs: dict[str, Path], family: str, value: str, says: str
) -> None:
    from limner.engines.diffusers import create_engine

    with pytest.raises(ValueError, match="'attention'") as refused:
        create_engine("m", {"source": str(family_dirs[family]), "device": "cpu", "attention": value})
    assert says in str(refused.value)
