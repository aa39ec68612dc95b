"""The rule table: one test (or table row) per rule of contract section 10."""

from __future__ import annotations

from typing import Any

import pytest

from limner import rules
from limner.errors import InvalidRequest, ModelNotFound
from limner.types import (
    CreateImageEditRequest,
    CreateImageRequest,
    CreateImageVariationRequest,
    EditImageJsonRequest,
)
from tests.support.generated import RUBY_CREATE_IMAGE

LOOKUP = rules.ProfileLookup(dict(rules.OPENAI_PROFILES))


def gen(**fields: Any) -> rules.Resolved:
    return rules.resolve_generation(
        LOOKUP, CreateImageRequest(prompt=fields.pop("prompt", "a cat"), **fields)
    )


def edit(input_size: tuple[int, int] = (1024, 1024), **fields: Any) -> rules.Resolved:
    req = CreateImageEditRequest(prompt=fields.pop("prompt", "a cat"), **fields)
    return rules.resolve_edit(LOOKUP, req, input_size=input_size)


def refused(fn: Any, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(**fields)
    return info.value


def test_every_spec_model_name_is_in_the_table() -> None:
    assert set(rules.OPENAI_PROFILES) >= {
        "dall-e-2",
        "dall-e-3",
        "gpt-image-1",
        "gpt-image-1-mini",
        "gpt-image-1.5",
        "gpt-image-2",
        "chatgpt-image-latest",
    }


# -- default model -----------------------------------------------------------------------------------


def test_generation_defaults_to_dall_e_2() -> None:
    assert gen().profile.name == "dall-e-2"


@pytest.mark.parametrize(
    "field,value",
    [
        ("background", "opaque"),
        ("moderation", "low"),
        ("output_compression", 50),
        ("output_format", "webp"),
        ("partial_images", 1),
        ("stream", True),
    ],
)
def test_gpt_only_field_implies_gpt_image_default(field: str, value: Any) -> None:
    assert gen(**{field: value}).profile.name == "gpt-image-1.5"


def test_edit_and_variation_defaults() -> None:
    assert edit().profile.name == "gpt-image-1.5"
    var = rules.resolve_variation(LOOKUP, CreateImageVariationRequest())
    assert var.profile.name == "dall-e-2" and var.size == "1024x1024" and var.response_format == "url"


def test_configured_defaults_apply() -> None:
    lookup = rules.ProfileLookup(dict(rules.OPENAI_PROFILES), default_generation="gpt-image-1")
    assert rules.resolve_generation(lookup, CreateImageRequest(prompt="x")).profile.name == "gpt-image-1"


def test_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        gen(model="dall-e-9")
    assert (
        info.value.status_code == 404 and info.value.param == "model" and info.value.code == "model_not_found"
    )


def test_dall_e_3_does_not_edit_and_only_dall_e_2_varies() -> None:
    assert refused(edit, model="dall-e-3").param == "model"
    err = refused(
        rules.resolve_variation, lookup=LOOKUP, req=CreateImageVariationRequest(model="gpt-image-1")
    )
    assert err.param == "model"


# -- sizes ------------------------------------------------------------------------------------------

SIZE_CASES = [
    ("dall-e-2", "256x256", True),
    ("dall-e-2", "512x512", True),
    ("dall-e-2", "1024x1024", True),
    ("dall-e-2", "1792x1024", False),
    ("dall-e-2", "1536x1024", False),
    ("dall-e-3", "1792x1024", True),
    ("dall-e-3", "1024x1792", True),
    ("dall-e-3", "512x512", False),
    ("gpt-image-1", "1536x1024", True),
    ("gpt-image-1", "1024x1536", True),
    ("gpt-image-1", "256x256", False),
    ("gpt-image-1-mini", "1792x1024", False),
    ("chatgpt-image-latest", "1024x1024", True),
    ("gpt-image-2", "1280x720", True),
    ("gpt-image-2", "3840x2160", True),
    ("gpt-image-2", "2160x3840", True),
    ("gpt-image-2", "1000x1000", False),  # not multiples of 16
    ("gpt-image-2", "4096x1024", False),  # too wide and over the pixel limit
    ("gpt-image-2", "1600x480", False),  # aspect over 3:1
    ("gpt-image-2", "big", False),
]


@pytest.mark.parametrize("model,size,ok", SIZE_CASES)
def test_sizes_per_model(model: str, size: str, ok: bool) -> None:
    if ok:
        r = gen(model=model, size=size)
        w, h = map(int, size.split("x"))
        assert (r.width, r.height) == (w, h)  # width first: orientation is never swapped
    else:
        err = refused(gen, model=model, size=size)
        assert err.param == "size" and err.code == "invalid_value"


def test_size_error_lists_allowed_values() -> None:
    assert "'256x256', '512x512', '1024x1024'" in refused(gen, model="dall-e-2", size="64x64").message


def test_size_auto_resolves_to_a_real_size() -> None:
    r = gen(model="gpt-image-1", size="auto")
    assert r.size == "1024x1024" and r.requested_size == "auto"


def test_edit_size_auto_follows_the_input_aspect() -> None:
    assert edit(input_size=(1200, 800)).size == "1536x1024"
    assert edit(input_size=(800, 1200)).size == "1024x1536"
    free = edit(input_size=(1600, 900), model="gpt-image-2")
    assert free.width % 16 == 0 and free.height % 16 == 0 and free.width > free.height


def test_json_edit_size_is_a_closed_enum() -> None:
    req = EditImageJsonRequest(
        prompt="x", images=[{"image_url": "data:,"}], model="gpt-image-2", size="1280x720"
    )
    with pytest.raises(InvalidRequest) as info:
        rules.resolve_edit(LOOKUP, req, input_size=(64, 64))
    assert info.value.param == "size"


# -- n, quality, style, prompt ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,n,ok",
    [
        ("dall-e-2", 10, True),
        ("dall-e-2", 11, False),
        ("dall-e-2", 0, False),
        ("dall-e-3", 1, True),
        ("dall-e-3", 2, False),
        ("gpt-image-1", 10, True),
        ("gpt-image-1", -1, False),
    ],
)
def test_n_limits(model: str, n: int, ok: bool) -> None:
    if ok:
        assert gen(model=model, n=n).n == n
    else:
        assert refused(gen, model=model, n=n).param == "n"


