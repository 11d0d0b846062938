"""The content filter's check of a request's text, before a job exists (see ``admission.py``)."""

from __future__ import annotations

from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.server.services import Services


def check_request(services: Services, request: GenerationRequest | PostprocessRequest) -> None:
    """Raises ``ContentFiltered`` naming the field whose text the operator's blocklist refuses."""
