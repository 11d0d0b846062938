"""Dependencies as ``Annotated`` aliases, so route signatures read as prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sdgate.core.images import ImageLimits
from sdgate.server.middleware import current_user
from sdgate.server.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_user(request: Request) -> str | None:
    return current_user(request)


ServicesDep = Annotated[Services, Depends(get_services)]
UserDep = Annotated[str | None, Depends(get_user)]


def image_limits(services: Services) -> ImageLimits:
    settings = services.settings
    return ImageLimits(max_bytes=settings.max_body_bytes, max_pixels=settings.max_pixels * 4)
