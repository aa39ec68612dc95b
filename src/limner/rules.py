"""The model profiles as one table of data, and the pure functions that apply them to a request.

Every rule of docs/images-contract.md, section 10 lives here: which sizes, n, qualities, formats and prompt lengths a
model accepts, which fields it takes at all, how `auto` and omitted fields resolve, the default-model
rule, and the usage estimate. The server parses a body into a `limner.types` model, then calls
`resolve_generation` / `resolve_edit` / `resolve_variation`, which either return a `Resolved` request
(concrete values only) or raise `InvalidValue` naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from limner.errors import InvalidRequest, InvalidValue, ModelNotFound
from limner.types import (
    CreateImageEditRequest,
    CreateImageRequest,
    CreateImageVariationRequest,
    EditImageJsonRequest,
)

Family = Literal["dall-e-2", "dall-e-3", "gpt-image", "local"]
Operation = Literal["generate", "edit", "vary"]

#: Fields only GPT image models (and local models) take. Sent to a DALL-E model they are a 400.
GPT_ONLY_FIELDS = (
    "background",
    "moderation",
    "output_compression",
    "output_format",
    "partial_images",
    "stream",
    "input_fidelity",
)
#: The `default:` the published spec gives each optional field. Clients generated from the spec
#: (openapi-generator's Ruby and Python ones) send every one of them, so a field sent with this value
#: means the same as the field absent: it neither picks the GPT default model nor counts as a field
#: the model does not take (docs/images-contract.md, section 10, revised). Other values keep the per-model rules.
SPEC_DEFAULTS: dict[str, object] = {
    "background": "auto",
    "moderation": "auto",
    "output_format": "png",
    "output_compression": 100,
    "stream": False,
    "partial_images": 0,
    "quality": "auto",
    "size": "auto",
    "style": "vivid",
    "response_format": "url",
    "n": 1,
}
#: The sizes GPT image models make (and the only ones the JSON edit body names).
GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
MAX_IMAGES_PER_EDIT = 16
MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelProfile:
    """What one model name accepts. A row of the rule table."""

    name: str
    family: Family
    operations: frozenset[str]
    #: Fixed sizes, "WxH". Empty with free_size: any size within the free-size rule.
    sizes: tuple[str, ...] = ()
    free_size: bool = False
    size_multiple: int = 16
    max_pixels: int = 3840 * 2160
    max_side: int = 3840
    max_aspect: float = 3.0
    default_size: str = "1024x1024"
    qualities: tuple[str, ...] = ()
    #: What `quality=auto` (or no quality) resolves to for this model.
    auto_quality: str = "high"
    max_n: int = 10
    prompt_max: int = 32000
    #: GPT-image request fields (background, output_format, stream, ...) are accepted.
    gpt_fields: bool = False
    input_fidelity: bool = False
    #: What an omitted `response_format` means. Every model honours the field (docs/images-contract.md, section 10,
    #: revised): limner can serve a link for any image.
    default_response_format: Literal["url", "b64_json"] = "b64_json"
    #: The response echoes size, quality, background and output_format; GPT models add usage.
    echo_settings: bool = False
    usage: bool = False
    revised_prompt: bool = False
    style: bool = False
    #: Edit uploads: formats, byte limit per file, how many files, square only.
    edit_formats: frozenset[str] = frozenset({"png", "webp", "jpeg"})
    edit_max_bytes: int = 50 * MIB
    edit_max_images: int = MAX_IMAGES_PER_EDIT
    edit_square: bool = False
    owned_by: str = "limner"


_GPT = dict(
    family="gpt-image",
    operations=frozenset({"generate", "edit"}),
    sizes=GPT_SIZES,
    qualities=("low", "medium", "high", "auto"),
    gpt_fields=True,
    input_fidelity=True,
    echo_settings=True,
    usage=True,
    owned_by="openai",
)

#: The rule table: every OpenAI model name the spec knows (docs/images-contract.md, sections 2-4 and 10).
OPENAI_PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(
            name="dall-e-2",
            family="dall-e-2",
            operations=frozenset({"generate", "edit", "vary"}),
            sizes=("256x256", "512x512", "1024x1024"),
            qualities=("standard", "auto"),
            auto_quality="standard",
            prompt_max=1000,
            default_response_format="url",
            edit_formats=frozenset({"png"}),
            edit_max_bytes=4 * MIB,
            edit_max_images=1,
            edit_square=True,
            owned_by="openai",
        ),
        ModelProfile(
            name="dall-e-3",
            family="dall-e-3",
            operations=frozenset({"generate"}),
            sizes=("1024x1024", "1792x1024", "1024x1792"),
            qualities=("standard", "hd", "auto"),
            auto_quality="standard",
            max_n=1,
            prompt_max=4000,
            default_response_format="url",
            revised_prompt=True,
            style=True,
            owned_by="openai",
        ),
        ModelProfile(name="gpt-image-1", **_GPT),  # type: ignore[arg-type]
        ModelProfile(name="gpt-image-1-mini", **{**_GPT, "input_fidelity": False}),  # type: ignore[arg-type]
        ModelProfile(name="gpt-image-1.5", **_GPT),  # type: ignore[arg-type]
        ModelProfile(name="gpt-image-2", **{**_GPT, "sizes": (), "free_size": True}),  # type: ignore[arg-type]
        ModelProfile(
            name="gpt-image-2-2026-04-21",
            **{**_GPT, "sizes": (), "free_size": True},  # type: ignore[arg-type]
        ),
        ModelProfile(name="chatgpt-image-latest", **_GPT),  # type: ignore[arg-type]
    )
}

DEFAULT_GENERATION_MODEL = "dall-e-2"
DEFAULT_GPT_GENERATION_MODEL = "gpt-image-1.5"
DEFAULT_EDIT_MODEL = "gpt-image-1.5"
DEFAULT_VARIATION_MODEL = "dall-e-2"


def local_profile(
    name: str,
    *,
    sizes: Iterable[str] = (),
    size_multiple: int = 8,
    max_pixels: int = 1024 * 1024,
    max_side: int = 2048,
    default_size: str = "512x512",
    operations: Iterable[str] = ("generate", "edit", "vary"),
    default_response_format: Literal["url", "b64_json"] = "b64_json",
    edit_max_images: int = MAX_IMAGES_PER_EDIT,
) -> ModelProfile:
    """The profile of an operator-configured model: every GPT-image field and both response formats,
    with the sizes its engine supports (a fixed list, or any multiple of `size_multiple`)."""
    fixed = tuple(sizes)
    return ModelProfile(
        name=name,
        family="local",
        operations=frozenset(operations),
        sizes=fixed,
        free_size=not fixed,
        size_multiple=size_multiple,
        max_pixels=max_pixels,
        max_side=max_side,
        max_aspect=4.0,
        default_size=default_size,
        qualities=("low", "medium", "high", "auto", "standard", "hd"),
        gpt_fields=True,
        input_fidelity=True,
        default_response_format=default_response_format,
        echo_settings=True,
        edit_max_images=edit_max_images,
    )


# --------------------------------------------------------------------------------------------------
# Resolved requests


@dataclass(frozen=True)
class Resolved:
    """A request with every field checked against its profile and every `auto` resolved."""

    profile: ModelProfile
    operation: Operation
    prompt: str
    n: int
    width: int
    height: int
    #: As requested (for stream events, which echo the request): may be "auto".
    requested_size: str
    requested_quality: str
    requested_background: str
    #: Resolved: what the response body reports.
    quality: str
    detail: Literal["low", "medium", "high"]
    background: Literal["transparent", "opaque"]
    output_format: Literal["png", "jpeg", "webp"]
    output_compression: int | None
    response_format: Literal["url", "b64_json"]
    stream: bool = False
    partial_images: int = 0
    input_fidelity: Literal["low", "high"] = "low"
    style: str | None = None
    moderation: str = "auto"
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    user: str | None = None
    #: LoRA adapters asked for (the `lora` field and a model named NAME:ADAPTER): (name, scale or None).
    loras: tuple[tuple[str, float | None], ...] = ()

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


# --------------------------------------------------------------------------------------------------
# Helpers


def _allowed(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _invalid(param: str, value: object, allowed: Iterable[str], model: str) -> InvalidValue:
    return InvalidValue(
        f"Invalid value for '{param}': {value!r} is not supported with model '{model}'. "
        f"Supported values are: {_allowed(allowed)}.",
        param=param,
    )


def sent(req: object, field: str) -> bool:
    """Whether the request carries `field` with a value other than the spec's default (see
    SPEC_DEFAULTS): only such a value picks a model or is refused by a model that lacks the field."""
    value = getattr(req, field, None)
    if value is None:
        return False
    default = SPEC_DEFAULTS.get(field)
    return not (default is not None and value == default and type(value) is type(default))


def _unsupported(param: str, model: str) -> InvalidValue:
    return InvalidValue(
        f"Unknown parameter '{param}' for model '{model}': it is not supported with this model.",
        param=param,
        code="unsupported_parameter",
    )


_SIZE_RE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


def parse_size(size: str) -> tuple[int, int] | None:
    """(width, height) of an exact "WxH" string: no spaces, no trailing newline, no leading zeros."""
    m = _SIZE_RE.fullmatch(size)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_size(profile: ModelProfile, size: str, *, param: str = "size") -> tuple[int, int]:
    """A concrete size the profile accepts, as (width, height). `auto` is resolved by the caller."""
    if profile.sizes and size in profile.sizes:
        w, h = parse_size(size) or (0, 0)
        return w, h
    parsed = parse_size(size)
    if profile.free_size and parsed:
        w, h = parsed
        m = profile.size_multiple
        problems = []
        if w % m or h % m:
            problems.append(f"both sides must be multiples of {m}")
        if max(w, h) > profile.max_side or w * h > profile.max_pixels:
            problems.append(
                f"at most {profile.max_side} pixels on a side and {profile.max_pixels} pixels in all"
            )
        if max(w, h) / min(w, h) > profile.max_aspect:
            problems.append(
                f"the aspect ratio must be between 1:{profile.max_aspect:g} and {profile.max_aspect:g}:1"
            )
        if min(w, h) < m:
            problems.append(f"each side must be at least {m}")
        if not problems:
            return w, h
        raise InvalidValue(
            f"Invalid value for '{param}': '{size}' is not supported with model '{profile.name}': "
            + "; ".join(problems)
            + ".",
            param=param,
        )
    if profile.free_size:
        raise InvalidValue(
            f"Invalid value for '{param}': '{size}'. Use 'auto' or WIDTHxHEIGHT, for example '1024x1024'.",
            param=param,
        )
    raise _invalid(
        param, size, (*profile.sizes, "auto") if profile.gpt_fields else profile.sizes, profile.name
    )


def closest_size(profile: ModelProfile, aspect: float) -> str:
    """For `size=auto` on an edit: the allowed size whose aspect ratio is closest to the input's."""
    if not profile.sizes:
        return profile.default_size
    candidates = [s for s in profile.sizes if parse_size(s)]

    def distance(s: str) -> float:
        w, h = parse_size(s) or (1, 1)
        return abs(math.log((w / h) / aspect))

    return min(candidates, key=distance)


