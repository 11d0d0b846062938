"""What a request passes before it becomes a job, beyond the checks of its fields: the content
filter on its prompts and the caller's quotas. ``jobflow.submit`` runs ``admit`` in the thread
that submits, around ``JobStore.submit``:

    with admit(services, principal, request) as reservation:
        job = store.submit(..., reservation=reservation)

``admit`` raises ``ContentFiltered`` (a blocked prompt) or ``QuotaExceeded`` (429 with
``Retry-After``: until the next UTC day) before anything is written; what it reserved (images of
the day) is given back when the block raises, so a refused request leaves nothing behind. The
block gets the ``Reservation`` (None: nothing reserved) to record with the job: the store gives back
the images the job does not make when it ends (failed, cancelled, interrupted). The
quotas live in the job database (``jobs/quotas.py``), so they hold across API nodes. The request
rate is not checked here but on every call (``server/ratelimit.py``).

Every refusal by a per-principal limit is counted in ``sdgate_refusals_total{reason}``
(``count_refusal``): the store's ``TooManyJobs`` (its jobs held at once) and ``QuotaExceeded`` here,
``RateLimited`` in the rate limiter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sdgate.core.errors import QueueFull, QuotaExceeded, TooManyJobs
from sdgate.core.jobs import Reservation
from sdgate.core.requests import GenerationRequest, GraphRequest, PostprocessRequest
from sdgate.jobs.quotas import DailyUsage, Quotas, principal_key, seconds_to_next_day, utc_day
from sdgate.metrics import REFUSAL_REASONS
from sdgate.server import content
from sdgate.server.auth import Limits, Principal
from sdgate.server.services import Services

log = logging.getLogger("sdgate.server")


@contextmanager
def admit(
    services: Services, principal: Principal, request: GenerationRequest | PostprocessRequest | GraphRequest
) -> Iterator[Reservation | None]:
    content.check_request(services, request)
    try:
        release, reservation = reserve(services, principal, request.image_count)
        try:
            yield reservation
        except BaseException:
            release()
            raise
    except (QuotaExceeded, TooManyJobs) as exc:
        count_refusal(services, exc)
        raise


def quotas_of(services: Services) -> Quotas:
    """The server's ``Quotas`` over its job database (a test may put one with a fake clock)."""
    return services.state.setdefault(Quotas, lambda: Quotas(services.database))


def count_refusal(services: Services, err: QueueFull) -> None:
    if err.code in REFUSAL_REASONS:
        services.metrics.refusals.labels(err.code).inc()


def reserve(services: Services, principal: Principal, images: int
            ) -> tuple[Callable[[], None], Reservation | None]:
    """Checks ``principal``'s GPU seconds of the day and reserves ``images`` of its images of the
    day: the function that gives them back, and what was reserved (None: nothing, no limit).
    ``QuotaExceeded`` naming the limit when either is spent."""
    limits = principal.limits
    if limits.images_per_day is None and limits.gpu_seconds_per_day is None:
        return _nothing, None
    quotas = quotas_of(services)
    now = quotas.now()
    day, key = utc_day(now), principal_key(principal.id)
    until_tomorrow = seconds_to_next_day(now)
    if limits.gpu_seconds_per_day is not None:
        used = quotas.gpu_seconds_used(key, day)
        if used >= limits.gpu_seconds_per_day:
            raise QuotaExceeded(
                f"GPU seconds per day: {used:g} of {limits.gpu_seconds_per_day:g} used today (UTC); "
                f"the quota starts over in {_duration(until_tomorrow)}",
                retry_after=math.ceil(until_tomorrow),
            )
    limit = limits.images_per_day
    if limit is None or images <= 0:
        return _nothing, None
    if images > limit:  # no day will take it: say so rather than "try tomorrow"
        raise QuotaExceeded(f"images per day: this request makes {images}, more than the limit of {limit} "
                            "a day; ask for fewer", retry_after=math.ceil(until_tomorrow))
    if not quotas.reserve_images(key, images, limit=limit, day=day):
        used_images = quotas.usage(key, day).images
        raise QuotaExceeded(
            f"images per day: {used_images} of {limit} used today (UTC), this request makes {images}; "
            f"the quota starts over in {_duration(until_tomorrow)}",
            retry_after=math.ceil(until_tomorrow),
        )

    def release() -> None:
        try:
            quotas.release_images(key, images, day=day)
        except Exception:  # the refusal being answered matters more than the refund
            log.warning("could not give back %d image(s) of %s's quota for %s", images, key, day,
                        exc_info=True)

    return release, Reservation(images, day)


def _nothing() -> None:
    return None


def _duration(seconds: float) -> str:
    hours, rest = divmod(math.ceil(seconds), 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


# -- what a principal has left -----------------------------------------------------------------


@dataclass(frozen=True)
class UsageReport:
    """A principal's quotas today (UTC), as of ``now``: its limits, what it used, and what is left
    (``None``: no such limit)."""

    now: datetime
    limits: Limits
    used: DailyUsage

    @property
    def day(self) -> str:
        return utc_day(self.now)

    @property
    def resets_at(self) -> datetime:
        """When the day's quotas start over: the next UTC midnight."""
        return self.now + timedelta(seconds=seconds_to_next_day(self.now))

    @property
    def images_left(self) -> int | None:
        limit = self.limits.images_per_day
        return None if limit is None else max(0, limit - self.used.images)

    @property
    def gpu_seconds_left(self) -> float | None:
        limit = self.limits.gpu_seconds_per_day
        return None if limit is None else max(0.0, limit - self.used.gpu_seconds)


def usage_report(services: Services, principal: Principal) -> UsageReport:
    """``principal``'s quotas today, read from the job database (sync: run it in a thread)."""
    quotas = quotas_of(services)
    now = quotas.now()
    used = quotas.usage(principal_key(principal.id), utc_day(now))
    return UsageReport(now=now, limits=principal.limits, used=used)
