"""The content filter's check of a request's text, before a job exists (see ``admission.py``).

The operator's blocklist (``settings.content_blocklist``, format in ``core/blocklist.py``) is loaded
once, when the server's services are built (``attach``): a file that does not load stops the server
with one line naming the file and line. Every prompt that reaches the engine as text to draw is
checked: ``prompt`` (A1111's styles are already merged into it by then, and each job a script
submits is checked on its own) and the hires pass's ``hires.prompt``. Negative prompts are not:
they name what the image must not show, so a blocked word there ("nsfw") is how callers keep
images safe. A refusal is ``ContentFiltered`` naming the field, never the entry that matched.

Images are checked after generation by the safety checker the engine is wrapped with
(``engine/safety.py``).
"""

from __future__ import annotations

import logging

from sdgate.core.blocklist import Blocklist, BlocklistError, load_blocklist
from sdgate.core.engine import Engine
from sdgate.core.errors import ContentFiltered
from sdgate.core.requests import GenerationRequest, GraphRequest, PostprocessRequest
from sdgate.core.results import GenerationResult
from sdgate.logs import context_var
from sdgate.server.services import Services
from sdgate.settings import Settings

log = logging.getLogger("sdgate.content")


def attach(services: Services) -> None:
    """Loads the blocklist ``services.settings`` names (``BlocklistError`` when it cannot)."""
    services.state.put(_load(services))


def check_request(
    services: Services, request: GenerationRequest | PostprocessRequest | GraphRequest
) -> None:
    """Raises ``ContentFiltered`` naming the field whose text the operator's blocklist refuses."""
    if isinstance(request, PostprocessRequest):
        return  # extras carry no prompt
    blocklist = services.state.setdefault(Blocklist, lambda: _load(services))
    if blocklist.empty:
        return
    for field, text in prompts(request):
        if blocklist.blocks(text):
            dialect = context_var("dialect").get() or "unknown"
            services.metrics.content_filtered.labels("prompt", dialect).inc()
            log.info("content filter: %s refused (%s)", field, dialect)
            raise ContentFiltered(
                f"{field}: this prompt is not allowed by the server's content policy", field=field
            )


def prompts(request: GenerationRequest | GraphRequest) -> list[tuple[str, str]]:
    """``(field, text)`` of each prompt the blocklist checks; in a graph (ComfyUI), every text
    input of a text-encoding node, named ``prompt.<node id>.<input>``."""
    if isinstance(request, GraphRequest):
        return _graph_texts(request)
    found = [("prompt", request.prompt)]
    if request.hires is not None and request.hires.prompt:
        found.append(("hires.prompt", request.hires.prompt))
    return found


def _graph_texts(request: GraphRequest) -> list[tuple[str, str]]:
    found = []
    for node_id, node in request.graph.items():
        if not isinstance(node, dict) or "TextEncode" not in str(node.get("class_type", "")):
            continue
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, str):
                found.append((f"prompt.{node_id}.{name}", value))
    return found


def _load(services: Services) -> Blocklist:
    path = services.settings.content_blocklist
    if path is None:
        return Blocklist()
    blocklist = load_blocklist(path)
    log.info("content filter: blocklist %s loaded", path)
    return blocklist


def with_safety_checker(services: Services, engine: Engine) -> Engine:
    """``engine`` with the image safety checker the settings ask for (``engine/safety.py``), which
    counts what it filters by the dialect of the job (the worker's log context)."""
    from sdgate.engine.safety import checked_engine

    def count(images: int) -> None:
        dialect = context_var("dialect").get() or "unknown"
        services.metrics.content_filtered.labels("image", dialect).inc(images)

    return checked_engine(engine, services.settings, on_filtered=count)


def refuse_filtered(result: GenerationResult | None) -> None:
    """For dialects whose service refuses the request rather than answer a blanked image (OpenAI,
    Hugging Face): ``ContentFiltered`` when the safety checker replaced any image of ``result``."""
    if result is not None and result.filtered:
        count = len(result.filtered)
        raise ContentFiltered(
            f"{count} of {len(result.images)} generated image(s) were refused by the server's content "
            "policy (safety checker)"
        )


def startup_problem(settings: Settings) -> str | None:
    """Why the content filter would stop a server with ``settings`` from starting, as one line (a
    blocklist that does not load, ``--safety-checker on`` without its files), or None. Torch-free:
    for the CLI to answer before serving, as ``Services.build`` would refuse the same."""
    if settings.content_blocklist is not None:
        try:
            load_blocklist(settings.content_blocklist)
        except BlocklistError as exc:
            return f"--content-blocklist: {exc}"
    if settings.workers > 0:  # the checker runs where the workers do
        from sdgate.engine.safety import safety_checker_problem

        return safety_checker_problem(settings)
    return None
