"""The retry policy of openai-python, as pure functions (no I/O, so the sync and async shells share it).

Retried: connection errors, timeouts, and the statuses 408, 409, 429 and 5xx, unless the server says
otherwise with ``x-should-retry: true|false``, or asks for a wait longer than two minutes (then the
error is raised at once: a caller is better served by the error than by a silent two-minute stall).
The wait is the server's (``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date) when
it is in (0, 120] seconds, else ``min(0.5 * 2**k, 8) * (1 - 0.25 * U[0, 1))`` for retry number k.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 120.0
RETRIED_STATUSES = frozenset({408, 409, 429})


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait, or None when it does not say (or says it unreadably)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        if math.isinf(delay) or math.isnan(delay):
            # An overflowing number is a very long wait, not a malformed one: refuse to retry.
            return MAX_RETRY_AFTER + 1
        return delay / divisor
    date = headers.get("retry-after")
    if not date:
        return None
    try:
        parsed = email.utils.parsedate_tz(date)
        if parsed is None:
            return None
        return float(email.utils.mktime_tz(parsed) - now())
    except (TypeError, ValueError, OverflowError):
        return None


def should_retry_status(status: int, headers: Mapping[str, str]) -> bool:
    retry_after = parse_retry_after(headers)
    if retry_after is not None and retry_after > MAX_RETRY_AFTER:
        return False
    verdict = headers.get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return status in RETRIED_STATUSES or status >= 500


def retry_delay(
    retries_taken: int,
    headers: Mapping[str, str] | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``retries_taken`` (0 for the first retry)."""
    if headers is not None:
        retry_after = parse_retry_after(headers)
        if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER:
            return retry_after
    backoff = min(INITIAL_RETRY_DELAY * math.pow(2.0, min(retries_taken, 1000)), MAX_RETRY_DELAY)
    return max(0.0, backoff * (1 - 0.25 * rand()))
