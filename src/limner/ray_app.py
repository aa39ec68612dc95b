"""limner on Ray Serve: every replica runs the whole limner app (its engines, scheduler and metrics),
and Ray Serve's proxy spreads the requests over them.

    limner serve --ray --replicas 2                       # a local Ray instance, or --ray-address
    serve run deploy/serve.yaml                           # the same application from Ray's own CLI

State the replicas share goes to shared services (see the README's "More than one machine"): images
in S3 (or one data dir on one machine), keys and jobs in PostgreSQL, one LIMNER_SECRET.

Back-pressure stays limner's: Ray Serve's own queue limit answers with a Ray error page, so it is set
unbounded, and `max_queued_requests` becomes each model's `max_queue` in every replica, whose
scheduler answers 429 with Retry-After and the OpenAI envelope. `max_ongoing_requests` is how many
requests Ray hands one replica at once (beyond it they wait in Ray's router, not refused).

Ray is imported only here, and only by `limner serve --ray` (the `[ray]` extra).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limner.server.settings import Settings

log = logging.getLogger("limner.server")

#: Ray Serve's proxy calls this (named by RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) for the
#: middlewares it runs before its own: limner's request id (see proxy_middlewares).
PROXY_CALLBACK = "limner.ray_app:proxy_middlewares"


def proxy_middlewares() -> list[Any]:
    """The proxy's middlewares: limner's `req_` request ids instead of Ray's UUIDs. Called in the proxy's
    process before it builds its HTTP server, which is also the one moment to bound that server's
    request heads (bound_proxy_headers)."""
    from starlette.middleware import Middleware

    from limner.server.middleware import ProxyRequestId

    bound_proxy_headers()
    return [Middleware(ProxyRequestId)]


def bound_proxy_headers() -> None:
    """Ray Serve's proxy builds `uvicorn.Config(...)` itself with the default `http="auto"` (httptools
    when installed, which reads headers of any size: a 10 MB header was answered 200) and no option for
    a bound. Its one seam into that process is the callback above; there, "auto" is pointed at h11 with
    the bound `limner serve` uses (MAX_HEADER_BYTES), for the server Ray builds next."""
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = "limner.ray_app:BoundedH11Protocol"


@functools.cache
def _bounded_h11() -> type:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from limner.server.settings import MAX_HEADER_BYTES

    class BoundedH11(H11Protocol):
        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            config.h11_max_incomplete_event_size = MAX_HEADER_BYTES
            super().__init__(config, *args, **kwargs)

    return BoundedH11


def __getattr__(name: str) -> Any:
    # uvicorn imports the protocol class by name; built on first use so that importing limner.ray_app
    # (the CLI does) does not import uvicorn's h11 protocol.
    if name == "BoundedH11Protocol":
        return _bounded_h11()
    raise AttributeError(name)


@dataclass
class RayOptions:
    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = 64
    max_queued_requests: int | None = None
    #: Environment for every replica (LIMNER_SECRET, AWS_*, OMP_NUM_THREADS...).
    env: dict[str, str] = field(default_factory=dict)

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": "limner",
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": -1,  # never Ray's 503: limner's scheduler answers 429 itself
            "ray_actor_options": {
                "num_cpus": self.cpus_per_replica,
                "num_gpus": self.gpus_per_replica,
                "runtime_env": {"env_vars": self.env} if self.env else {},
            },
        }
        if self.min_replicas is not None or self.max_replicas is not None:
            autoscaling: dict[str, Any] = {
                "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "max_replicas": self.max_replicas if self.max_replicas is not None else max(1, self.replicas),
            }
            if self.target_ongoing_requests is not None:
                autoscaling["target_ongoing_requests"] = self.target_ongoing_requests
            options["autoscaling_config"] = autoscaling
        else:
            options["num_replicas"] = self.replicas
        return options


def replica_settings(settings: Settings, options: RayOptions) -> Settings:
    """What each replica runs: Ray's request ids, and limner's queue limit where Ray's would be."""
    update: dict[str, Any] = {"proxy_request_id": True}
    if options.max_queued_requests is not None:
        update["default_max_queue"] = options.max_queued_requests
        update["models"] = {
            name: table.model_copy(update={"max_queue": options.max_queued_requests})
            for name, table in settings.models.items()
        }
    return settings.model_copy(update=update)