@pytest.mark.parametrize(
    "model,quality,resolved",
    [
        ("gpt-image-1", "low", "low"),
        ("gpt-image-1", "auto", "high"),
        ("gpt-image-1.5", None, "high"),
        ("dall-e-3", "hd", "hd"),
        ("dall-e-3", None, "standard"),
        ("dall-e-2", "standard", "standard"),
    ],
)
def test_quality_resolves(model: str, quality: str | None, resolved: str) -> None:
    assert gen(model=model, quality=quality).quality == resolved


@pytest.mark.parametrize(
    "model,quality",
    [
        ("gpt-image-1", "hd"),
        ("gpt-image-1", "standard"),
        ("dall-e-3", "low"),
        ("dall-e-2", "hd"),
    ],
)
def test_quality_the_model_lacks(model: str, quality: str) -> None:
    assert refused(gen, model=model, quality=quality).param == "quality"


def test_style_checked_for_dall_e_3_and_ignored_elsewhere() -> None:
    assert gen(model="dall-e-3", style="natural").style == "natural"
    assert gen(model="dall-e-3").style == "vivid"  # the spec's default
    ignored = gen(model="dall-e-2", style="vivid")  # accepted (DALL-E-era clients send it), no effect
    assert ignored.profile.name == "dall-e-2" and ignored.style is None


@pytest.mark.parametrize("model,limit", [("dall-e-2", 1000), ("dall-e-3", 4000), ("gpt-image-1", 32000)])
def test_prompt_limits(model: str, limit: int) -> None:
    assert gen(model=model, prompt="a" * limit).prompt
    err = refused(gen, model=model, prompt="a" * (limit + 1))
    assert err.param == "prompt" and str(limit) in err.message


def test_empty_prompt_refused() -> None:
    assert refused(gen, prompt="   ").param == "prompt"


