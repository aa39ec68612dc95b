"""Every method of ImagesApi against a real `limner serve`, with every file form and every error family."""

from __future__ import annotations

import io
from pathlib import Path

import pydantic
import pytest
from PIL import Image as PILImage

from limner.client import (
    ApiClient,
    ApiResponse,
    BadRequestException,
    Configuration,
    CreateImageRequest,
    ImagesApi,
    ImagesResponse,
    ModelsApi,
    NotFoundException,
    image_bytes,
    save_image,
    save_images,
)
from tests.client.conftest import decoded, png, png_with_hole
from tests.support.server import RunningServer


def test_create_image_b64_from_keywords(images: ImagesApi) -> None:
    result = images.create_image(
        prompt="a red circle", model="dall-e-2", size="256x256", n=2, response_format="b64_json"
    )
    assert isinstance(result, ImagesResponse) and result.data is not None and len(result.data) == 2
    assert [decoded(image.b64_json).size for image in result.data] == [(256, 256)] * 2


def test_create_image_from_a_request_model_with_keyword_overrides(images: ImagesApi) -> None:
    request = CreateImageRequest(prompt="a blue square", size="512x512", response_format="b64_json")
    result = images.create_image(request, size="256x256")
    assert result.data is not None and decoded(result.data[0].b64_json).size == (256, 256)


def test_with_http_info_unpacks_as_data_status_headers(images: ImagesApi) -> None:
    info = images.create_image_with_http_info(prompt="a cat", size="256x256", response_format="b64_json")
    assert isinstance(info, ApiResponse)
    data, status_code, headers = info
    assert status_code == 200 and isinstance(data, ImagesResponse)
    assert headers["content-type"].startswith("application/json")
    assert info.request_id and info.request_id == headers["x-request-id"]


def test_url_results_download_and_save(images: ImagesApi, client: ApiClient, tmp_path: Path) -> None:
    result = images.create_image(prompt="a green tree", size="256x256", n=2)
    assert result.data is not None and all(image.url and image.b64_json is None for image in result.data)
    assert image_bytes(result.data[0], client).startswith(b"\x89PNG")
    path = save_image(result.data[0], tmp_path / "tree", client)
    assert path == tmp_path / "tree.png" and PILImage.open(path).size == (256, 256)
    paths = save_images(result, tmp_path / "all", api_client=client)
    assert [p.name for p in paths] == ["image-0.png", "image-1.png"]
    first = [p.read_bytes() for p in paths]
    again = images.create_image(prompt="a red house", size="256x256", n=2)
    more = save_images(again, tmp_path / "all", api_client=client)
    # A second call into the same folder adds files; the first call's files are untouched.
    assert [p.name for p in more] == ["image-0-1.png", "image-1-1.png"]
    assert [p.read_bytes() for p in paths] == first and more[0].read_bytes() != first[0]


def test_save_images_names_files_by_their_bytes(images: ImagesApi, tmp_path: Path) -> None:
    result = images.create_image(
        prompt="a lake",
        model="gpt-image-1",
        size="1024x1024",
        quality="low",
        output_format="jpeg",
        output_compression=50,
    )
    assert result.output_format == "jpeg"
    [path] = save_images(result, tmp_path)
    assert path.suffix == ".jpg" and PILImage.open(path).format == "JPEG"


def test_extensions_pass_through_and_seed_is_deterministic(images: ImagesApi) -> None:
    def draw(seed: int) -> str | None:
        result = images.create_image(
            prompt="a storm",
            size="256x256",
            response_format="b64_json",
            seed=seed,
            negative_prompt="blur",
            num_inference_steps=4,
            guidance_scale=3.5,
        )
        assert result.data is not None
        return result.data[0].b64_json

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_edit_with_every_file_form(images: ImagesApi, tmp_path: Path) -> None:
    source = png_with_hole(64)
    path = tmp_path / "in.png"
    path.write_bytes(source)
    forms = [
        path,
        str(path),
        source,
        io.BytesIO(source),
        ("in.png", source, "image/png"),
        ("unnamed", source),
        PILImage.open(io.BytesIO(source)),
    ]
    for form in forms:
        result = images.create_image_edit(
            form, "add a hat", model="dall-e-2", size="256x256", response_format="b64_json"
        )
        assert result.data is not None and decoded(result.data[0].b64_json).size == (256, 256), form
    with path.open("rb") as handle:
        assert images.create_image_edit(handle, "a hat", model="dall-e-2", size="256x256").data


