"""What every A1111 selectable script is made of here.

A script never runs anything itself: ``expand`` turns one A1111 request (its wire body and its
positional ``script_args``) into a ``Plan``, a list of ``GenerationRequest``s built through the same
translation the plain route uses, plus an ``assemble`` step that turns the finished jobs' images
into the response A1111 would give (grids, legends, infotexts). Everything is checked while
expanding, so a refused script leaves no job behind.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import format_value, quote
from sdgate.core.requests import GenerationRequest, PostprocessRequest
from sdgate.core.results import GenerationResult
from sdgate.server.dialects.a1111.protocol import Img2ImgRequest, Txt2ImgRequest
from sdgate.settings import Settings

if TYPE_CHECKING:
    from sdgate.server.services import Services

Body = Txt2ImgRequest | Img2ImgRequest
# The route's translation: an A1111 body (and, for img2img, stored init image ids; None: the
# request's own) -> the GenerationRequest the plain route would submit. Raises as the route would.
Builder = Callable[..., GenerationRequest]


@dataclass(frozen=True)
class ArgSpec:
    """One UI control of the script, as ``/script-info`` lists it; ``value`` is the default that a
    missing positional argument takes (A1111 fills ``script_args`` from the UI's defaults)."""

    label: str | None
    value: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: list[str] | None = None

    def info(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "choices": self.choices,
        }


@dataclass
class ScriptContext:
    body: Body  # after the infotext field was applied
    is_img2img: bool
    settings: Settings
    services: Services
    build: Builder
    init_images: tuple[str, ...] = ()  # img2img: the stored init images' ids
    # Runs A1111's extras on a worker and returns the pictures' PNGs (set by the runner; a script's
    # ``expand`` runs in a thread and may block on it). The API process never loads an upscaler.
    postprocess: Callable[[PostprocessRequest], list[bytes]] | None = None


@dataclass
class JobOutput:
    """One finished job of a plan: what it ran, what it made, its PNGs (with their infotexts)."""

    request: GenerationRequest
    result: GenerationResult
    pngs: list[bytes]

    def pictures(self) -> list[Image.Image]:
        return [Image.open(io.BytesIO(data)).convert("RGB") for data in self.pngs]

    def first_picture(self) -> Image.Image:
        """The job's first image, or a black one of its size when it made none (interrupted):
        A1111's X/Y/Z plot fills a failed cell so."""
        pictures = self.pictures()[:1]
        if pictures:
            return pictures[0]
        return Image.new("RGB", (self.request.width or 512, self.request.height or 512))

    @property
    def infotexts(self) -> list[str]:
        return self.result.infotexts


@dataclass
class ScriptOutput:
    """The response's ``images`` (PNG bytes, in order) and what ``info`` says differently from a
    plain job: its ``infotexts``, ``index_of_first_image`` and any other key (e.g. ``prompt``)."""

    images: list[bytes]
    infotexts: list[str]
    index_of_first_image: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    requests: list[GenerationRequest]
    assemble: Callable[[list[JobOutput]], ScriptOutput]


class Script(Protocol):
    title: str  # A1111's title(); the API name is its lowercase form
    img2img_only: bool

    def args(self, is_img2img: bool) -> list[ArgSpec]: ...

    def expand(self, ctx: ScriptContext, args: list[Any]) -> Plan: ...


def script_error(script: Script, message: str) -> InvalidRequest:
    return InvalidRequest(f"script_args: {message} (script_name {script.title!r})", field="script_args")


def fill_args(script: Script, is_img2img: bool, given: Sequence[Any]) -> list[Any]:
    """The UI defaults, overwritten position by position by what the request sent (A1111's
    ``init_script_args``); extra trailing values are ignored."""
    specs = script.args(is_img2img)
    values = [spec.value for spec in specs]
    values[: min(len(given), len(values))] = list(given)[: len(values)]
    return values


def as_bool(script: Script, value: Any, label: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise script_error(script, f"{label}: must be true or false, got {value!r}")


def as_number(script: Script, value: Any, label: str, *, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise script_error(script, f"{label}: must be a number, got {value!r}") from None
    if not lo <= number <= hi:
        raise script_error(script, f"{label}: must be between {format_value(lo)} and {format_value(hi)}")
    return number


def as_text(script: Script, value: Any, label: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise script_error(script, f"{label}: must be a string, got {value!r}")


def check_total(script: Script, images: int, settings: Settings) -> None:
    """The bound on one script request: all its jobs' images together."""
    limit = settings.max_script_images
    if images > limit:
        raise script_error(
            script, f"this would make {images} images; at most {limit} per request (max_script_images)"
        )


def with_params(infotext: str, extra: dict[str, object]) -> str:
    """``infotext`` with ``extra`` parameters added where A1111 puts a script's
    ``extra_generation_params``: after the others, before ``Version``."""
    if not extra:
        return infotext
    added = ", ".join(f"{key}: {quote(format_value(value))}" for key, value in extra.items())
    head, sep, params = infotext.rpartition("\n")
    if not sep:
        head, params = "", infotext
    at = params.find(", Version: ")
    if at >= 0:
        added = f"{added}{params[at:]}"
        params = params[:at]
    params = f"{params}, {added}" if params else added
    return f"{head}\n{params}" if sep else params
