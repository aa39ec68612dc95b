"""create_app(settings): the whole server wired explicitly, no module globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping

from fastapi import Depends, FastAPI

from limner import __version__
from limner.engines.base import Engine
from limner.engines.registry import EngineRegistry
from limner.errors import LimnerError
from limner.scheduler import KeyLimits, Lane, ModelLimits, Observer, Residency, Scheduler
from limner.scheduler.residency import normal_device, resolve_budgets
from limner.server import banner, errors, openapi
from limner.server.auth import KeyGuard, require_key
from limner.server.metrics import Metrics
from limner.server.middleware import AccessMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from limner.server.probes import ServiceProbes
from limner.server.routes import docs, edits, files, generations, health, jobs, models, playground, variations
from limner.server.serving.callbacks import parse_allow_list
from limner.server.serving.durable import JobManager
from limner.server.serving.jobs_api import JobsApi
from limner.server.settings import Settings
from limner.stores.images import ImageStore, open_image_store
from limner.stores.jobs import JobStore, open_job_store
from limner.stores.keys import open_key_store
from limner.stores.secret import load_secret

log = logging.getLogger("limner.server")


async def _sweep_forever(store: ImageStore, jobs: JobStore, settings: Settings) -> None:
    interval = settings.sweep_interval_seconds
    failing: str | None = None  # what the last failed pass said: said once, not every pass
    while True:
        try:
            removed = await asyncio.to_thread(store.sweep)
            if removed:
                log.info("swept %d expired image(s)", removed)
            ended = await asyncio.to_thread(jobs.sweep, max_bytes_per_owner=settings.max_kept_bytes_per_key)
            if ended:
                log.info("swept %d expired job(s)", ended)
            failing = None
        except (
            OSError,
            sqlite3.Error,
            LimnerError,
        ) as exc:  # a read-only or full data dir: one line, until it changes
            if str(exc) != failing:
                log.warning("sweeping expired images and jobs failed: %s", exc)
            failing = str(exc)
        except Exception:  # keep sweeping whatever one pass hit
            log.exception("sweeping expired images failed")
        await asyncio.sleep(interval)


def build_scheduler(registry: EngineRegistry, settings: Settings, observer: Observer | None) -> Scheduler:
    """The scheduler's lanes and limits, from the configuration, before any request arrives."""
    lanes = {}
    for key, engine in registry.engines.items():
        served = [m for m in registry.models.values() if m.engine_key == key]
        if not served:
            continue
        lanes[key] = Lane(
            key,
            engine,
            concurrency=served[0].concurrency,  # one number per engine: the registry checked that
            max_batch=engine.info.max_batch,
            batch_wait_ms=max(m.batch_wait_ms for m in served),
        )
    models = {name: ModelLimits(m.engine_key, m.max_queue) for name, m in registry.models.items()}
    served_by = {key: [name for name, m in registry.models.items() if m.engine_key == key] for key in lanes}
    engines = {key: lane.engine for key, lane in lanes.items()}
    devices = {normal_device(d) for e in engines.values() if (d := e.memory().device) is not None}
    residency = Residency(
        engines,
        served_by,
        observer,
        budgets=resolve_budgets(settings.memory_budget, devices),
        load_wait_seconds=settings.load_wait_seconds,
        work=lambda key: lanes[key].backlog(),
    )
    return Scheduler(
        lanes,
        models,
        residency=residency,
        key_limits=KeyLimits(settings.max_queued_per_key, settings.max_running_per_key),
        observer=observer,
    )