def application(settings: Settings, options: RayOptions) -> Any:
    """The Ray Serve application: one deployment whose replicas each build the limner app."""
    from ray import serve

    payload = replica_settings(settings, options).model_dump(mode="json")

    def build() -> Any:
        # Runs in each replica: its own app, engines and scheduler; named after the replica.
        from limner.server.app import create_app

        replica = serve.get_replica_context()
        data = {
            **payload,
            "replica_id": getattr(replica, "replica_tag", None) or f"{os.uname().nodename}:{os.getpid()}",
        }
        return create_app(Settings.model_validate(data))

    deployment: Any = serve.deployment(serve.ingress(build)(), **options.deployment_options())
    return deployment.bind()


def run(settings: Settings, options: RayOptions, *, blocking: bool = True) -> None:
    """Connect to a Ray cluster (or start a local one), deploy limner, say so in limner's start-up block
    once the application answers, and (blocking) serve until SIGTERM or SIGINT: then Ray Serve stops
    the replicas gracefully (each finishes what it runs; what is queued stays in the job store)."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local instance's proxy inherits this (a cluster sets it in its own environment: deploy/).
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    # Ray Serve kills a proxy that is not ready within 5 s, or misses health checks for 10 s: too
    # short on a small busy machine, where its processes start slowly. A local instance inherits these
    # from here; a cluster reads them from its own environment.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", str(PROXY_START_SECONDS))
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "120")
    _patient_proxy_start()
    # Ray's own INFO lines (a local instance started, Serve started, "new http_options will not be
    # applied" when serve.run meets the proxy serve.start made with them) are noise next to limner's
    # block; its warnings and errors still show.
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    # Ray's notice that a local instance has token authentication on (as it should) reads like a
    # problem and suggests turning it off; the warning for the opposite case still shows.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: not record.getMessage().startswith("Token authentication is enabled")
    )
    if options.address:
        ray.init(address=options.address, **quiet)
    else:
        ray.init(include_dashboard=False, **quiet)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, options), name="limner", route_prefix="/", blocking=False)
    from limner.server import banner

    for line in banner.ray_lines(settings, options):
        log.info("%s", line)
    if blocking:
        _serve_until_stopped(serve, ray)


def _serve_until_stopped(serve: Any, ray: Any) -> None:
    """Wait for SIGTERM or SIGINT, then stop Serve and Ray. The handlers replace the ones Ray's core
    installs in this process, which print a stack dump for a signal that is an ordinary stop."""
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    log.info("stopping: replicas finish what they run; queued jobs stay in the job store for the next start")
    # limner's application only (a cluster may serve others): its replicas stop gracefully, each
    # app's own shutdown runs. Then the local instance this process started, if any, stops with it.
    serve.delete("limner")
    ray.shutdown()
    log.info("limner serve: stopped")


#: How long `serve.start` waits for Ray Serve's HTTP proxy to come up. Ray's own 60 s is too short on a
#: busy small machine (its worker processes start slowly there), and past it Ray kills the proxy.
PROXY_START_SECONDS = int(os.environ.get("LIMNER_RAY_PROXY_TIMEOUT", "600"))


def _patient_proxy_start() -> None:
    """Give the proxy PROXY_START_SECONDS to start. Ray reads the limit from a module constant with no
    setting of its own; where a Ray version moved it, its default stays."""
    from ray.serve._private import api as serve_api

    if hasattr(serve_api, "HTTP_PROXY_TIMEOUT"):
        serve_api.HTTP_PROXY_TIMEOUT = max(serve_api.HTTP_PROXY_TIMEOUT, PROXY_START_SECONDS)


def build_app(args: dict[str, Any]) -> Any:
    """The application builder for `serve run` / `serve deploy` (see deploy/serve.yaml): `args` holds
    `config` (a limner TOML file), `data_dir` (`~` expanded; else LIMNER_DATA_DIR or the default) and
    any RayOptions field (replicas, gpus_per_replica, ...)."""
    config, data_dir = args.get("config"), args.get("data_dir")
    overrides = {"data_dir": Path(str(data_dir)).expanduser()} if data_dir else {}
    settings = Settings.load(Path(config) if config else None, **overrides)
    known = set(RayOptions.__dataclass_fields__) - {"address"}
    options = RayOptions(**{k: v for k, v in args.items() if k in known})
    return application(settings, options)
