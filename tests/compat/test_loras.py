"""LoRA adapters per request, through `limner serve` and the `openai` package: tiny adapters made
offline with peft for the tiny SD pipeline and for FLUX.1.

An adapter changes the image; scale 0, no adapter, and a base request after adapter requests give the
base model's exact pixels; the model name MODEL:ADAPTER works in generations, edits and streams;
concurrent requests with different adapters never share a call and each equals the same request made
alone; an adapter that does not fit, an unknown name, and an adapter on the sketch engine are 400s
naming `lora`; a configured adapter that does not fit stops the start-up.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from limner.engines.jobs import GenerateJob
from tests.compat.test_diffusers_batching import BATCH_NOISE_LEVELS, behind_a_blocker
from tests.support.images import decode_b64, gradient, png_bytes
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers


@pytest.fixture(scope="module")
def adapters(
    tiny_text2image_dir: Path, family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    from tests.support.loras import make_lora

    root = tmp_path_factory.mktemp("loras")
    lora_dir = root / "dir"
    return {
        "style": make_lora(tiny_text2image_dir, root / "style.safetensors", seed=1),
        "detail": make_lora(tiny_text2image_dir, lora_dir / "detail.safetensors", seed=2),
        # The text encoder too: SD's loader applies it.
        "words": make_lora(tiny_text2image_dir, lora_dir / "words.safetensors", seed=3, text_encoder=True),
        # A FLUX.1 adapter in the SD model's folder: it fits no module of SD.
        "fluxy": make_lora(family_dirs["flux"], lora_dir / "fluxy.safetensors", seed=4),
        "dir": lora_dir,
    }


@pytest.fixture(scope="module")
def lora_server(
    tiny_text2image_dir: Path,
    family_dirs: dict[str, Path],
    adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    config = tmp_path_factory.mktemp("lora-config") / "limner.toml"
    config.write_text(
        f'[models.tiny]\nengine = "diffusers"\nsource = "{tiny_text2image_dir}"\ndevice = "cpu"\n'
        f'load = "startup"\nmax_batch = 8\nmax_queue = 32\nlora_dir = "{adapters["dir"]}"\n'
        f'loras = {{ style = {{ source = "{adapters["style"]}", scale = 0.8 }} }}\n'
        f'[models.flux]\nengine = "diffusers"\nsource = "{family_dirs["flux"]}"\ndevice = "cpu"\n'
        f'loras = {{ fluxy = "{adapters["fluxy"]}" }}\n'
    )
    with start_server(tmp_path_factory.mktemp("lora-data"), "--config", str(config), timeout=240) as running:
        yield running


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_base, api_key="x", max_retries=0, timeout=600)


def generate(
    server: RunningServer, seed: int = 5, model: str = "tiny", **fields: Any
) -> tuple[np.ndarray, dict[str, str]]:
    raw = client(server).images.with_raw_response.generate(
        model=model,
        prompt="a lighthouse at dusk",
        size="64x64",  # type: ignore[arg-type]
        extra_body={"seed": seed, "num_inference_steps": 3, **fields},
    )
    image = decode_b64(raw.http_response.json()["data"][0]["b64_json"])
    return np.asarray(image.convert("RGB"), dtype=np.int16), dict(raw.http_response.headers)


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def test_an_adapter_changes_the_image_and_without_one_the_pixels_are_the_base_models(
    lora_server: RunningServer,
) -> None:
    base, _ = generate(lora_server)  # before any adapter was loaded: the base model's own pixels
    styled, _ = generate(lora_server, lora={"style": 0.8})
    assert float(np.abs(styled - base).mean()) > 2  # the adapter has an effect
    assert levels(generate(lora_server, lora={"style": 0})[0], base) == 0
    assert levels(generate(lora_server, model="tiny:style")[0], styled) == 0  # the configured 0.8
    assert levels(generate(lora_server, lora=["style"])[0], styled) == 0
    words, _ = generate(lora_server, lora={"words": 1.0})  # text encoder and UNet: SD's loader takes both
    assert float(np.abs(words - base).mean()) > 2
    both, _ = generate(lora_server, lora={"style": 0.8, "detail": 0.5})
    assert levels(both, styled) > 0
    assert levels(generate(lora_server)[0], base) == 0  # after adapters: the base model again

    flux_base, _ = generate(lora_server, model="flux")
    flux_styled, _ = generate(lora_server, model="flux:fluxy")
    assert levels(flux_styled, flux_base) > 0
    assert levels(generate(lora_server, model="flux")[0], flux_base) == 0


def test_adapters_are_listed_as_models_and_usable_in_edits_and_streams(lora_server: RunningServer) -> None:
    ids = [m.id for m in client(lora_server).models.list()]
    assert {"tiny", "tiny:style", "tiny:detail", "tiny:words", "flux", "flux:fluxy"} <= set(ids)
    assert "tiny:fluxy" not in ids  # in the folder, but it does not fit SD
    one = client(lora_server).models.retrieve("tiny:detail")
    assert one.model_extra and one.model_extra["residency"]["adapter"] == "detail"

    def edit(model: str) -> np.ndarray:
        raw = client(lora_server).images.with_raw_response.edit(
            model=model,
            image=("in.png", png_bytes(gradient(64, 64)), "image/png"),
            prompt="make it blue",
            size="64x64",  # type: ignore[arg-type]
            extra_body={"seed": 3, "num_inference_steps": 4},
        )
        return np.asarray(
            decode_b64(raw.http_response.json()["data"][0]["b64_json"]).convert("RGB"), dtype=np.int16
        )

    assert levels(edit("tiny:detail"), edit("tiny")) > 0
    # In a multipart form the field is text: names separated by commas, or JSON.
    form = {
        "prompt": "make it blue",
        "size": "64x64",
        "seed": "3",
        "num_inference_steps": "4",
        "model": "tiny",
    }
    files = {"image": ("in.png", png_bytes(gradient(64, 64)), "image/png")}
    for lora in ("detail", json.dumps({"detail": 1.0})):
        answer = httpx2.post(
            f"{lora_server.api_base}/images/edits", data={**form, "lora": lora}, files=files, timeout=600
        )
        assert answer.status_code == 200, answer.text
        image = decode_b64(answer.json()["data"][0]["b64_json"])
        assert levels(np.asarray(image.convert("RGB"), dtype=np.int16), edit("tiny:detail")) == 0

    with client(lora_server).images.with_streaming_response.generate(
        model="tiny:style",
        prompt="a lighthouse at dusk",
        size="64x64",  # type: ignore[arg-type]
        stream=True,
        partial_images=1,
        extra_body={"seed": 5, "num_inference_steps": 3},
    ) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    final = np.asarray(decode_b64(events[-1]["b64_json"]).convert("RGB"), dtype=np.int16)
    assert events[-1]["type"] == "image_generation.completed"
    assert levels(final, generate(lora_server, lora={"style": 0.8})[0]) == 0


def test_different_adapters_never_share_a_call_and_each_request_gets_its_own_image(
    lora_server: RunningServer,
) -> None:
    plan: list[dict[str, Any]] = [
        {"lora": {"style": 0.8}},
        {"lora": {"detail": 0.7}},
        {},
        {"lora": {"style": 0.8}},
        {"lora": {"detail": 0.7}},
        {},
        {"lora": {"style": 0.8}},
        {"lora": {"detail": 0.7}},
    ]
    alone = [generate(lora_server, seed=40 + i, **fields)[0] for i, fields in enumerate(plan)]
    together = behind_a_blocker(
        lora_server, [lambda i=i, f=f: generate(lora_server, seed=40 + i, **f) for i, f in enumerate(plan)]
    )
    for fields, solo, (image, headers) in zip(plan, alone, together, strict=True):
        same = sum(1 for other in plan if other == fields)
        assert int(headers["x-limner-batch-size"]) == same  # its own adapter set's jobs, no other
        assert levels(image, solo) <= BATCH_NOISE_LEVELS
    metrics = httpx2.get(f"{lora_server.base_url}/metrics").text
    assert 'limner_lora_requests_total{adapter="style",model="tiny"}' in metrics


@pytest.mark.parametrize(
    ("model", "fields", "says"),
    [
        ("tiny", {"lora": {"fluxy": 1.0}}, "does not fit model 'tiny'"),
        ("tiny", {"lora": {"nope": 1.0}}, "has no adapter 'nope'"),
        ("tiny", {"lora": {"style": 9}}, "between -4 and 4"),
        ("tiny", {"lora": 5}, "lora"),
        ("tiny", {"lora": ["style", "detail", "words", "style2", "x"]}, "at most 4 adapters"),
        ("dall-e-2", {"lora": ["style"]}, "takes no LoRA adapters"),
        ("tiny:nope", {}, "does not exist"),
    ],
)
def test_adapters_that_cannot_be_used_are_refused_with_a_clear_error(
    lora_server: RunningServer, model: str, fields: dict[str, Any], says: str
) -> None:
    answer = httpx2.post(
        f"{lora_server.api_base}/images/generations",
        json={"model": model, "prompt": "x", "size": "64x64" if model != "dall-e-2" else "256x256", **fields},
        timeout=600,
    )
    error = answer.json()["error"]
    assert answer.status_code == (404 if model == "tiny:nope" else 400), answer.text
    assert says in error["message"]
    assert error["param"] == ("model" if model == "tiny:nope" else "lora")


def test_a_configured_adapter_that_does_not_fit_stops_the_start_up(
    tiny_text2image_dir: Path, adapters: dict[str, Path]
) -> None:
    from limner.engines.diffusers import create_engine

    with pytest.raises(ValueError, match=r"loras\.wrong: it adapts 'transformer'"):
        create_engine(
            "tiny",
            {"source": str(tiny_text2image_dir), "device": "cpu", "loras": {"wrong": str(adapters["fluxy"])}},
        )
    with pytest.raises(ValueError, match="lora_dir"):
        create_engine(
            "tiny", {"source": str(tiny_text2image_dir), "device": "cpu", "lora_dir": "/no/such/folder"}
        )


def test_the_access_record_says_the_prompt_steps_seed_and_adapters(lora_server: RunningServer) -> None:
    generate(lora_server, seed=77, lora={"detail": 0.3})
    line = lora_server.log_line("seed=77")
    assert "prompt=a lighthouse at dusk" in line and "steps=3" in line and "'detail': 0.3" in line


def test_a_text_encoder_adapter_is_refused_where_the_family_loader_does_not_apply_it(
    family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """FLUX.2-klein's loader adapts the transformer only: an adapter that also holds text-encoder
    weights is refused whole (a 400 naming `lora`), never applied without them."""
    import peft
    from diffusers import AutoPipelineForText2Image
    from safetensors.torch import load_file, save_file

    from limner.engines.diffusers import create_engine
    from limner.errors import InvalidValue
    from tests.support.loras import make_lora

    denoiser = make_lora(family_dirs["flux2-klein"], tmp_path / "denoiser.safetensors", seed=5)
    pipe = AutoPipelineForText2Image.from_pretrained(family_dirs["flux2-klein"], local_files_only=True)
    config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    peft.inject_adapter_in_model(config, pipe.text_encoder)
    words = {
        f"text_encoder.{k}": v for k, v in peft.utils.get_peft_model_state_dict(pipe.text_encoder).items()
    }
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file({**load_file(denoiser), **words}, folder / "both.safetensors")
    save_file(load_file(denoiser), folder / "plain.safetensors")
    engine = create_engine(
        "klein", {"source": str(family_dirs["flux2-klein"]), "device": "cpu", "lora_dir": str(folder)}
    )
    assert engine.adapters() == ["plain"]  # the one that fits is listed, the other is not
    with pytest.raises(InvalidValue, match="adapts the text encoder, which diffusers' loader") as refused:
        engine.check(GenerateJob(prompt="x", width=64, height=64, loras=(("both", 1.0),)))
    assert refused.value.param == "lora"
