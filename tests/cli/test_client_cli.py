"""`limner generate | edit | vary | models` against a real `limner serve`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from PIL import Image as PILImage
from typer.testing import CliRunner, Result

from limner.cli.client_commands import register
from tests.support.server import RunningServer, start_server

runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)
    return application


def write_png(path: Path, transparent_middle: bool = False) -> Path:
    image = PILImage.new("RGBA", (64, 64), (30, 120, 60, 255))
    if transparent_middle:
        image.paste((0, 0, 0, 0), (16, 16, 48, 48))
    image.save(path, format="PNG")
    return path


def paths_of(output: str) -> list[Path]:
    return [Path(line) for line in output.splitlines() if line.strip()]


def invoke(app: typer.Typer, server: RunningServer, *args: str) -> Result:
    return runner.invoke(app, [*args, "--base-url", server.api_base])


def test_generate_writes_files_and_prints_their_paths(
    app: typer.Typer, server: RunningServer, tmp_path: Path
) -> None:
    result = invoke(app, server, "generate", "a red fox", "-n", "2", "--size", "256x256", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    paths = paths_of(result.stdout)
    assert len(paths) == 2 and len(set(paths)) == 2
    for path in paths:
        assert path.parent == tmp_path and PILImage.open(path).size == (256, 256)


def test_generate_with_model_and_format(app: typer.Typer, server: RunningServer, tmp_path: Path) -> None:
    result = invoke(
        app,
        server,
        "generate",
        "a lake",
        "--model",
        "gpt-image-1",
        "--quality",
        "low",
        "--size",
        "1024x1024",
        "--format",
        "webp",
        "-o",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    [path] = paths_of(result.stdout)
    assert path.suffix == ".webp" and PILImage.open(path).format == "WEBP"
    result = invoke(
        app,
        server,
        "generate",
        "a lake",
        "--model",
        "dall-e-2",
        "--size",
        "256x256",
        "--seed",
        "5",
        "-o",
        str(tmp_path),
    )
    assert result.exit_code == 0 and paths_of(result.stdout)[0].suffix == ".png"


def test_generate_stream_shows_progress_and_writes_the_final_images(
    app: typer.Typer, server: RunningServer, tmp_path: Path
) -> None:
    result = invoke(
        app,
        server,
        "generate",
        "a lighthouse",
        "--model",
        "gpt-image-1",
        "--quality",
        "low",
        "--size",
        "1024x1024",
        "-n",
        "2",
        "--stream",
        "--partial-images",
        "2",
        "-o",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    paths = paths_of(result.stdout)
    assert len(paths) == 2 and all(PILImage.open(p).size == (1024, 1024) for p in paths)
    # stderr is not a terminal here: progress comes as plain lines, one per event.
    lines = result.stderr.splitlines()
    assert "image 1/2: partial 1/2 (1/6)" in lines and "image 2/2 done (6/6)" in lines
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no partial images left behind


def test_generate_stream_of_a_large_image(app: typer.Typer, server: RunningServer, tmp_path: Path) -> None:
    """The CLI's stream at 1536x1024 high: a final event of well over 1 MiB is written whole."""
    result = invoke(
        app,
        server,
        "generate",
        "a noisy field of many coloured stars",
        "--model",
        "gpt-image-1",
        "--quality",
        "high",
        "--size",
        "1536x1024",
        "--stream",
        "-o",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    (path,) = paths_of(result.stdout)
    assert path.stat().st_size > 768 * 1024 and PILImage.open(path).size == (1536, 1024)


def test_edit_several_images_and_with_a_mask(app: typer.Typer, server: RunningServer, tmp_path: Path) -> None:
    a, b = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png")
    out = tmp_path / "out"
    result = invoke(
        app,
        server,
        "edit",
        str(a),
        str(b),
        "--prompt",
        "merge",
        "--model",
        "gpt-image-1",
        "--quality",
        "low",
        "--size",
        "1024x1024",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert [p.parent for p in paths_of(result.stdout)] == [out]
    mask = tmp_path / "mask.png"
    PILImage.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask)
    result = invoke(
        app,
        server,
        "edit",
        str(a),
        "-p",
        "a hat",
        "--mask",
        str(mask),
        "--model",
        "dall-e-2",
        "--size",
        "256x256",
        "-n",
        "2",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert [PILImage.open(p).size for p in paths_of(result.stdout)] == [(256, 256)] * 2


def test_edit_stream(app: typer.Typer, server: RunningServer, tmp_path: Path) -> None:
    a = write_png(tmp_path / "a.png")
    result = invoke(
        app,
        server,
        "edit",
        str(a),
        "-p",
        "a hat",
        "--model",
        "gpt-image-1",
        "--quality",
        "low",
        "--size",
        "1024x1024",
        "--stream",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 0, result.output
    assert len(paths_of(result.stdout)) == 1


def test_vary(app: typer.Typer, server: RunningServer, tmp_path: Path) -> None:
    source = write_png(tmp_path / "in.png")
    result = invoke(
        app, server, "vary", str(source), "-n", "2", "--size", "256x256", "-o", str(tmp_path / "v")
    )
    assert result.exit_code == 0, result.output
    assert [PILImage.open(p).size for p in paths_of(result.stdout)] == [(256, 256)] * 2


def test_models(app: typer.Typer, server: RunningServer) -> None:
    result = invoke(app, server, "models")
    assert result.exit_code == 0
    ids = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert "dall-e-2" in ids and "gpt-image-1" in ids


def test_an_api_error_is_one_line_with_its_param(
    app: typer.Typer, server: RunningServer, tmp_path: Path
) -> None:
    result = invoke(app, server, "generate", "a cat", "--size", "13x13", "-o", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "(param: size)" in line and "256x256" in line
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_an_invalid_value_is_caught_before_sending(app: typer.Typer, server: RunningServer) -> None:
    result = invoke(app, server, "generate", "a cat", "--quality", "ultra")
    assert result.exit_code == 2 and "quality" in result.stderr and "Traceback" not in result.output


def test_no_server_is_one_line_too(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "--base-url", "http://127.0.0.1:9/v1"])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "127.0.0.1:9" in line


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    data_dir = tmp_path_factory.mktemp("cli-keyed")
    created = subprocess.run(
        [sys.executable, "-m", "limner", "keys", "create", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    with start_server(data_dir) as running:
        yield running, created.stdout.strip().splitlines()[-1]


def test_base_url_and_key_come_from_the_environment(
    app: typer.Typer, keyed: tuple[RunningServer, str], tmp_path: Path
) -> None:
    server, key = keyed
    env = {"OPENAI_BASE_URL": server.api_base, "OPENAI_API_KEY": key}
    result = runner.invoke(app, ["generate", "an owl", "--size", "256x256", "-o", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models"], env={**env, "OPENAI_API_KEY": "sk-wrong"})
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    result = runner.invoke(app, ["models", "--api-key", key], env={**env, "OPENAI_API_KEY": "sk-wrong"})
    assert result.exit_code == 0


def test_the_limner_command_has_the_client_commands(server: RunningServer, tmp_path: Path) -> None:
    env = {**os.environ, "OPENAI_BASE_URL": server.api_base}
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "limner", "generate", "a kite", "--size", "256x256", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [path] = paths_of(done.stdout)
    assert PILImage.open(io.BytesIO(path.read_bytes())).size == (256, 256)


def test_help_shows_flags_as_flags_and_serve_defaults() -> None:
    from limner.cli.main import app

    generate = runner.invoke(app, ["generate", "--help"])
    assert generate.exit_code == 0
    stream_line = next(line for line in generate.stdout.splitlines() if "--stream" in line)
    assert "<bool>" not in stream_line and "BOOLEAN" not in stream_line
    serve = runner.invoke(app, ["serve", "--help"])
    assert "[default: 127.0.0.1]" in serve.stdout and "[default: 8000]" in serve.stdout
