"""Dependencies as ``Annotated`` aliases, so route signatures read as prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sdgate.core.images import ImageLimits
from sdgate.server.auth import Principal, current_principal
from sdgate.server.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_principal(request: Request) -> Principal:
    return current_principal(request.scope)


ServicesDep = Annotated[Services, Depends(get_services)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def image_limits(services: Services) -> ImageLimits:
    settings = services.settings
    return ImageLimits(max_bytes=settings.max_body_bytes, max_pixels=settings.max_pixels * 4)