_DETAIL = {"low": "low", "medium": "medium", "high": "high", "standard": "medium", "hd": "high"}


def _quality(profile: ModelProfile, quality: str | None) -> tuple[str, str]:
    """(resolved quality for the response, engine detail)."""
    q = quality or "auto"
    if q not in profile.qualities:
        raise _invalid("quality", q, profile.qualities, profile.name)
    if q == "auto":
        q = profile.auto_quality
    return q, _DETAIL[q]


def _int_range(param: str, value: int | None, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise InvalidValue(
            f"Invalid value for '{param}': {value}. It must be between {lo} and {hi}.", param=param
        )


def check_prompt(profile: ModelProfile, prompt: str) -> None:
    if not prompt or not prompt.strip():
        raise InvalidRequest("The prompt must not be empty.", param="prompt", code="empty_prompt")
    if len(prompt) > profile.prompt_max:
        raise InvalidValue(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{profile.prompt_max} for model '{profile.name}', but got a string with length {len(prompt)}.",
            param="prompt",
            code="string_above_max_length",
        )


def _check_extensions(
    req: CreateImageRequest | CreateImageEditRequest | EditImageJsonRequest | CreateImageVariationRequest,
) -> None:
    _int_range("num_inference_steps", req.num_inference_steps, 1, 150)
    if req.guidance_scale is not None and not 0 <= req.guidance_scale <= 30:
        raise InvalidValue(
            f"Invalid value for 'guidance_scale': {req.guidance_scale}. It must be between 0 and 30.",
            param="guidance_scale",
        )
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise InvalidValue("Invalid value for 'seed': it must be between 0 and 2**63 - 1.", param="seed")


#: The most adapters a request may name (a model's own limit, max_loras, is checked by its engine).
MAX_LORAS = 16


def _loras(lookup: ProfileLookup, req: Any) -> tuple[tuple[str, float | None], ...]:
    """The adapters a request asks for: its `lora` field, and the adapter of a model named NAME:ADAPTER
    (at its configured scale, unless `lora` gives that adapter a scale of its own)."""
    asked: dict[str, float | None] = {}
    adapter = lookup.adapter_of(req.model) if req.model else None
    if adapter is not None:
        asked[adapter] = None
    raw = req.lora
    items = list(raw.items()) if isinstance(raw, dict) else [(name, None) for name in raw or []]
    if len(items) > MAX_LORAS:
        raise InvalidValue(f"Invalid value for 'lora': at most {MAX_LORAS} adapters.", param="lora")
    for name, scale in items:
        if not name or len(name) > 100:
            raise InvalidValue(
                "Invalid value for 'lora': adapter names are 1 to 100 characters.", param="lora"
            )
        if scale is not None and not (math.isfinite(scale) and -4 <= scale <= 4):
            raise InvalidValue(
                f"Invalid value for 'lora': the scale of '{name}' must be between -4 and 4.", param="lora"
            )
        asked[name] = scale
    return tuple(asked.items())


# --------------------------------------------------------------------------------------------------
# The three operations


class ProfileLookup:
    """Maps model names to profiles: the OpenAI table plus the operator's local models."""

    def __init__(
        self,
        profiles: dict[str, ModelProfile],
        *,
        default_generation: str = DEFAULT_GENERATION_MODEL,
        default_gpt_generation: str = DEFAULT_GPT_GENERATION_MODEL,
        default_edit: str = DEFAULT_EDIT_MODEL,
        default_variation: str = DEFAULT_VARIATION_MODEL,
        adapters: Callable[[str], Collection[str]] | None = None,
    ) -> None:
        self.profiles = profiles
        #: A model's LoRA adapter names, each also served as the model name NAME:ADAPTER.
        self.adapters = adapters or (lambda model: ())
        self.default_generation = default_generation
        self.default_gpt_generation = default_gpt_generation
        self.default_edit = default_edit
        self.default_variation = default_variation

    def split(self, model: str) -> tuple[str, str | None]:
        """(served model, adapter) of a name: NAME:ADAPTER names an adapter of NAME; any other name
        is itself."""
        if model in self.profiles:
            return model, None
        base, colon, adapter = model.rpartition(":")
        if colon and base in self.profiles and adapter in self.adapters(base):
            return base, adapter
        return model, None

    def adapter_of(self, model: str) -> str | None:
        return self.split(model)[1]

    def get(self, model: str, operation: Operation) -> ModelProfile:
        profile = self.profiles.get(self.split(model)[0])
        if profile is None:
            raise ModelNotFound(model)
        if operation not in profile.operations:
            verb = {"generate": "image generation", "edit": "image edits", "vary": "image variations"}
            raise InvalidValue(
                f"The model '{model}' does not support {verb[operation]}. Models that do: "
                f"{_allowed(n for n, p in self.profiles.items() if operation in p.operations)}.",
                param="model",
            )
        return profile

    def for_generation(self, req: CreateImageRequest) -> ModelProfile:
        name = req.model
        if not name:
            gpt_only = any(sent(req, f) for f in GPT_ONLY_FIELDS if f in type(req).model_fields)
            name = self.default_gpt_generation if gpt_only else self.default_generation
        return self.get(name, "generate")

    def for_edit(self, model: str | None) -> ModelProfile:
        return self.get(model or self.default_edit, "edit")

    def for_variation(self, model: str | None) -> ModelProfile:
        return self.get(model or self.default_variation, "vary")


def _common(
    lookup: ProfileLookup,
    profile: ModelProfile,
    operation: Operation,
    req: CreateImageRequest | CreateImageEditRequest | EditImageJsonRequest,
    *,
    prompt: str,
    size: str,
    requested_size: str,
) -> Resolved:
    check_prompt(profile, prompt)
    _check_extensions(req)
    n = 1 if req.n is None else req.n
    if not 1 <= n <= min(10, profile.max_n):
        if profile.max_n == 1 and 1 <= n <= 10:
            raise InvalidValue(
                f"Invalid value for 'n': {n}. Model '{profile.name}' makes only one image per request (n=1).",
                param="n",
            )
        _int_range("n", n, 1, profile.max_n)

    # Fields the model does not take at all (sent with the spec's default value they are no-ops).
    if not profile.gpt_fields:
        for f in GPT_ONLY_FIELDS:
            if sent(req, f):
                raise _unsupported(f, profile.name)
    response_format = getattr(req, "response_format", None)
    input_fidelity = getattr(req, "input_fidelity", None)
    if input_fidelity is not None and not profile.input_fidelity:
        raise _unsupported("input_fidelity", profile.name)

    width, height = check_size(profile, size)
    quality, detail = _quality(profile, req.quality)

    output_format = getattr(req, "output_format", None) or "png"
    compression = getattr(req, "output_compression", None)
    _int_range("output_compression", compression, 0, 100)
    background_req = getattr(req, "background", None) or "auto"
    background: Literal["transparent", "opaque"] = (
        "transparent" if background_req == "transparent" else "opaque"
    )
    if background == "transparent" and output_format == "jpeg":
        raise InvalidValue(
            "background 'transparent' needs output_format 'png' or 'webp': JPEG has no alpha channel.",
            param="output_format",
        )
    partial_images = getattr(req, "partial_images", None)
    _int_range("partial_images", partial_images, 0, 3)
    stream = bool(getattr(req, "stream", None))

    return Resolved(
        profile=profile,
        operation=operation,
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        requested_size=requested_size,
        requested_quality=req.quality or "auto",
        requested_background=background_req,
        quality=quality,
        detail=detail,  # type: ignore[arg-type]
        background=background,
        output_format=output_format,  # type: ignore[arg-type]  # a Literal in every request model
        output_compression=compression,
        response_format=response_format or profile.default_response_format,
        stream=stream,
        partial_images=partial_images or 0,
        input_fidelity=input_fidelity or "low",
        # dall-e-3's style defaults to vivid (the spec's default); other models take none.
        style=(getattr(req, "style", None) or "vivid") if profile.style else None,
        moderation=getattr(req, "moderation", None) or "auto",
        seed=req.seed,
        negative_prompt=req.negative_prompt,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        user=req.user or req.safety_identifier,
        loras=_loras(lookup, req),
    )


def resolve_generation(lookup: ProfileLookup, req: CreateImageRequest) -> Resolved:
    profile = lookup.for_generation(req)
    requested = req.size or "auto"
    # `auto` is the spec's default size: for a model without it (dall-e-2, dall-e-3) it means the same
    # as no size, the model's default.
    size = profile.default_size if requested == "auto" else requested
    # `style` is accepted and ignored for models other than dall-e-3 (docs/images-contract.md, section 10), so that
    # DALL-E-era clients that always send it keep working; dall-e-3 checks its value.
    return _common(lookup, profile, "generate", req, prompt=req.prompt, size=size, requested_size=requested)


def resolve_edit(
    lookup: ProfileLookup,
    req: CreateImageEditRequest | EditImageJsonRequest,
    *,
    input_size: tuple[int, int] | None,
) -> Resolved:
    """`input_size` is the first image's (width, height), used to resolve size=auto."""
    profile = lookup.for_edit(req.model)
    requested = req.size or "auto"
    if isinstance(req, EditImageJsonRequest) and requested not in (*GPT_SIZES, "auto"):
        raise _invalid("size", requested, (*GPT_SIZES, "auto"), profile.name)
    if requested == "auto":
        if profile.gpt_fields and input_size:
            size = closest_size(profile, input_size[0] / input_size[1])
            if profile.free_size and not profile.sizes:
                size = _free_auto_size(profile, input_size)
        else:
            size = profile.default_size
    else:
        size = requested
    return _common(lookup, profile, "edit", req, prompt=req.prompt, size=size, requested_size=requested)


def _free_auto_size(profile: ModelProfile, input_size: tuple[int, int]) -> str:
    """size=auto with a free-size model: the input's aspect, scaled to about a megapixel, snapped."""
    w, h = input_size
    m = profile.size_multiple
    scale = math.sqrt(min(profile.max_pixels, 1024 * 1024) / (w * h))
    aspect = min(max(w / h, 1 / profile.max_aspect), profile.max_aspect)
    h2 = math.sqrt(w * h) * scale / math.sqrt(aspect)
    w2 = h2 * aspect
    snap = lambda v: max(m, round(v / m) * m)  # noqa: E731
    return f"{snap(w2)}x{snap(h2)}"


def resolve_variation(lookup: ProfileLookup, req: CreateImageVariationRequest) -> Resolved:
    profile = lookup.for_variation(req.model)
    _check_extensions(req)
    n = 1 if req.n is None else req.n
    _int_range("n", n, 1, profile.max_n)
    requested = req.size or profile.default_size
    if requested == "auto" and not profile.gpt_fields:
        raise _invalid("size", requested, profile.sizes, profile.name)
    size = profile.default_size if requested == "auto" else requested
    width, height = check_size(profile, size)
    quality, detail = _quality(profile, None)
    return Resolved(
        profile=profile,
        operation="vary",
        prompt="",
        n=n,
        width=width,
        height=height,
        requested_size=requested,
        requested_quality="auto",
        requested_background="auto",
        quality=quality,
        detail=detail,  # type: ignore[arg-type]
        background="opaque",
        output_format="png",
        output_compression=None,
        response_format=req.response_format or profile.default_response_format,
        seed=req.seed,
        negative_prompt=req.negative_prompt,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        user=req.user or req.safety_identifier,
        loras=_loras(lookup, req),
    )


# --------------------------------------------------------------------------------------------------
# Usage (an estimate: local models have no tokens; docs/images-contract.md, section 10)

#: gpt-image-1's published output tokens per image at 1024x1024, 1024x1536, 1536x1024.
OUTPUT_TOKENS: dict[str, dict[str, int]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}


def output_tokens(quality: str, width: int, height: int) -> int:
    table = OUTPUT_TOKENS.get(quality, OUTPUT_TOKENS["high"])
    exact = table.get(f"{width}x{height}")
    if exact is not None:
        return exact
    # Other sizes (gpt-image-2's free sizes): scale the square figure by area.
    return max(1, round(table["1024x1024"] * width * height / (1024 * 1024)))


def image_input_tokens(sizes: Iterable[tuple[int, int]], fidelity: str) -> int:
    per_tile = 129 if fidelity == "high" else 65
    return sum(per_tile * math.ceil(w / 512) * math.ceil(h / 512) for w, h in sizes)


def usage_for(
    resolved: Resolved, *, input_sizes: Iterable[tuple[int, int]] = (), images: int | None = None
) -> dict[str, object]:
    """ImageGenUsage for `images` images (default: resolved.n) of the resolved request."""
    count = resolved.n if images is None else images
    text = math.ceil(len(resolved.prompt) / 4)
    image_in = image_input_tokens(input_sizes, resolved.input_fidelity)
    out = output_tokens(resolved.quality, resolved.width, resolved.height) * count
    return {
        "input_tokens": text + image_in,
        "output_tokens": out,
        "total_tokens": text + image_in + out,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image_in},
        "output_tokens_details": {"image_tokens": out, "text_tokens": 0},
    }
