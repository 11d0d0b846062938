"""Retry decisions as pure functions: when to retry, how long to wait, what Retry-After means."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from sdgate.client._constants import (
    INITIAL_RETRY_DELAY,
    JITTER_FRACTION,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    RETRYABLE_STATUSES,
)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date.

    ``None`` for a missing or unreadable value; a date in the past gives ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def retry_after_from_headers(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """``retry-after-ms`` (milliseconds) wins over ``Retry-After`` when both are readable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now=now)


def backoff_delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    initial: float = INITIAL_RETRY_DELAY,
    maximum: float = MAX_RETRY_DELAY,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds to sleep before retry number ``attempt`` (0 for the first retry).

    A server's ``Retry-After`` is obeyed as given; otherwise ``initial * 2**attempt`` capped at
    ``maximum``, shortened by up to ``JITTER_FRACTION`` at random so that clients spread out.
    """
    if retry_after is not None:
        return retry_after
    base = min(initial * (2**attempt), maximum)
    return base * (1.0 - JITTER_FRACTION * jitter())


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def should_retry(
    attempt: int,
    max_retries: int,
    *,
    status: int | None = None,
    connection_error: bool = False,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> bool:
    """Whether to try again after attempt ``attempt`` (0-based) failed.

    Retries connection errors and timeouts, 408, 429 and 5xx; ``x-should-retry: true|false`` from
    the server overrides the status; never when ``Retry-After`` asks for more than
    ``MAX_RETRY_AFTER`` seconds, nor beyond ``max_retries``.
    """
    if attempt >= max_retries:
        return False
    if retry_after is not None and retry_after > MAX_RETRY_AFTER:
        return False
    if connection_error:
        return True
    if status is None:
        return False
    hint = (headers or {}).get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return is_retryable_status(status)
