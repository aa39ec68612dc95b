"""The family table without weights: capabilities read from a checkpoint's configs, edit-only
checkpoints, the packages a checkpoint needs, and the size rule each pipeline imposes.

Qwen-Image-Edit and Edit-Plus cannot be built here (transformers builds their processor with a video
processor that needs torchvision, and torchvision's only wheel here would replace the CPU torch), so
their checkpoints are described by their configs alone: what limner decides before loading is all
that these tests need. Everything a pipeline runs is in tests/compat/test_families.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from limner.engines.diffusers import create_engine
from limner.engines.jobs import EditJob, GenerateJob, JobContext, VaryJob
from limner.errors import EngineUnavailable, InvalidValue
from limner.server.settings import Settings
from tests.support.inprocess import app_client

pytestmark = pytest.mark.diffusers

QWEN_VAE = {"_class_name": "AutoencoderKLQwenImage", "temperal_downsample": [False, True, True], "z_dim": 16}


def _checkpoint(folder: Path, pipeline: str, components: dict[str, list[str]], **configs: Any) -> Path:
    """A checkpoint folder as save_pretrained writes it, configs only (nothing here loads weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **components}))
    for name, config in configs.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def edit_plus(tmp_path: Path) -> Path:
    """A Qwen-Image-Edit-Plus checkpoint without its processor (so that nothing here needs torchvision)."""
    return _checkpoint(
        tmp_path / "qwen-edit-plus",
        "QwenImageEditPlusPipeline",
        {"vae": ["diffusers", "AutoencoderKLQwenImage"]},
        vae=QWEN_VAE,
        transformer={"_class_name": "QwenImageTransformer2DModel", "guidance_embeds": False},
    )


def _picture(width: int = 64, height: int = 64) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 40, 40))


def _refused(engine: Any, job: Any, param: str) -> InvalidValue:
    with pytest.raises(InvalidValue) as caught:
        engine.check(job)
    assert caught.value.param == param, caught.value.message
    return caught.value


def test_an_edit_only_checkpoint_edits_and_refuses_generations(edit_plus: Path) -> None:
    engine = create_engine("qwen-edit", {"source": str(edit_plus), "device": "cpu", "max_images": 3})
    caps = engine.caps
    assert caps.operations == frozenset({"edit", "vary"}) and caps.references
    assert caps.size_multiple == 16 and caps.max_images == 3 and caps.guidance == "true_cfg"
    assert not caps.mask  # diffusers has no inpainting pipeline for Edit-Plus
    error = _refused(engine, GenerateJob(prompt="a cat", width=64, height=64), "model")
    assert "does not support generate" in error.message
    three = [_picture(), _picture(96, 64), _picture(64, 96)]
    engine.check(EditJob(prompt="put them together", width=64, height=64, images=three))
    engine.check(VaryJob(width=64, height=64, image=_picture()))  # an edit with an empty instruction
    _refused(engine, EditJob(prompt="x", width=64, height=64, images=[*three, _picture()]), "image")
    _refused(
        engine,
        EditJob(prompt="x", width=64, height=64, images=[_picture()], mask=Image.new("L", (64, 64))),
        "mask",
    )
    _refused(
        engine,
        EditJob(prompt="x", width=64, height=64, images=[_picture()], input_fidelity="high"),
        "input_fidelity",
    )
    # Its guidance is true CFG: the negative prompt works through it, and is refused with it off.
    engine.check(EditJob(prompt="x", width=64, height=64, images=[_picture()], negative_prompt="blurry"))
    _refused(
        engine,
        EditJob(
            prompt="x", width=64, height=64, images=[_picture()], negative_prompt="blurry", guidance_scale=1.0
        ),
        "negative_prompt",
    )
    assert not engine.loaded  # every answer above came from the configs


