"""`limner serve | keys` here; the client commands (generate, edit, vary, models) in client_commands."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from limner import __version__

if TYPE_CHECKING:
    from limner.stores.keys import KeyStore

T = TypeVar("T")

app = typer.Typer(
    name="limner",
    help="limner: a self-hosted OpenAI Images API (server, engines, client).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich panels show flags as `--stream <bool>` and read `[default: x]` in a
    # help string as markup (so it vanished).
    rich_markup_mode=None,
)
keys_app = typer.Typer(
    help="Manage API keys (stored hashed in SQLite under the data dir).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where keys, the signing secret and url-mode images live. "
        "Default: $LIMNER_DATA_DIR or a per-user folder.",
    ),
]


def _data_dir(data_dir: Path | None) -> Path:
    from limner.server.settings import default_data_dir

    return data_dir or default_data_dir()


def _parse_model_flags(values: list[str]) -> dict[str, dict[str, str]]:
    """`NAME=ENGINE:SOURCE` (e.g. `dall-e-3=diffusers:/models/sdxl`), or `NAME=sketch`."""
    models: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        engine, _, source = spec.partition(":")
        if not sep or not name or not engine:
            raise typer.BadParameter(f"expected NAME=ENGINE[:SOURCE], got {value!r}", param_hint="--model")
        models[name] = {"engine": engine, **({"source": source} if source else {})}
    return models


@app.command()
def serve(
    # None, not the default itself, so that a value in --config is not overridden by the flag's default.
    host: Annotated[
        str | None, typer.Option(help="Address to listen on.  [default: 127.0.0.1]", show_default=False)
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port.  [default: 8000]", show_default=False)] = None,
    data_dir: DataDir = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="LIMNER_CONFIG",
            help="A TOML config file ($LIMNER_CONFIG: a container's mounted one).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    public_url: Annotated[
        str | None, typer.Option("--public-url", help="Base of the links in url responses.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            metavar="NAME=ENGINE[:SOURCE]",
            help="Serve NAME with an engine: NAME=diffusers:SOURCE or NAME=sketch (repeatable).",
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            metavar="keys|none",
            help="keys: every /v1 call needs a key; none: open. Default: keys once any key was ever "
            "created in the data dir.",
        ),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Deploy on Ray Serve: replicas, each running the whole app.")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="A running Ray cluster (default: start a local one).")
    ] = None,
    replicas: Annotated[int, typer.Option("--replicas", help="With --ray: replicas (fixed).")] = 1,
    min_replicas: Annotated[
        int | None, typer.Option("--min-replicas", help="With --ray: autoscale from...")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max-replicas", help="...to this many replicas.")
    ] = None,
    target_ongoing_requests: Annotated[
        float | None,
        typer.Option("--target-ongoing-requests", help="With autoscaling: requests per replica."),
    ] = None,
    cpus_per_replica: Annotated[float, typer.Option("--cpus-per-replica", help="With --ray.")] = 1.0,
    gpus_per_replica: Annotated[float, typer.Option("--gpus-per-replica", help="With --ray.")] = 0.0,
    max_ongoing_requests: Annotated[
        int, typer.Option("--max-ongoing-requests", help="With --ray: requests one replica holds at once.")
    ] = 64,
    max_queued_requests: Annotated[
        int | None,
        typer.Option(
            "--max-queued-requests",
            help="With --ray: each model's waiting requests per replica (429 beyond).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            metavar="text|json",
            help="text (readable lines) or json (one object per line, one line per request).  "
            "[default: text]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the Images API server."""
    import uvicorn
    from pydantic import ValidationError

    from limner.errors import EngineUnavailable
    from limner.server import logs
    from limner.server.app import create_app
    from limner.server.settings import MAX_HEADER_BYTES, Settings
    from limner.stores.keys import KeyDatabaseError
    from limner.stores.secret import SecretError

    logs.configure(log_level, "json" if log_format == "json" else "text")
    try:
        settings = Settings.load(
            config,
            host=host,
            port=port,
            data_dir=data_dir,
            public_url=public_url,
            auth=auth,
            log_format=log_format,
            models=_parse_model_flags(model or []) or None,
        )
        logs.configure(log_level, settings.log_format)  # the config file may say json
        if ray:
            from limner.extras import install_hint
            from limner.ray_app import RayOptions, run

            if importlib.util.find_spec("ray") is None:
                raise ValueError(f"--ray needs Ray Serve: {install_hint('ray')}")

            env = {k: v for k, v in os.environ.items() if k.startswith(("LIMNER_", "AWS_", "HF_", "OMP_"))}
            _run_on_ray(
                lambda: run(
                    settings,
                    RayOptions(
                        address=ray_address,
                        replicas=replicas,
                        min_replicas=min_replicas,
                        max_replicas=max_replicas,
                        target_ongoing_requests=target_ongoing_requests,
                        cpus_per_replica=cpus_per_replica,
                        gpus_per_replica=gpus_per_replica,
                        max_ongoing_requests=max_ongoing_requests,
                        max_queued_requests=max_queued_requests,
                        env=env,
                    ),
                )
            )
            return
        application = create_app(settings)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"limner serve: invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from None
    except (EngineUnavailable, KeyDatabaseError, SecretError, ValueError, OSError) as exc:
        typer.echo(f"limner serve: {exc}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        log_config=None,  # uvicorn logs through the root logger set up above (text or JSON)
        access_log=False,  # limner.access writes one richer line per request
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        # h11, whatever else is installed: httptools (which uvicorn[standard] brings) reads headers of
        # any size, so 5 x 20 MB of unfinished headers cost 100 MB before authentication. h11 holds a
        # request's head to this bound and answers 400 past it.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


KeysUrl = Annotated[
    str | None,
    typer.Option(
        "--keys-url",
        envvar="LIMNER_KEYS_URL",
        help="Keys in PostgreSQL (postgresql://...) instead of SQLite under the data dir.",
    ),
]


def _key_action(action: Callable[[KeyStore], T], data_dir: Path | None, keys_url: str | None) -> T:
    """Run a key-store action; a database that cannot be used is one line on stderr and exit 1."""
    from limner.stores.keys import KeyDatabaseError, open_key_store

    try:
        return action(open_key_store(_data_dir(data_dir), keys_url))
    except (KeyDatabaseError, ValueError) as exc:
        typer.echo(f"limner keys: {exc}", err=True)
        raise typer.Exit(1) from None


def _run_on_ray(start: Callable[[], None]) -> None:
    """Ray's own failures to start (a cluster that does not answer, a proxy that never came up) are
    one line, like every other start-up error."""
    try:
        start()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        typer.echo(
            f"limner serve: Ray Serve did not start: {type(exc).__name__}: {exc}".splitlines()[0], err=True
        )
        raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create(
    data_dir: DataDir = None,
    keys_url: KeysUrl = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
) -> None:
    """Create a key. It is printed once, as the last line; only its hash is stored."""
    record, secret = _key_action(lambda store: store.create(name), data_dir, keys_url)
    typer.echo(f"Created key {record.id} ({record.name}). Keep it safe: it is not shown again.")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, keys_url: KeysUrl = None) -> None:
    """List keys (ids, names and hints; never the keys)."""
    import datetime

    for k in _key_action(lambda store: store.list(), data_dir, keys_url):
        created = datetime.datetime.fromtimestamp(k.created_at, datetime.UTC).isoformat(timespec="seconds")
        state = "revoked" if k.revoked_at else "active"
        typer.echo(f"{k.id}\t{k.name}\t{k.hint}\t{created}\t{state}")


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None, keys_url: KeysUrl = None) -> None:
    """Revoke a key by its id."""
    if not _key_action(lambda store: store.revoke(key_id), data_dir, keys_url):
        typer.echo(f"No active key with id {key_id}.", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {key_id}.")


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def _register_client_commands() -> None:
    try:
        from limner.cli import client_commands
    except ImportError:  # the client commands land separately; serve and keys work without them
        return
    client_commands.register(app)


_register_client_commands()


def main() -> None:
    app()