# -- fields a model does not take -------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("background", "transparent"),
        ("moderation", "low"),
        ("output_compression", 50),
        ("output_format", "webp"),
        ("partial_images", 2),
        ("stream", True),
    ],
)
@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3"])
def test_gpt_only_fields_refused_for_dall_e(model: str, field: str, value: Any) -> None:
    assert refused(gen, model=model, **{field: value}).param == field


def test_stream_false_is_harmless_for_dall_e() -> None:
    assert not gen(model="dall-e-2", stream=False).stream


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5", "gpt-image-2", "chatgpt-image-latest"])
def test_response_format_honoured_for_gpt_models(model: str) -> None:
    assert gen(model=model, response_format="url").response_format == "url"
    assert edit(model=model, response_format="url").response_format == "url"
    assert gen(model=model, response_format="b64_json").response_format == "b64_json"


def test_gpt_models_default_b64_and_dall_e_default_url() -> None:
    assert gen(model="gpt-image-1").response_format == "b64_json"
    assert gen(model="dall-e-2").response_format == "url"
    assert gen(model="dall-e-3", response_format="b64_json").response_format == "b64_json"


def test_input_fidelity_not_on_mini() -> None:
    assert refused(edit, model="gpt-image-1-mini", input_fidelity="high").param == "input_fidelity"
    assert edit(model="gpt-image-1", input_fidelity="high").input_fidelity == "high"


def test_transparent_jpeg_refused_on_output_format() -> None:
    err = refused(gen, model="gpt-image-1", background="transparent", output_format="jpeg")
    assert err.param == "output_format"
    assert (
        gen(model="gpt-image-1", background="transparent", output_format="webp").background == "transparent"
    )


def test_background_auto_resolves_to_opaque() -> None:
    r = gen(model="gpt-image-1", background="auto")
    assert r.background == "opaque" and r.requested_background == "auto"


@pytest.mark.parametrize(
    "field,value",
    [
        ("output_compression", 101),
        ("output_compression", -1),
        ("partial_images", 4),
        ("partial_images", -1),
    ],
)
def test_ranges(field: str, value: int) -> None:
    assert refused(gen, model="gpt-image-1", **{field: value}).param == field


@pytest.mark.parametrize(
    "field,value,ok",
    [
        ("seed", 7, True),
        ("seed", -1, False),
        ("num_inference_steps", 150, True),
        ("num_inference_steps", 0, False),
        ("num_inference_steps", 151, False),
        ("guidance_scale", 30.0, True),
        ("guidance_scale", 31.0, False),
        ("negative_prompt", "blurry", True),
    ],
)
def test_extensions(field: str, value: Any, ok: bool) -> None:
    if ok:
        assert getattr(gen(**{field: value}), field) == value
    else:
        assert refused(gen, **{field: value}).param == field


def test_safety_identifier_is_taken_like_user() -> None:
    assert gen(safety_identifier="u-1").user == "u-1"


# -- usage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quality,size,tokens",
    [
        ("low", "1024x1024", 272),
        ("low", "1024x1536", 408),
        ("low", "1536x1024", 400),
        ("medium", "1024x1024", 1056),
        ("medium", "1024x1536", 1584),
        ("medium", "1536x1024", 1568),
        ("high", "1024x1024", 4160),
        ("high", "1024x1536", 6240),
        ("high", "1536x1024", 6208),
    ],
)
def test_usage_output_tokens_table(quality: str, size: str, tokens: int) -> None:
    r = gen(model="gpt-image-1", quality=quality, size=size, n=2, prompt="abcde")
    usage = rules.usage_for(r)
    assert usage["output_tokens"] == 2 * tokens
    assert usage["input_tokens_details"] == {"text_tokens": 2, "image_tokens": 0}  # ceil(5 / 4)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_usage_image_tokens_for_edit_inputs() -> None:
    low = rules.usage_for(edit(model="gpt-image-1", prompt="abcd"), input_sizes=[(1024, 1024), (512, 512)])
    high = rules.usage_for(
        edit(model="gpt-image-1", prompt="abcd", input_fidelity="high"), input_sizes=[(1024, 1024)]
    )
    assert low["input_tokens_details"]["image_tokens"] == 65 * 4 + 65
    assert high["input_tokens_details"]["image_tokens"] == 129 * 4


