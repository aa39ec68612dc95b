"""Prometheus metrics: one registry per app (no process globals, so several apps or replicas in one
process each count their own), fed explicitly by the request middleware, the scheduler's observer
hooks and the service, and read at scrape time from the scheduler for gauges.

Labels stay of low cardinality: route templates (never raw paths), model names the server serves
(anything else is "-"), status codes, operations, and key ids only with `metrics_per_key = true`.
Buckets span a 10 ms sketch image to a minutes-long diffusion job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from limner.scheduler import Scheduler

# `*_created` series double every counter for a timestamp nobody graphs.
disable_created_metrics()

#: Seconds: from a 5 ms sketch image to a five-minute diffusion job.
TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class _SchedulerCollector(Collector):
    """Queue depth, running jobs and ended jobs, read from the scheduler at scrape time."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        health = self.scheduler.health()
        queued = GaugeMetricFamily("limner_queue_depth", "Jobs waiting, per model.", labels=["model"])
        running = GaugeMetricFamily("limner_running_jobs", "Jobs running, per model.", labels=["model"])
        cancelled = CounterMetricFamily(
            "limner_cancelled_jobs", "Jobs cancelled because their client left.", labels=["model"]
        )
        failed = CounterMetricFamily("limner_failed_jobs", "Jobs that ended in an error.", labels=["model"])
        for model, stats in health.items():
            queued.add_metric([model], stats["queued"])
            running.add_metric([model], stats["running"])
            cancelled.add_metric([model], stats["cancelled"])
            failed.add_metric([model], stats["failed"])
        yield from (queued, running, cancelled, failed)
        residency = self.scheduler.residency
        resident = GaugeMetricFamily(
            "limner_model_resident_bytes",
            "Bytes a loaded model takes on its device (measured; 0 when not loaded).",
            labels=["model"],
        )
        for key, state in residency.snapshot().items():
            held = state["bytes"]["measured"] or 0
            for model in residency.models[key]:
                resident.add_metric([model], held)
        budget = GaugeMetricFamily(
            "limner_memory_budget_bytes", "The memory budget of a device.", labels=["device"]
        )
        used = GaugeMetricFamily(
            "limner_memory_used_bytes",
            "What the resident models count against a device's budget.",
            labels=["device"],
        )
        for device, report in residency.budget_report().items():
            budget.add_metric([device], report["budget"])
            used.add_metric([device], report["resident"])
        yield from (resident, budget, used)
        # What the engines count themselves (a prompt cache's hits and misses), per model.
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for key, engine in residency.engines.items():
            for name, value in engine.counters().items():
                if name not in families:
                    kind = GaugeMetricFamily if name.endswith("_bytes") else CounterMetricFamily
                    families[name] = kind(f"limner_{name}", f"Engine figure: {name}.", labels=["model"])
                for model in residency.models[key]:
                    families[name].add_metric([model], value)
        yield from families.values()


class Metrics:
    """What the server counts. Every method is cheap and thread-safe (prometheus_client's own locks)."""

    def __init__(self, models: list[str], *, per_key: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = set(models)
        self.per_key = per_key
        request_labels = ["route", "model", "status"] + (["key"] if per_key else [])
        self.requests = Counter(
            "limner_requests", "HTTP requests answered.", request_labels, registry=self.registry
        )
        self.request_seconds = Histogram(
            "limner_request_duration_seconds",
            "Time to answer a request (to the last byte of a stream).",
            ["route", "model"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        job = ["model", "operation"]
        self.queue_seconds = Histogram(
            "limner_queue_wait_seconds",
            "Time a job waited for a worker.",
            job,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "limner_engine_run_seconds",
            "Time of one engine run (a batch).",
            job,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "limner_encode_seconds",
            "Time to encode a job's images.",
            job,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "limner_store_seconds",
            "Time to store a response's images (url mode).",
            job,
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("limner_images", "Images made.", job, registry=self.registry)
        self.batch_size = Histogram(
            "limner_batch_size",
            "Images in one engine run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "limner_rejected_requests",
            "Requests refused with 429, by what was exceeded.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "limner_model_load_seconds", "How long loading the model took.", ["model"], registry=self.registry
        )
        self.loaded = Gauge(
            "limner_model_loaded", "1 while the model is loaded.", ["model"], registry=self.registry
        )
        self.loads = Counter(
            "limner_model_loads", "Times the model was loaded.", ["model"], registry=self.registry
        )
        self.load_duration = Histogram(
            "limner_model_load_duration_seconds",
            "Time each load of the model took.",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.evictions = Counter(
            "limner_model_evictions",
            "Times the model was unloaded to make room for another under the memory budget.",
            ["model"],
            registry=self.registry,
        )
        self.load_failures = Counter(
            "limner_model_load_failures", "Loads of the model that failed.", ["model"], registry=self.registry
        )
        self.adapter_requests = Counter(
            "limner_lora_requests",
            "Requests that asked for a LoRA adapter, per model and adapter.",
            ["model", "adapter"],
            registry=self.registry,
        )

    def watch(self, scheduler: Scheduler) -> None:
        self.registry.register(_SchedulerCollector(scheduler))

    def model_label(self, model: str | None) -> str:
        return model if model in self.models else "-"

    # -- fed by the request middleware -------------------------------------------------------------

    def request(self, route: str, model: str | None, status: int, seconds: float, key: str | None) -> None:
        labels: dict[str, Any] = {"route": route, "model": self.model_label(model), "status": str(status)}
        if self.per_key:
            labels["key"] = key or "-"
        self.requests.labels(**labels).inc()
        self.request_seconds.labels(route, self.model_label(model)).observe(seconds)

    # -- fed by the scheduler (its observer) -------------------------------------------------------

    def job_started(self, model: str, operation: str, queue_seconds: float) -> None:
        self.queue_seconds.labels(model, operation).observe(queue_seconds)

    def batch_ran(self, model: str, operation: str, seconds: float, images: int) -> None:
        self.run_seconds.labels(model, operation).observe(seconds)
        self.batch_size.labels(model).observe(images)

    def images_made(self, model: str, operation: str, count: int) -> None:
        self.images.labels(model, operation).inc(count)

    def model_state(self, model: str, *, loaded: bool) -> None:
        self.loaded.labels(model).set(1 if loaded else 0)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).set(seconds)
        self.loaded.labels(model).set(1)
        self.loads.labels(model).inc()
        self.load_duration.labels(model).observe(seconds)

    def model_unloaded(self, model: str) -> None:
        self.loaded.labels(model).set(0)
        self.evictions.labels(model).inc()

    def model_load_failed(self, model: str) -> None:
        self.load_failures.labels(model).inc()

    def adapters_used(self, model: str, names: list[str]) -> None:
        for name in names:
            self.adapter_requests.labels(self.model_label(model), name).inc()

    # -- fed by the service and the error handler --------------------------------------------------

    def encoded(self, model: str, operation: str, seconds: float) -> None:
        self.encode_seconds.labels(model, operation).observe(seconds)

    def stored(self, model: str, operation: str, seconds: float) -> None:
        self.store_seconds.labels(model, operation).observe(seconds)

    def refused(self, model: str | None, reason: str) -> None:
        self.rejected.labels(self.model_label(model), reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
