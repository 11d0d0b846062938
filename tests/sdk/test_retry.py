"""Retry decisions as tables: Retry-After, backoff, should_retry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sdgate.client._constants import INITIAL_RETRY_DELAY, JITTER_FRACTION, MAX_RETRY_DELAY
from sdgate.client._retry import backoff_delay, parse_retry_after, retry_after_from_headers, should_retry

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("120", 120.0),
        ("Sun, 22 Nov 2026 12:00:30 GMT", 30.0),  # an HTTP date 30 s ahead
        ("Sunday, 22-Nov-26 12:00:05 GMT", 5.0),  # RFC 850 form
        ("Sun, 22 Nov 2026 11:59:00 GMT", 0.0),  # in the past: go now
        ("-1", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("Sun, 99 Foo 2026 12:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_retry_after_ms_wins_and_garbage_falls_back() -> None:
    assert retry_after_from_headers({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_from_headers({"retry-after-ms": "x", "retry-after": "9"}) == 9.0
    assert retry_after_from_headers({}) is None


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 10])
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    base = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
    assert backoff_delay(attempt, jitter=lambda: 0.0) == base
    assert backoff_delay(attempt, jitter=lambda: 1.0) == pytest.approx(base * (1 - JITTER_FRACTION))


def test_backoff_obeys_retry_after() -> None:
    assert backoff_delay(0, retry_after=7.0) == 7.0
    assert backoff_delay(3, retry_after=0.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"status": 408}, True),
        ({"status": 429}, True),
        ({"status": 500}, True),
        ({"status": 502}, True),
        ({"status": 503}, True),
        ({"status": 504}, True),
        ({"status": 400}, False),
        ({"status": 401}, False),
        ({"status": 404}, False),
        ({"status": 409}, False),
        ({"status": 422}, False),
        ({"connection_error": True}, True),
        ({"status": 400, "headers": {"x-should-retry": "true"}}, True),
        ({"status": 503, "headers": {"x-should-retry": "false"}}, False),
        ({"status": 429, "retry_after": 30.0}, True),
        ({"status": 429, "retry_after": 3600.0}, False),  # too long to wait: raise instead
        ({}, False),
    ],
)
def test_should_retry_table(kwargs: dict, expected: bool) -> None:
    assert should_retry(0, 2, **kwargs) is expected


def test_should_retry_stops_at_max() -> None:
    assert should_retry(1, 2, status=503)
    assert not should_retry(2, 2, status=503)
    assert not should_retry(0, 0, connection_error=True)
