"""The pure retry policy: which answers are retried and how long to wait."""

from __future__ import annotations

import email.utils

import pytest

from limner.client._retry import parse_retry_after, retry_delay, should_retry_status


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retried_statuses(status: int) -> None:
    assert should_retry_status(status, {})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    assert not should_retry_status(status, {})


def test_x_should_retry_overrides_the_status() -> None:
    assert should_retry_status(400, {"x-should-retry": "true"})
    assert not should_retry_status(503, {"x-should-retry": "false"})


def test_retry_after_beyond_two_minutes_means_no_retry() -> None:
    assert not should_retry_status(429, {"retry-after": "121"})
    assert should_retry_status(429, {"retry-after": "120"})
    assert not should_retry_status(429, {"retry-after-ms": "1e400"})


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    # milliseconds win over seconds, as in openai-python
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "7"}) == 0.25
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: 1_000_000.0) == 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_doubles_up_to_eight_seconds_with_up_to_a_quarter_of_jitter() -> None:
    no_jitter = [retry_delay(k, rand=lambda: 0.0) for k in range(6)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    full_jitter = [retry_delay(k, rand=lambda: 0.999999) for k in range(3)]
    assert full_jitter == pytest.approx([0.375, 0.75, 1.5], rel=1e-5)


def test_server_delay_is_used_when_in_range_else_backoff() -> None:
    assert retry_delay(0, {"retry-after": "3"}, rand=lambda: 0.0) == 3.0
    assert retry_delay(1, {"retry-after": "0"}, rand=lambda: 0.0) == 1.0
    assert retry_delay(0, {"retry-after-ms": "-5"}, rand=lambda: 0.0) == 0.5