def create_app(settings: Settings, *, engines: Mapping[str, Engine] | None = None) -> FastAPI:
    """The whole server. `engines` serves model names with engines built elsewhere (a test's own)."""
    data_dir = settings.data_dir
    # Prompts, uploads and results live here: the data dir is the server's alone (0700), also when an
    # earlier tool or version made it more open.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to change (an operator's directory): left as it is
        data_dir.chmod(0o700)
    # torch.compile's kernels and graphs (models with compile = true) persist here: a restart reads
    # them instead of compiling again. An operator's own setting wins.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data_dir / "compile-cache"))
    registry = EngineRegistry(
        settings.models,
        sketch_concurrency=settings.sketch_concurrency,
        engines=engines,
        default_max_queue=settings.default_max_queue,
    )
    metrics = Metrics(list(registry.models), per_key=settings.metrics_per_key) if settings.metrics else None
    scheduler = build_scheduler(registry, settings, metrics)
    if metrics is not None:
        metrics.watch(scheduler)
    secret = load_secret(data_dir / "secret.key", given=settings.secret)
    # Callbacks are signed with a secret of their own: a receiver that checks them cannot forge links.
    callback_allow = parse_allow_list(settings.callback_allow)  # a malformed entry stops start-up
    callback_secret = load_secret(
        data_dir / "callback.key",
        given=settings.callback_secret,
        what="callback-signing secret",
        given_by="`callback_secret` in the config",
    )
    store = open_image_store(settings.storage, data_dir, secret, settings.url_ttl_seconds)
    key_guard = KeyGuard(open_key_store(data_dir, settings.keys_url), settings.auth)
    # Keys that are needed but cannot be read stop the server here (KeyDatabaseError names the file).
    startup_hashes = key_guard.check_at_startup()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(scheduler.residency.load_at_startup)
        if metrics is not None:
            for name, served in registry.models.items():
                metrics.model_state(name, loaded=registry.engines[served.engine_key].loaded)
        scheduler.start()
        await manager.recover()  # jobs a crash interrupted run again before anything new
        create_key = key_guard.store.create_command
        for line in banner.startup_lines(settings, registry, startup_hashes, create_key=create_key):
            log.info("%s", line)
        for warning in banner.startup_warnings(settings, startup_hashes):
            log.warning("%s", warning)
        sweeper = asyncio.create_task(_sweep_forever(store, job_store, settings))
        try:
            yield
        finally:
            sweeper.cancel()
            manager.stop()
            scheduler.shutdown()
            await manager.release()
            scheduler.residency.close_all()
            probes.close()

    app = FastAPI(title="limner", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.registry = registry
    app.state.lookup = registry.lookup(settings.defaults)
    app.state.scheduler = scheduler
    app.state.store = store
    app.state.callback_allow = callback_allow
    app.state.callback_secret = callback_secret
    app.state.key_guard = key_guard
    job_store = open_job_store(data_dir, settings.jobs_url)
    # The durable layer replays stored requests through the routes' own parsing: handed over here.
    manager = JobManager(
        app, job_store, {"generate": generations.parse, "edit": edits.parse, "vary": variations.parse}
    )
    app.state.jobs = manager
    probes = ServiceProbes(
        {
            "images": (store.kind, store.check),
            "keys": (key_guard.store.kind, key_guard.store.check),
            "jobs": (job_store.kind, job_store.check),
        }
    )
    app.state.probes = probes
    app.state.jobs_api = JobsApi(manager)
    app.state.metrics = metrics
    app.state.started = int(time.time())

    errors.install(app)
    v1 = [Depends(require_key)]
    for router in (generations.router, edits.router, variations.router, jobs.router, models.router):
        app.include_router(router, prefix="/v1", dependencies=v1)
    app.include_router(files.router)
    app.include_router(health.router)
    if metrics is not None:
        app.include_router(
            # Behind the key whenever keys are required (require_key lets everyone in on an open server),
            # unless the operator opens it explicitly.
            health.metrics_router,
            dependencies=[] if settings.metrics_require_key is False else [Depends(require_key)],
        )
    docs.install(app)
    if settings.ui:
        playground.install(app)
    openapi.install(app)

    # Outermost last: ids and timing on every response, the 413 included; the access record and the
    # request metrics inside it, so that they see the request id.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(AccessMiddleware, metrics=metrics)
    replica = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    app.state.replica = replica
    app.add_middleware(RequestContextMiddleware, replica=replica, proxy_request_id=settings.proxy_request_id)
    return app
