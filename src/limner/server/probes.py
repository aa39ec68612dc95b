"""Health probes of the services a server shares with its replicas (image store, keys, jobs), kept off
the request path.

A probe of a hung service (S3 frozen, PostgreSQL not answering) blocks its thread until the client's
own timeout, so probes never run in the default executor that encoding, key refreshes and job writes
share: they have a small pool of their own, at most one probe per service is in flight, and a fresh
answer is kept for a moment, so a load balancer polling /health at 10 Hz costs at most one thread per
service however long a service hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

#: How long /health waits for a probe before it reports the service as not answering.
PROBE_SECONDS = 0.25
#: How long an answer stays fresh (a probe in flight is never started twice).
FRESH_SECONDS = 1.0

Check = Callable[[], str | None]


@dataclass
class _Service:
    kind: str
    check: Check
    running: Future[str | None] | None = None
    started: float = 0.0
    answer: str | None = None
    answered: float = field(default=-1e9)


class ServiceProbes:
    """`services`: name -> (kind, check); a check returns None when the service answers, else why not."""

    def __init__(self, services: Mapping[str, tuple[str, Check]]) -> None:
        self._services = {name: _Service(kind, check) for name, (kind, check) in services.items()}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(services)), thread_name_prefix="limner-probe")

    def _start(self, service: _Service, now: float) -> None:
        if service.running is None and now - service.answered > FRESH_SECONDS:
            service.running, service.started = self._pool.submit(service.check), now

    async def answers(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        for service in self._services.values():
            self._start(service, now)
        running = [asyncio.wrap_future(s.running) for s in self._services.values() if s.running is not None]
        if running:
            await asyncio.wait(running, timeout=PROBE_SECONDS)  # never cancels a probe: it runs on
        out: dict[str, dict[str, Any]] = {}
        for name, service in self._services.items():
            probe = service.running
            if probe is not None and probe.done():
                try:
                    service.answer = probe.result()
                except Exception as exc:  # a check that raised: the service is not usable
                    service.answer = f"the check failed: {type(exc).__name__}"
                service.running, service.answered = None, time.monotonic()
            if probe is not None and service.running is not None:
                waited = time.monotonic() - service.started
                out[name] = {"kind": service.kind, "ok": False, "error": f"no answer for {waited:.1f} s"}
            elif service.answer is None:
                out[name] = {"kind": service.kind, "ok": True}
            else:
                out[name] = {"kind": service.kind, "ok": False, "error": service.answer}
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