def test_edit_with_mask_and_several_images(images: ImagesApi) -> None:
    mask = png(64, (0, 0, 0, 0))
    result = images.create_image_edit(
        [png(64), png(64, (200, 0, 0, 255))],
        "blend them",
        mask=mask,
        model="gpt-image-1",
        size="1024x1024",
        quality="low",
        n=2,
    )
    assert result.data is not None and len(result.data) == 2
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens > 0


def test_edit_and_variation_with_http_info(images: ImagesApi) -> None:
    data, status, headers = images.create_image_edit_with_http_info(
        png_with_hole(), "a hat", model="dall-e-2", size="256x256"
    )
    assert status == 200 and data.data and "x-request-id" in headers
    data, status, headers = images.create_image_variation_with_http_info(png(), size="256x256", n=3)
    assert status == 200 and data.data and len(data.data) == 3


def test_variation(images: ImagesApi) -> None:
    result = images.create_image_variation(png(), size="256x256", response_format="b64_json", seed=3)
    assert result.data is not None and decoded(result.data[0].b64_json).size == (256, 256)


def test_models(client: ApiClient) -> None:
    ids = [model.id for model in ModelsApi(client).list_models().data]
    assert {"dall-e-2", "dall-e-3", "gpt-image-1"} <= set(ids)


# Errors by status


def test_400_carries_the_envelope(images: ImagesApi) -> None:
    with pytest.raises(BadRequestException) as caught:
        images.create_image(prompt="a cat", model="dall-e-2", size="1792x1024")
    error = caught.value
    assert (error.status, error.param, error.code, error.type) == (
        400,
        "size",
        "invalid_value",
        "invalid_request_error",
    )
    assert "256x256" in error.message and error.request_id and error.request_id.startswith("req_")
    assert error.body.error.param == "size"


def test_unknown_fields_fail_client_side_or_server_side(images: ImagesApi) -> None:
    with pytest.raises(pydantic.ValidationError):
        images.create_image(prompt="a cat", colour="red")
    with pytest.raises(BadRequestException) as caught:
        images.create_image(prompt="a cat", extra_body={"colour": "red"})
    assert (caught.value.param, caught.value.code) == ("colour", "unknown_parameter")


def test_404_for_an_unknown_model(images: ImagesApi) -> None:
    with pytest.raises(NotFoundException) as caught:
        images.create_image(prompt="a cat", model="no-such-model")
    assert (caught.value.status, caught.value.param, caught.value.code) == (404, "model", "model_not_found")


def test_gpt_only_field_to_dall_e_is_refused_with_its_param(images: ImagesApi) -> None:
    with pytest.raises(BadRequestException) as caught:
        images.create_image(prompt="a cat", model="dall-e-3", output_format="webp")
    assert caught.value.param == "output_format"


def test_a_bad_upload_is_a_400(images: ImagesApi) -> None:
    with pytest.raises(BadRequestException) as caught:
        images.create_image_variation(b"definitely not an image")
    assert caught.value.status == 400 and caught.value.param == "image"


def test_wrong_host_path_is_a_404(server: RunningServer) -> None:
    config = Configuration(host=server.base_url + "/nope", access_token=None)
    with ApiClient(config) as client, pytest.raises(NotFoundException):
        ImagesApi(client).create_image(prompt="a cat")