def test_local_profile_takes_gpt_fields_and_both_formats() -> None:
    lookup = rules.ProfileLookup({"mine": rules.local_profile("mine", sizes=["512x512", "768x512"])})
    r = rules.resolve_generation(
        lookup,
        CreateImageRequest(
            prompt="x", model="mine", size="768x512", response_format="url", output_format="webp"
        ),
    )
    assert (r.width, r.height, r.response_format, r.output_format) == (768, 512, "url", "webp")
    with pytest.raises(InvalidRequest):
        rules.resolve_generation(lookup, CreateImageRequest(prompt="x", model="mine", size="1024x1024"))


# -- the spec's default values are no-ops (contract section 10, revised) ------------------------------

#: What openapi-generator's Ruby and Python clients send, less the prompt.
GENERATED_DEFAULTS: dict[str, Any] = {k: v for k, v in RUBY_CREATE_IMAGE.items() if k != "prompt"}


def test_spec_defaults_are_the_published_ones() -> None:
    import yaml

    from tests.support.schema import SPEC_PATH

    spec = yaml.safe_load(SPEC_PATH.read_text())
    props = spec["components"]["schemas"]["CreateImageRequest"]["properties"]

    def default(prop: dict[str, Any]) -> Any:
        if "$ref" in prop:
            prop = spec["components"]["schemas"][prop["$ref"].rsplit("/", 1)[-1]]
        if "default" in prop:
            return prop["default"]
        for alt in prop.get("anyOf", []) + prop.get("allOf", []):
            if "$ref" in alt:
                alt = spec["components"]["schemas"][alt["$ref"].rsplit("/", 1)[-1]]
            if (found := default(alt)) is not None:
                return found
        return None

    published = {k: default(v) for k, v in props.items() if default(v) is not None and k != "model"}
    assert published == rules.SPEC_DEFAULTS == GENERATED_DEFAULTS


def test_generated_client_defaults_are_a_dall_e_2_request() -> None:
    r = gen(**GENERATED_DEFAULTS)
    assert (r.profile.name, r.size, r.response_format, r.stream) == ("dall-e-2", "1024x1024", "url", False)


@pytest.mark.parametrize(
    "model,size,response_format",
    [("gpt-image-1", "1024x1024", "url"), ("dall-e-3", "1024x1024", "url"), ("dall-e-2", "1024x1024", "url")],
)
def test_generated_client_defaults_with_a_model(model: str, size: str, response_format: str) -> None:
    r = gen(model=model, **GENERATED_DEFAULTS)
    assert (r.profile.name, r.size, r.response_format) == (model, size, response_format)
    assert r.style == ("vivid" if model == "dall-e-3" else None)


def test_non_default_values_keep_their_rules() -> None:
    assert refused(gen, model="dall-e-2", background="transparent").param == "background"
    assert refused(gen, model="dall-e-2", output_compression=99).param == "output_compression"
    assert refused(gen, model="dall-e-3", partial_images=1).param == "partial_images"
    # A GPT-only field with a value of its own still picks the GPT default model.
    assert gen(background="opaque").profile.name == rules.DEFAULT_GPT_GENERATION_MODEL
    assert gen(output_format="png").profile.name == rules.DEFAULT_GENERATION_MODEL


def test_generated_edit_defaults_on_dall_e_2() -> None:
    fields = {
        "background": "auto",
        "n": 1,
        "size": "1024x1024",
        "output_format": "png",
        "output_compression": 100,
        "stream": False,
        "partial_images": 0,
        "quality": "auto",
        "response_format": "url",
    }
    r = edit(model="dall-e-2", **fields)
    assert (r.profile.name, r.size, r.response_format) == ("dall-e-2", "1024x1024", "url")


@pytest.mark.parametrize("size", ["1024x1024\n", " 1024x1024", "1024x1024 ", "1024X1024", "01024x1024"])
@pytest.mark.parametrize("model", ["dall-e-2", "gpt-image-1", "gpt-image-2"])
def test_sizes_are_exact_strings(model: str, size: str) -> None:
    assert refused(gen, model=model, size=size).param == "size"
