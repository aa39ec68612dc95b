"""`limner generate | edit | vary | models`: the client side of the command line, on limner.client.

Images are written to files and their paths printed on stdout, one per line, so the output pipes
well; progress (``--stream``) goes to stderr. An API error prints its message and param on one line
and exits 1, without a traceback. limner.client is imported inside the commands, so that
`limner serve` does not pay for it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from limner.client import ApiClient, ImagesApi, JobsApi

#: The CLI is limner's, so without OPENAI_BASE_URL it talks to a local `limner serve`.
LOCAL_API = "http://127.0.0.1:8000/v1"

BaseUrl = Annotated[
    str, typer.Option("--base-url", envvar="OPENAI_BASE_URL", help="API base URL.", show_envvar=True)
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="API key.", show_envvar=True)
]
Count = Annotated[int | None, typer.Option("-n", "--n", help="How many images (1..10).")]
Size = Annotated[str | None, typer.Option("--size", help="WxH, e.g. 1024x1024, or auto.")]
ModelName = Annotated[str | None, typer.Option("--model", "-m", help="Model name (see `limner models`).")]
Quality = Annotated[str | None, typer.Option("--quality", help="low, medium, high, auto; standard, hd.")]
Format = Annotated[
    str | None, typer.Option("--format", help="Output format: png, jpeg or webp (GPT image models).")
]
Stream = Annotated[bool, typer.Option("--stream", help="Show partial images as they arrive.")]
Partials = Annotated[int, typer.Option("--partial-images", help="Partial images per image with --stream.")]
OutDir = Annotated[Path, typer.Option("-o", "--output-dir", help="Where to write the images.")]
Seed = Annotated[int | None, typer.Option("--seed", help="limner extension: image i uses seed + i.")]
InputImage = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextmanager
def _images_api(base_url: str, api_key: str | None) -> Iterator[ImagesApi]:
    from limner.client import ApiClient, Configuration, ImagesApi

    with ApiClient(Configuration(host=base_url, access_token=api_key)) as client:
        yield ImagesApi(client)


@contextmanager
def _jobs_api(base_url: str, api_key: str | None) -> Iterator[JobsApi]:
    from limner.client import ApiClient, Configuration, JobsApi

    with ApiClient(Configuration(host=base_url, access_token=api_key)) as client:
        yield JobsApi(client)


jobs_app = typer.Typer(help="Asynchronous jobs on a limner server.", no_args_is_help=True)


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[str, typer.Argument(help="The id `limner generate --async` printed.")],
    output_dir: OutDir = Path("."),
    base_url: BaseUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """Wait for a job to end, write its images and print their paths."""
    with _jobs_api(base_url, api_key) as jobs:
        job = _run(lambda: jobs.wait(job_id))
        if job.status != "completed" or job.result is None:
            raise _fail(f"job {job_id} was {job.status}")
        result = job.result
        paths = _run(lambda: _save_all(result.data or [], result.created, output_dir, jobs.api_client))
    _print_paths(paths)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    all_jobs: Annotated[
        bool,
        typer.Option(
            "--all", help="Also the ordinary calls kept for their Idempotency-Key (this client sends one)."
        ),
    ] = False,
    base_url: BaseUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """List your asynchronous jobs (--async), newest first: id, status, operation, model."""
    with _jobs_api(base_url, api_key) as jobs:
        for job in _run(lambda: jobs.list(limit=limit, mode=None if all_jobs else "async")).data:
            typer.echo(f"{job.id}\t{job.status}\t{job.operation}\t{job.model or '-'}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, base_url: BaseUrl = LOCAL_API, api_key: ApiKey = None) -> None:
    """Cancel a queued or running job."""
    with _jobs_api(base_url, api_key) as jobs:
        typer.echo(f"{job_id}\t{_run(lambda: jobs.cancel(job_id)).status}")


def _run(action: Callable[[], T]) -> T:
    """Run an API action, turning every client error into one line on stderr and exit status 1."""
    from pydantic import ValidationError

    from limner.client import ApiConnectionError, ApiException, OpenApiException

    try:
        return action()
    except ApiException as exc:
        where = f" (param: {exc.param})" if exc.param else ""
        raise _fail(f"{exc.message}{where}") from None
    except ApiConnectionError as exc:
        raise _fail(exc.message) from None
    except OpenApiException as exc:
        raise _fail(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise _fail(problems, 2) from None


def _save_all(images: list[Any], created: int, out: Path, client: ApiClient) -> list[Path]:
    from limner.client import image_bytes
    from limner.client._save import write_new

    return [
        write_new(image_bytes(image, client), out / f"limner-{created}-{i}") for i, image in enumerate(images)
    ]


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _dall_e(model: str | None) -> bool:
    # DALL-E answers with URLs unless asked for base64: ask, and save the download.
    return bool(model and model.startswith("dall-e"))


def _stream_to_files(stream: Any, total_images: int, partials: int, out: Path) -> list[Path]:
    """Write each completed image; show progress on stderr: a live bar on a terminal, else one line
    per event (a log file or a CI job sees every step too)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from limner.client._save import write_new

    paths: list[Path] = []
    steps = max(1, total_images * (partials + 1))
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    progress = Progress(*columns, console=console, transient=True, disable=not console.is_terminal)

    def report(description: str, completed: int) -> None:
        if console.is_terminal:
            progress.update(task, completed=completed, description=description)
        else:
            typer.echo(f"{description} ({completed}/{steps})", err=True)

    with progress:
        task = progress.add_task("waiting for the first image", total=steps)
        for event in stream:
            index = len(paths)
            if event.type.endswith("partial_image"):
                report(
                    f"image {index + 1}/{total_images}: partial {event.partial_image_index + 1}/{partials}",
                    index * (partials + 1) + event.partial_image_index + 1,
                )
            else:
                data = base64.b64decode(event.b64_json)
                paths.append(write_new(data, out / f"limner-{event.created_at}-{index}"))
                report(f"image {index + 1}/{total_images} done", (index + 1) * (partials + 1))
                if console.is_terminal:
                    progress.console.print(f"[green]wrote[/green] {paths[-1]}")
    return paths


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        typer.echo(str(path))


