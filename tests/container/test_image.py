"""The container image as an operator runs it: built from the Containerfile with podman (the sketch
server, EXTRAS=""), started with a mounted config and a data volume, healthy by its own HEALTHCHECK,
answering a generation, an edit and a url-mode request whose link downloads, and stopped by SIGTERM
cleanly (exit 0, no traceback). Skipped, with the reason, only where podman cannot run at all.

The figures (build cold or cached, image size, run to healthy, SIGTERM to stopped) are printed."""

from __future__ import annotations

import io
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from tests.support.container import TAG, Podman
from tests.support.images import gradient, png_bytes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    engine = Podman(tmp_path_factory.mktemp("podman"))
    why = engine.usable()
    if why is not None:
        pytest.skip(why)
    base = engine.base_image()
    built = engine.build(ROOT, TAG, "EXTRAS=")
    size = int(engine("image", "inspect", TAG, "--format", "{{.Size}}").strip())
    print(f"\nimage: base imported in {base:.1f} s, built in {built:.1f} s, {size / 1e6:.0f} MB")
    yield engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_image_serves_and_stops_cleanly(podman: Podman, tmp_path: Path) -> None:
    name = "limner-ci-" + secrets.token_hex(4)
    config = tmp_path / "limner.toml"
    config.write_text('[models.house]\nengine = "sketch"\n')
    config.chmod(0o644)  # read by the image's unprivileged user
    port = free_port()
    started = time.monotonic()
    podman(
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{name}:/data", "-v", f"{config}:/etc/limner/limner.toml:ro",
        "-e", "LIMNER_CONFIG=/etc/limner/limner.toml", TAG,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not podman.ok("healthcheck", "run", name):  # the image's own HEALTHCHECK command
            assert time.monotonic() < deadline, podman.logs(name)
            time.sleep(0.2)
        healthy = time.monotonic() - started
        assert podman("inspect", name, "--format", "{{.Config.User}}").strip() == "limner"

        base = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert "house" in [m.id for m in client.models.list().data]  # the mounted config is read
        made = client.images.generate(model="house", prompt="a lighthouse", size="256x256")
        assert made.data and made.data[0].b64_json
        image = io.BytesIO(png_bytes(gradient(256, 256)))
        image.name = "photo.png"
        edited = client.images.edit(model="gpt-image-1", image=image, prompt="at night", size="1024x1024")
        assert edited.data and edited.data[0].b64_json
        linked = client.images.generate(
            model="dall-e-2", prompt="a cat", size="256x256", response_format="url"
        )
        url = linked.data[0].url or ""
        assert url.startswith(base)
        download = httpx2.get(url, timeout=60)
        assert download.status_code == 200 and download.content.startswith(b"\x89PNG")

        stopping = time.monotonic()
        podman("stop", "--time", "30", name, timeout=120)  # SIGTERM (the image's STOPSIGNAL)
        stopped = time.monotonic() - stopping
        assert podman("inspect", name, "--format", "{{.State.ExitCode}}").strip() == "0"
        logs = podman.logs(name)
        assert "Traceback" not in logs and "Application shutdown complete" in logs, logs[-2000:]
        print(f"\nrun to healthy {healthy:.1f} s; SIGTERM to stopped {stopped:.1f} s")
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", name, check=False)