async def test_an_edit_only_checkpoint_on_v1_models_and_through_the_api(
    edit_plus: Path, tmp_path: Path
) -> None:
    engine = create_engine("qwen-edit", {"source": str(edit_plus), "device": "cpu"})
    async with app_client(Settings(data_dir=tmp_path / "data"), engines={"qwen-edit": engine}) as client:
        caps = (await client.get("/v1/models/qwen-edit")).json()["capabilities"]
        assert caps["operations"] == ["edit", "vary"]
        assert caps["max_images"] == 16 and caps["mask"] is False and caps["edits"] == "reference images"
        assert caps["family"] == "qwen-image-edit-plus" and caps["guidance"] == "true_cfg"
        response = await client.post("/v1/images/generations", json={"model": "qwen-edit", "prompt": "a cat"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "model"
    assert not engine.loaded


def test_qwen_image_edit_takes_one_image_and_no_mask(tmp_path: Path) -> None:
    """Its inpainting pipeline computes at a 1024x1024 area whatever size is asked: refused up front."""
    folder = _checkpoint(tmp_path / "qwen-edit", "QwenImageEditPipeline", {}, vae=QWEN_VAE)
    engine = create_engine("qwen-edit", {"source": str(folder), "device": "cpu"})
    caps = engine.caps
    assert caps.max_images == 1 and not caps.mask and caps.operations == frozenset({"edit", "vary"})
    _refused(
        engine,
        EditJob(prompt="x", width=64, height=64, images=[_picture()], mask=Image.new("L", (64, 64))),
        "mask",
    )


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)
def test_a_package_the_checkpoint_needs_is_named_at_start_up(tmp_path: Path) -> None:
    folder = _checkpoint(
        tmp_path / "qwen-edit-plus",
        "QwenImageEditPlusPipeline",
        {"processor": ["transformers", "Qwen2VLProcessor"], "vae": ["diffusers", "AutoencoderKLQwenImage"]},
        vae=QWEN_VAE,
    )
    with pytest.raises(EngineUnavailable, match=r"torchvision \(for its processor, a Qwen2VLProcessor\)"):
        create_engine("qwen-edit", {"source": str(folder), "device": "cpu"})
    # And `limner serve` stops with that one line instead of failing at the first request.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "limner",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--model",
            f"q=diffusers:{folder}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "needs packages that are not installed: torchvision" in result.stderr


def test_a_t5_tokenizer_without_tokenizer_json_needs_sentencepiece(tmp_path: Path) -> None:
    from limner.engines.diffusers.families import missing_packages

    index = {"tokenizer_2": ["transformers", "T5TokenizerFast"]}
    (tmp_path / "tokenizer_2").mkdir()
    (tmp_path / "tokenizer_2" / "spiece.model").write_bytes(b"")
    expected = (
        []
        if importlib.util.find_spec("sentencepiece")
        else ["sentencepiece (for its tokenizer_2, a T5TokenizerFast)"]
    )
    assert missing_packages(str(tmp_path), index) == expected
    (tmp_path / "tokenizer_2" / "tokenizer.json").write_text("{}")
    assert missing_packages(str(tmp_path), index) == []  # the fast tokenizer reads tokenizer.json alone


@pytest.mark.parametrize(
    ("pipeline", "vae", "multiple"),
    [
        ("FluxPipeline", {"block_out_channels": [8, 8, 16, 16]}, 16),
        ("StableDiffusion3Pipeline", {"block_out_channels": [8, 8, 16, 16]}, 16),
        ("SanaPipeline", {"encoder_block_out_channels": [8, 8, 16, 16, 32, 32]}, 32),
        ("QwenImagePipeline", QWEN_VAE, 16),
        ("StableDiffusionPipeline", {"block_out_channels": [8, 8, 16, 16]}, 64),
    ],
)
def test_the_size_multiple_comes_from_the_pipeline(
    tmp_path: Path, pipeline: str, vae: dict[str, Any], multiple: int
) -> None:
    folder = _checkpoint(tmp_path / "m", pipeline, {}, vae=vae)
    engine = create_engine("m", {"source": str(folder), "device": "cpu"})
    assert engine.info.size_multiple == multiple
    with pytest.raises(ValueError, match=f"option 'size_multiple': must be a multiple of {multiple}"):
        create_engine("m", {"source": str(folder), "device": "cpu", "size_multiple": multiple // 2})
    with pytest.raises(ValueError, match="option 'sizes'"):
        create_engine("m", {"source": str(folder), "device": "cpu", "sizes": [f"{multiple + 8}x{multiple}"]})
    assert (
        create_engine(
            "m", {"source": str(folder), "device": "cpu", "size_multiple": 2 * multiple}
        ).info.size_multiple
        == 2 * multiple
    )


def _counting(engine: Any) -> list[int]:
    """Counts the transformer's forward passes (one per step; two with classifier-free guidance)."""
    engine.load()
    calls: list[int] = []
    engine._loaded.base.transformer.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _engine(family_dirs: dict[str, Path], family: str, **options: Any) -> Any:
    return create_engine(family, {"source": str(family_dirs[family]), "device": "cpu", "steps": 2, **options})


def test_sana_computes_the_requested_size_unless_binning_is_turned_on(family_dirs: dict[str, Path]) -> None:
    """Binning computes at the nearest trained aspect ratio and resizes: off by default, so the
    requested size is the computed size; on when the config says so."""
    seen: list[tuple[int, int]] = []

    def run(options: dict[str, Any]) -> None:
        engine = _engine(family_dirs, "sana", steps=1, **options)
        engine.load()
        engine._loaded.base.transformer.register_forward_pre_hook(
            lambda _module, args, kwargs: seen.append(
                tuple(kwargs.get("hidden_states", *args[:1]).shape[-2:])
            ),
            with_kwargs=True,
        )
        (image,) = engine.generate(GenerateJob(prompt="a cat", width=64, height=128), JobContext())
        assert image.size == (64, 128)

    run({})
    assert seen[-1] == (4, 2)  # 128x64 pixels over the DC-AE's 32x
    run({"resolution_binning": True})
    assert seen[-1] != (4, 2)  # binned to a trained size, then resized back


def test_qwen_image_runs_true_cfg_by_default_as_its_authors_do(family_dirs: dict[str, Path]) -> None:
    """Qwen-Image's CFG is on only with a negative prompt; its recommended default one (" ") turns it
    on, guidance_scale is its true-CFG scale, and at 1 it is off (one pass per step)."""
    engine = _engine(family_dirs, "qwen-image")
    calls = _counting(engine)
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64), JobContext())
    assert len(calls) == 4  # 2 steps x (conditional + unconditional)
    calls.clear()
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, guidance_scale=1.0), JobContext())
    assert len(calls) == 2


