"""Today's model families through `limner serve` and the official `openai` package.

One server serves a tiny random-weight pipeline of each family (tests/support/family_pipelines.py):
FLUX.1 (dev-like and schnell-like), FLUX.1 Kontext, SD3, Qwen-Image, Z-Image, FLUX.2-klein (distilled
and base) and SANA. Every operation of the API runs against every family: it works, or it is a 400
before any work that names the field. What /v1/models advertises is checked against the family table
below, and every refusal is checked against what /v1/models advertises.

Qwen-Image-Edit-Plus (edit-only, reference images) joins the matrix where torchvision is importable:
transformers 5 builds its processor with a video processor that needs it, and CI must not install it
(its only wheel here is a CUDA build that replaces the CPU torch). Without it,
tests/engines/test_diffusers_families.py covers its capabilities and the start-up message that names
the missing package. Edit-only models answer the generation rows with a 400 naming `model` and run
the same checks through edits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest

from tests.support.family_pipelines import TORCHVISION
from tests.support.images import decode_b64, gradient, half_mask, png_bytes
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.diffusers

STEPS: dict[str, Any] = {"num_inference_steps": 2}
ALL = ["edit", "generate", "vary"]

#: What each family can do: operations, images per edit, mask, negative prompt, what guidance drives.
FAMILIES: dict[str, dict[str, Any]] = {
    "flux": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="embedded", edits="image-to-image"),
    "flux-schnell": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="none", edits="image-to-image"),
    "flux-kontext": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="embedded", edits="reference images"),
    "sd3": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="cfg", edits="image-to-image"),
    "qwen-image": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="true_cfg", edits="image-to-image"),
    "z-image": dict(operations=ALL, max_images=1, mask=True, negative=True, guidance="cfg", edits="image-to-image"),
    "flux2-klein": dict(operations=ALL, max_images=16, mask=True, negative=False, guidance="none", edits="reference images"),
    "flux2-klein-base": dict(operations=ALL, max_images=16, mask=True, negative=False, guidance="cfg", edits="reference images"),
    "sana": dict(operations=["generate"], max_images=0, mask=False, negative=True, guidance="cfg", edits="none"),
}  # fmt: skip
if TORCHVISION:
    FAMILIES["qwen-image-edit-plus"] = dict(operations=["edit", "vary"], max_images=16, mask=False, negative=True, guidance="true_cfg", edits="reference images")  # fmt: skip
    FAMILIES["qwen-image-edit"] = dict(operations=["edit", "vary"], max_images=1, mask=False, negative=True, guidance="true_cfg", edits="reference images")  # fmt: skip
    FAMILIES["qwen-image-2.1"] = dict(operations=ALL, max_images=16, mask=False, negative=True, guidance="true_cfg", edits="reference images", transparency=True)  # fmt: skip
#: Size multiples other than 16 (the VAE's 8 x 2x2 packing or patch size).
MULTIPLE = {"sana": 32, "qwen-image-2.1": 32}


@pytest.fixture(scope="module")
def family_server(
    family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    args = [arg for name in FAMILIES for arg in ("--model", f"{name}=diffusers:{family_dirs[name]}")]
    with start_server(tmp_path_factory.mktemp("families-data"), *args, timeout=180) as running:
        yield running


@pytest.fixture(scope="module")
def client(family_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=family_server.api_base, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def advertised(family_server: RunningServer) -> dict[str, dict[str, Any]]:
    models = httpx2.get(family_server.api_base + "/models").json()["data"]
    return {m["id"]: m["capabilities"] for m in models if m["id"] in FAMILIES}


def _image(result: Any, index: int = 0) -> np.ndarray:
    return np.asarray(decode_b64(result.data[index].b64_json).convert("RGB"), dtype=np.int16)


def _size(result: Any, index: int = 0) -> tuple[int, int]:
    return decode_b64(result.data[index].b64_json).size


def _refused(call: Any, param: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    assert info.value.status_code == 400
    assert info.value.param == param, info.value.message
    return info.value


def _upload(image: Any = None) -> tuple[str, bytes, str]:
    return ("in.png", png_bytes(image or gradient(64, 64)), "image/png")


def _cannot(advertised: dict[str, Any], operation: str) -> bool:
    return operation not in advertised["operations"]


def _draw(client: openai.OpenAI, family: str, caps: dict[str, Any], **fields: Any) -> Any:
    """A generation, or for an edit-only model the same request as an edit of one reference image."""
    fields.setdefault("prompt", "a cat")
    if _cannot(caps, "generate"):
        return client.images.edit(model=family, image=_upload(), **fields)
    return client.images.generate(model=family, **fields)


@pytest.mark.parametrize("family", FAMILIES)
def test_v1_models_lists_what_the_family_can_do(family: str, advertised: dict[str, dict[str, Any]]) -> None:
    expected, caps = FAMILIES[family], advertised[family]
    assert caps["operations"] == expected["operations"]
    assert caps["max_images"] == expected["max_images"]
    assert caps["mask"] is expected["mask"]
    assert caps["negative_prompt"] is expected["negative"]
    assert caps["guidance_scale"] is (expected["guidance"] != "none")
    assert caps["guidance"] == expected["guidance"]
    assert caps["edits"] == expected["edits"]
    assert caps["transparency"] is expected.get("transparency", False)
    # The playground's form (and any client) reads the accepted fields from the same place.
    assert ("negative_prompt" in caps["fields"]) is expected["negative"]
    assert ("guidance_scale" in caps["fields"]) is (expected["guidance"] != "none")
    assert ("input_fidelity" in caps["fields"]) is (expected["edits"] != "reference images")
    assert caps["size_rule"]["multiple"] == MULTIPLE.get(family, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_generations_with_n_and_seeds(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    caps = advertised[family]
    if _cannot(caps, "generate"):  # an edit-only checkpoint
        _refused(lambda: client.images.generate(model=family, prompt="a cat", extra_body=STEPS), "model")

    def draw(seed: int, **fields: Any) -> Any:
        return _draw(client, family, caps, extra_body={**STEPS, "seed": seed}, **fields)

    two = draw(5, size="64x64", n=2)
    assert [_size(two, i) for i in range(2)] == [(64, 64), (64, 64)]
    assert not np.array_equal(_image(two, 0), _image(two, 1))
    # Image i of a request is image 0 of the request with seed + i (one generator per image).
    assert np.array_equal(_image(draw(6, size="64x64")), _image(two, 1))
    # Computed at the requested size, not binned or rounded.
    assert _size(draw(5, size="64x128")) == (64, 128)


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_follow_the_pipeline(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    multiple = MULTIPLE.get(family, 16)
    caps = advertised[family]
    error = _refused(lambda: _draw(client, family, caps, size=f"{multiple + 8}x64", extra_body=STEPS), "size")
    assert f"multiples of {multiple}" in error.message


@pytest.mark.parametrize("family", FAMILIES)
def test_negative_prompt_has_an_effect_or_is_refused(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    def gen(**extra: Any) -> Any:
        return _draw(
            client, family, advertised[family], size="64x64", extra_body={**STEPS, "seed": 3, **extra}
        )

    if not advertised[family]["negative_prompt"]:
        _refused(lambda: gen(negative_prompt="blurry"), "negative_prompt")
        return
    # At a guidance that turns classifier-free guidance on, where the model takes one.
    guided = {"guidance_scale": 4.0} if advertised[family]["guidance_scale"] else {}
    assert not np.array_equal(_image(gen(negative_prompt="blurry", **guided)), _image(gen(**guided)))


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_scale_has_an_effect_or_is_refused(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    def gen(scale: float) -> Any:
        extra = {**STEPS, "seed": 3, "guidance_scale": scale}
        return _draw(client, family, advertised[family], size="64x64", extra_body=extra)

    if not advertised[family]["guidance_scale"]:
        error = _refused(lambda: gen(2.0), "guidance_scale")
        assert "distilled" in error.message
        return
    assert not np.array_equal(_image(gen(2.0)), _image(gen(6.0)))


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_edit_keeps_every_unmasked_pixel_or_is_refused(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    original = gradient(64, 64)

    def edit() -> Any:
        return client.images.edit(
            model=family,
            image=_upload(original),
            mask=("m.png", png_bytes(half_mask(64, 64)), "image/png"),
            prompt="a red square",
            size="64x64",
            extra_body=STEPS,
        )

    caps = advertised[family]
    if not caps["mask"]:
        _refused(edit, "model" if _cannot(caps, "edit") else "mask")
        return
    edited, before = _image(edit()), np.asarray(original, dtype=np.int16)
    assert np.array_equal(edited[:, :32], before[:, :32])
    assert np.abs(edited[:, 32:] - before[:, 32:]).mean() > 5


@pytest.mark.parametrize("family", FAMILIES)
def test_unmasked_edits_and_variations_at_the_requested_size(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    def edit() -> Any:
        return client.images.edit(
            model=family, image=_upload(), prompt="a cat", size="64x128", extra_body=STEPS
        )

    def vary() -> Any:
        return client.images.create_variation(
            model=family, image=_upload(), n=2, size="64x128", response_format="b64_json", extra_body=STEPS
        )

    if _cannot(advertised[family], "edit"):
        _refused(edit, "model")
        _refused(vary, "model")
        return
    assert _size(edit()) == (64, 128)
    varied = vary()
    assert [_size(varied, i) for i in range(2)] == [(64, 128), (64, 128)]
    assert not np.array_equal(_image(varied, 0), _image(varied, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_input_fidelity_keeps_its_meaning_or_is_refused(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    def edit() -> Any:
        return client.images.edit(
            model=family,
            image=_upload(),
            prompt="a cat",
            size="64x64",
            input_fidelity="high",
            extra_body=STEPS,
        )

    caps = advertised[family]
    if _cannot(caps, "edit"):
        _refused(edit, "model")
    elif caps["edits"] == "reference images":
        _refused(edit, "input_fidelity")  # no strength to keep more of the input
    else:
        assert _size(edit()) == (64, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_edits_with_several_images(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    caps = advertised[family]
    images = [_upload(gradient(64, 64)), _upload(gradient(32, 64)), _upload(gradient(64, 32))]

    def edit() -> Any:
        return client.images.edit(
            model=family, image=images, prompt="put them together", size="64x64", n=2, extra_body=STEPS
        )

    if _cannot(caps, "edit"):
        _refused(edit, "model")
    elif caps["max_images"] < len(images):
        _refused(edit, "image")
    else:
        result = edit()
        assert [_size(result, i) for i in range(2)] == [(64, 64), (64, 64)]
        # The references are used: another set of references, another picture (same seed).
        fewer = client.images.edit(
            model=family, image=images[:1], prompt="put them together", size="64x64", extra_body=STEPS
        )
        assert not np.array_equal(_image(fewer), _image(result))


@pytest.mark.parametrize("family", FAMILIES)
def test_streams_carry_real_partial_images(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    caps = advertised[family]
    events = list(
        _draw(
            client,
            family,
            caps,
            size="64x128",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 3},
        )
    )
    kind = "image_edit" if _cannot(caps, "generate") else "image_generation"
    assert [e.type for e in events] == [f"{kind}.partial_image"] * 2 + [f"{kind}.completed"]
    for event in events:
        assert decode_b64(event.b64_json).size == (64, 128)
    if _cannot(caps, "edit") or _cannot(caps, "generate"):
        return  # an edit-only model's stream above was an edit already
    # Edits stream too: image-to-image (its strength runs 3 of 4 steps) or reference images.
    edit = list(
        client.images.edit(
            model=family,
            image=_upload(),
            prompt="a cat",
            size="64x128",
            stream=True,
            partial_images=2,
            extra_body={"num_inference_steps": 4},
        )
    )
    assert [e.type for e in edit] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert all(decode_b64(e.b64_json).size == (64, 128) for e in edit)


@pytest.mark.parametrize("family", FAMILIES)
def test_leaving_a_stream_interrupts_the_pipeline(
    family: str, client: openai.OpenAI, family_server: RunningServer, advertised: dict[str, dict[str, Any]]
) -> None:
    family_server.leave_a_long_stream(
        lambda fields: _draw(client, family, advertised[family], prompt="x", size="64x64", **fields)
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_transparency_is_the_models_own_alpha_or_refused(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    caps = advertised[family]

    def draw(background: str) -> Any:
        return _draw(
            client, family, caps, size="64x64", background=background, output_format="png", extra_body=STEPS
        )

    if not caps["transparency"]:
        _refused(lambda: draw("transparent"), "background")
        return
    clear = decode_b64(draw("transparent").data[0].b64_json)
    assert clear.mode == "RGBA"
    alpha = np.asarray(clear)[..., 3]
    assert alpha.min() < 255 and alpha.max() > alpha.min()  # the VAE's own alpha, not a constant
    assert decode_b64(draw("opaque").data[0].b64_json).mode == "RGB"  # flattened for an opaque request


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_edits_take_the_other_images_as_references(
    family: str, client: openai.OpenAI, advertised: dict[str, dict[str, Any]]
) -> None:
    """FLUX.2-klein repaints the mask of the first image guided by the others (`image_reference`)."""
    caps = advertised[family]
    original = gradient(64, 64)

    def edit(*others: Any) -> Any:
        return client.images.edit(
            model=family,
            image=[_upload(original), *(_upload(o) for o in others)],
            mask=("m.png", png_bytes(half_mask(64, 64)), "image/png"),
            prompt="a red square",
            size="64x64",
            extra_body=STEPS,
        )

    if not caps["mask"] or caps["max_images"] < 2:
        expected = "model" if _cannot(caps, "edit") else "image" if caps["max_images"] < 2 else "mask"
        _refused(lambda: edit(gradient(96, 64)), expected)
        return
    guided, alone = _image(edit(gradient(96, 64))), _image(edit())
    before = np.asarray(original, dtype=np.int16)
    assert np.array_equal(guided[:, :32], before[:, :32])  # outside the mask: the input, exactly
    assert not np.array_equal(guided[:, 32:], alone[:, 32:])  # inside: the reference changed it
