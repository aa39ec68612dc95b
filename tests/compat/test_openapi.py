"""limner's own OpenAPI document: valid, complete enough that a generated client works against
`limner serve`, and shown at /docs with no CDN."""

from __future__ import annotations

import base64
import importlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import pytest
from PIL import Image

from tests.support.images import gradient, half_mask, png_bytes
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def document(server: RunningServer) -> dict[str, Any]:
    response = httpx2.get(server.base_url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_document_validates(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(document)  # type: ignore[arg-type]


def test_every_operation_is_tagged_so_docs_group_it(document: dict[str, Any]) -> None:
    tags = {
        (path, method): operation.get("tags")
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert all(tags.values()), [where for where, tag in tags.items() if not tag]
    assert tags[("/v1/images/jobs", "get")] == tags[("/v1/images/jobs/{job_id}", "delete")] == ["Jobs"]


def test_every_image_route_has_its_bodies_responses_and_security(document: dict[str, Any]) -> None:
    paths = document["paths"]
    edit = paths["/v1/images/edits"]["post"]
    assert set(edit["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    multipart = document["components"]["schemas"]["CreateImageEditMultipartRequest"]["properties"]
    assert multipart["mask"]["format"] == "binary"
    assert {"format": "binary", "type": "string"} in multipart["image"]["anyOf"]
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        operation = paths[path]["post"]
        assert operation["security"] == [{"bearerAuth": []}]
        assert {"200", "400", "401", "404", "413", "429", "500"} <= set(operation["responses"])
        assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    generation = paths["/v1/images/generations"]["post"]["responses"]["200"]["content"]
    assert set(generation) == {"application/json", "text/event-stream"}
    request = document["components"]["schemas"]["CreateImageRequest"]["properties"]
    size = request["size"]["anyOf"][0]
    assert re.fullmatch(size["pattern"], "1792x1024") and not re.fullmatch(size["pattern"], "1024x1024\n")
    assert {"seed", "negative_prompt", "num_inference_steps", "guidance_scale"} <= set(request)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.fixture(scope="module")
def generated(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any]
) -> Iterator[ModuleType]:
    """A Python client generated from the served document by openapi-python-client (from PyPI)."""
    import json

    out = tmp_path_factory.mktemp("generated")
    spec = out / "openapi.json"
    spec.write_text(json.dumps(document))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(out / "limner_generated"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _patch_generator_bug(out / "limner_generated")
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("limner_generated")
    finally:
        sys.path.remove(str(out))


def _patch_generator_bug(package: Path) -> None:
    """openapi-python-client (0.29) types an operation with two request content types (our edits:
    multipart and JSON) as `body: A | B | Unset` but forgets to import `Unset` (its endpoint template
    sets `body_required` inside a Jinja loop, where the assignment does not persist). Add the import,
    and nothing else, where that line is the only problem."""
    for module in (package / "api").rglob("*.py"):
        text = module.read_text()
        if "| Unset = UNSET" in text and "import UNSET, Response\n" in text:
            module.write_text(text.replace("import UNSET, Response\n", "import UNSET, Response, Unset\n"))


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_a_generated_client_works(generated: ModuleType, server: RunningServer) -> None:
    client_mod = importlib.import_module("limner_generated.client")
    models = importlib.import_module("limner_generated.models")
    api = "limner_generated.api.images."
    create_image = importlib.import_module(api + "create_image")
    create_edit = importlib.import_module(api + "create_image_edit")
    create_variation = importlib.import_module(api + "create_image_variation")
    types = importlib.import_module("limner_generated.types")
    client = client_mod.Client(base_url=server.base_url, timeout=httpx_timeout())

    result = create_image.sync(
        client=client,
        body=models.CreateImageRequest(prompt="a red sun", model="gpt-image-1", quality="low", seed=3),
    )
    assert isinstance(result, models.ImagesResponse), result
    assert _decode(result.data[0].b64_json).size == (1024, 1024)

    original = gradient(256, 256)
    edit = create_edit.sync(
        client=client,
        body=models.CreateImageEditMultipartRequest(
            image=types.File(
                payload=io.BytesIO(png_bytes(original)), file_name="in.png", mime_type="image/png"
            ),
            mask=types.File(
                payload=io.BytesIO(png_bytes(half_mask(256, 256))),
                file_name="mask.png",
                mime_type="image/png",
            ),
            prompt="a yellow star",
            model="dall-e-2",
            size="256x256",
            response_format="b64_json",
        ),
    )
    assert isinstance(edit, models.ImagesResponse), edit
    edited = _decode(edit.data[0].b64_json).convert("RGB")
    assert edited.crop((0, 0, 128, 256)).tobytes() == original.crop((0, 0, 128, 256)).tobytes()

    variation = create_variation.sync(
        client=client,
        body=models.CreateImageVariationMultipartRequest(
            image=types.File(
                payload=io.BytesIO(png_bytes(original)), file_name="in.png", mime_type="image/png"
            ),
            n=2,
            size="256x256",
            response_format="url",
        ),
    )
    assert isinstance(variation, models.ImagesResponse), variation
    assert len(variation.data) == 2 and all(httpx2.get(d.url).status_code == 200 for d in variation.data)

    error = create_image.sync_detailed(
        client=client, body=models.CreateImageRequest(prompt="x", model="dall-e-3", size="256x256")
    )
    assert error.status_code == 400
    assert isinstance(error.parsed, models.ErrorResponse)
    assert error.parsed.error.param == "size"


def httpx_timeout() -> Any:
    import httpx  # the generated client's own HTTP library

    return httpx.Timeout(120.0)


def test_docs_work_offline(server: RunningServer) -> None:
    page = httpx2.get(server.base_url + "/docs", timeout=30)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # nothing from a CDN
    for source in sources:
        assert httpx2.get(server.base_url + source, timeout=30).status_code == 200, source
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