def test_flux_negative_prompts_run_a_true_cfg_pass(family_dirs: dict[str, Path]) -> None:
    """FLUX.1-dev's guidance_scale is a model input, not CFG: a negative prompt needs a second pass."""
    engine = _engine(family_dirs, "flux")
    calls = _counting(engine)
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, guidance_scale=2.0), JobContext())
    assert len(calls) == 2
    calls.clear()
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, negative_prompt="blurry"), JobContext())
    assert len(calls) == 4


def test_the_undistilled_flux2_klein_takes_guidance_as_cfg(family_dirs: dict[str, Path]) -> None:
    engine = _engine(family_dirs, "flux2-klein-base")
    assert engine.caps.guidance == "cfg"
    calls = _counting(engine)
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, guidance_scale=4.0), JobContext())
    assert len(calls) == 4
    calls.clear()
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, guidance_scale=1.0), JobContext())
    assert len(calls) == 2


@pytest.mark.parametrize(
    "family", ["flux", "sd3", "qwen-image", "z-image", "flux2-klein", "sana", "flux-kontext"]
)
def test_every_family_batches_requests_into_one_call(family_dirs: dict[str, Path], family: str) -> None:
    """max_batch > 1: images of one request, and requests with one batch key, share a pipeline call,
    each image with its own prompt and generator, equal to the image made alone up to a level."""
    alone = _engine(family_dirs, family)
    alone.load()  # run_batch is the server's call: the model is loaded before it (residency's work)
    batched = _engine(family_dirs, family, max_batch=4)
    jobs = [
        GenerateJob(prompt="a cat", width=64, height=64, n=2, seed=1),
        GenerateJob(prompt="a dog", width=64, height=64, seed=9),
    ]
    assert batched.batch_key(jobs[0]) == batched.batch_key(jobs[1])
    calls = _counting(batched)
    batched.run_batch([jobs[1]], [JobContext()])
    one_call = len(calls)  # forward passes of one pipeline call (steps x passes per step)
    calls.clear()
    together = batched.run_batch(jobs, [JobContext(), JobContext()])
    assert len(calls) == one_call  # three images, two requests: one call
    for job, images in zip(jobs, together, strict=True):
        for mine, theirs in zip(alone.run_batch([job], [JobContext()])[0], images, strict=True):
            assert np.abs(np.asarray(mine, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max() <= 1


def test_transparency_only_where_the_vae_decodes_alpha(tmp_path: Path) -> None:
    """Qwen-Image 2.1's VAE has four output channels: background=transparent is its own alpha there,
    and a 400 naming `background` for a VAE that decodes RGB."""
    rgba = _checkpoint(
        tmp_path / "qwen21",
        "QwenImage21Pipeline",
        {},
        vae={
            "_class_name": "AutoencoderKLQwenImage21",
            "temperal_downsample": [False, True, True, True],
            "out_channels": 4,
        },
    )
    engine = create_engine("q21", {"source": str(rgba), "device": "cpu"})
    assert engine.info.transparency and engine.caps.size_multiple == 32
    engine.check(GenerateJob(prompt="a cat", width=64, height=64, transparent=True))
    rgb = _checkpoint(
        tmp_path / "flux", "FluxPipeline", {}, vae={"block_out_channels": [8, 8, 16, 16], "out_channels": 3}
    )
    flux = create_engine("flux", {"source": str(rgb), "device": "cpu"})
    assert not flux.info.transparency
    _refused(flux, GenerateJob(prompt="a cat", width=64, height=64, transparent=True), "background")


def test_an_authored_schedule_sets_the_default_steps_and_a_request_replaces_it(
    tmp_path: Path, family_dirs: dict[str, Path]
) -> None:
    """Qwen-Image 2.1 checkpoints configure `sample_sigmas` in model_index.json, which its pipeline
    would prefer over num_inference_steps: their count is the default, and a request's count replaces
    them. The rule is the engine's, for any pipeline that takes `sigmas`; FLUX.1 carries it here (the
    tiny Qwen-Image 2.1 needs torchvision)."""
    import shutil

    folder = tmp_path / "flux-scheduled"
    shutil.copytree(family_dirs["flux"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "sample_sigmas": [1.0, 0.7, 0.4]}))
    engine = create_engine("flux", {"source": str(folder), "device": "cpu"})
    assert engine.caps.sample_sigmas == (1.0, 0.7, 0.4)
    calls = _counting(engine)
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64), JobContext())
    assert len(calls) == 3  # the authors' three sigmas, whatever the quality preset says
    calls.clear()
    engine.generate(GenerateJob(prompt="a cat", width=64, height=64, num_inference_steps=2), JobContext())
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("pipeline", "option", "value"),
    [
        ("FluxPipeline", "preview", "linear"),
        ("StableDiffusion3Pipeline", "true_cfg_scale", 5.0),
        ("FluxPipeline", "max_images", 4),
        ("FluxPipeline", "resolution_binning", True),
        ("Flux2KleinPipeline", "strength", {"edit": 0.5}),
        ("SanaPipeline", "strength", {"inpaint": 0.9}),
    ],
)
def test_options_the_family_would_ignore_stop_start_up(
    tmp_path: Path, pipeline: str, option: str, value: Any
) -> None:
    folder = _checkpoint(tmp_path / "m", pipeline, {}, vae={"block_out_channels": [8, 8, 16, 16]})
    with pytest.raises(ValueError, match=f"option '{option}"):
        create_engine("m", {"source": str(folder), "device": "cpu", option: value})


@pytest.mark.parametrize(
    ("pipeline", "option", "value"),
    [
        ("StableDiffusionPipeline", "preview", "linear"),
        ("FluxPipeline", "true_cfg_scale", 5.0),
        ("Flux2KleinPipeline", "max_images", 4),
        ("SanaPipeline", "resolution_binning", True),
        ("Flux2KleinPipeline", "strength", {"inpaint": 0.9}),
    ],
)
def test_options_the_family_uses_are_accepted(tmp_path: Path, pipeline: str, option: str, value: Any) -> None:
    folder = _checkpoint(tmp_path / "m", pipeline, {}, vae={"block_out_channels": [8, 8, 16, 16]})
    create_engine("m", {"source": str(folder), "device": "cpu", option: value})
