"""What a request passes before it becomes a job, beyond the checks of its fields: the content
filter on its prompts and the caller's quotas. ``jobflow.submit`` runs ``admit`` in the thread
that submits, around ``JobStore.submit``:

    with admit(services, principal, request):
        job = store.submit(...)

``admit`` raises ``ContentFiltered`` (a blocked prompt) or ``RateLimited`` / ``QuotaExceeded``
(429 with ``Retry-After``) before anything is written; what it reserved (images of the day) is
given back when the block raises, so a refused request leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.server import content
from sdgate.server.auth import Principal
from sdgate.server.services import Services


@contextmanager
def admit(
    services: Services, principal: Principal, request: GenerationRequest | PostprocessRequest
) -> Iterator[None]:
    content.check_request(services, request)
    yield