def _produce(
    api: Any,
    call: Callable[..., Any],
    *,
    stream: bool,
    n: int | None,
    partial_images: int,
    output_dir: Path,
    model: str | None,
) -> list[Path]:
    """Run one create call (streamed with progress, or not) and write its images; the paths written."""
    if stream:
        events = _run(lambda: call(stream=True, partial_images=partial_images))
        return _run(lambda: _stream_to_files(events, n or 1, partial_images, output_dir))
    # DALL-E answers with links by default; ask for the bytes, which are written either way.
    result = _run(lambda: call(**({"response_format": "b64_json"} if _dall_e(model) else {})))
    return _run(lambda: _save_all(result.data or [], result.created, output_dir, api.api_client))


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    n: Count = None,
    size: Size = None,
    model: ModelName = None,
    quality: Quality = None,
    output_format: Format = None,
    stream: Stream = False,
    partial_images: Partials = 2,
    output_dir: OutDir = Path("."),
    seed: Seed = None,
    submit: Annotated[
        bool, typer.Option("--async", help="Queue a job on the server and print its id (limner servers).")
    ] = False,
    base_url: BaseUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """Create images from a prompt; writes them to files and prints their paths."""
    fields = _fields(n=n, size=size, model=model, quality=quality, output_format=output_format, seed=seed)
    if submit:
        with _jobs_api(base_url, api_key) as jobs:
            typer.echo(_run(lambda: jobs.submit_image(prompt=prompt, **fields)).id)
        return
    with _images_api(base_url, api_key) as api:
        paths = _produce(
            api,
            lambda **kw: api.create_image(prompt=prompt, **fields, **kw),
            stream=stream,
            n=n,
            partial_images=partial_images,
            output_dir=output_dir,
            model=model,
        )
    _print_paths(paths)


def edit(
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="One or more images.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to change.")],
    mask: Annotated[
        Path | None, typer.Option("--mask", exists=True, dir_okay=False, help="PNG; transparent = edit.")
    ] = None,
    n: Count = None,
    size: Size = None,
    model: ModelName = None,
    quality: Quality = None,
    output_format: Format = None,
    stream: Stream = False,
    partial_images: Partials = 2,
    output_dir: OutDir = Path("."),
    seed: Seed = None,
    base_url: BaseUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """Edit one or more images with a prompt (and an optional mask)."""
    fields = _fields(n=n, size=size, model=model, quality=quality, output_format=output_format, seed=seed)
    image: Any = images if len(images) > 1 else images[0]
    with _images_api(base_url, api_key) as api:
        paths = _produce(
            api,
            lambda **kw: api.create_image_edit(image, prompt, mask=mask, **fields, **kw),
            stream=stream,
            n=n,
            partial_images=partial_images,
            output_dir=output_dir,
            model=model,
        )
    _print_paths(paths)


def vary(
    image: InputImage,
    n: Count = None,
    size: Size = None,
    model: ModelName = None,
    output_dir: OutDir = Path("."),
    seed: Seed = None,
    base_url: BaseUrl = LOCAL_API,
    api_key: ApiKey = None,
) -> None:
    """Make variations of an image."""
    # Variations are DALL-E's (or a local model's): both answer b64_json when asked.
    fields = _fields(n=n, size=size, model=model, seed=seed, response_format="b64_json")
    with _images_api(base_url, api_key) as api:
        result = _run(lambda: api.create_image_variation(image, **fields))
        paths = _run(lambda: _save_all(result.data or [], result.created, output_dir, api.api_client))
    _print_paths(paths)


def models(base_url: BaseUrl = LOCAL_API, api_key: ApiKey = None) -> None:
    """List the models the server offers (id and owner, tab separated)."""
    from limner.client import ApiClient, Configuration, ModelsApi

    with ApiClient(Configuration(host=base_url, access_token=api_key)) as client:
        listing = _run(ModelsApi(client).list_models)
    for model in listing.data:
        typer.echo(f"{model.id}\t{model.owned_by}")


def register(app: typer.Typer) -> None:
    """Add the client commands to limner's main app (called by limner.cli.main)."""
    app.command("generate")(generate)
    app.command("edit")(edit)
    app.command("vary")(vary)
    app.command("models")(models)
    app.add_typer(jobs_app, name="jobs")
