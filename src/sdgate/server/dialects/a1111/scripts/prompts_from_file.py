"""A1111's "Prompts from file or textbox" (``scripts/prompts_from_file.py``): one job per
non-empty line. A line holding ``--`` is read as command-line style arguments
(``--prompt "a cat" --steps 10 --negative_prompt ugly``); a line that does not parse so is taken as
a plain prompt, as A1111 does.

``script_args`` (v1.10.1): checkbox_iterate, checkbox_iterate_batch, prompt_position
("start"/"end"), prompt_txt. Images come back in line order, no grid.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from typing import Any

from sdgate.server.dialects.a1111.scripts.base import (
    ArgSpec,
    JobOutput,
    Plan,
    ScriptContext,
    ScriptOutput,
    as_bool,
    as_text,
    check_total,
    script_error,
)
from sdgate.server.validation import resolve_seed

log = logging.getLogger("sdgate.a1111")
MAX_TEXT = 1_000_000  # characters of prompt_txt


def _bool(text: str) -> bool:
    return text == "true"


def _styles(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


_IGNORED = (
    "outpath_samples",
    "outpath_grids",
    "prompt_for_display",
    "do_not_save_samples",
    "do_not_save_grid",
    "sampler_index",
)
# A1111's prompt_tags: the options a line may set, and how each value is read.
TAGS: dict[str, Callable[[str], Any]] = {
    "sd_model": str,
    "outpath_samples": str,
    "outpath_grids": str,
    "prompt_for_display": str,
    "prompt": str,
    "negative_prompt": str,
    "styles": _styles,
    "seed": int,
    "subseed_strength": float,
    "subseed": int,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_index": int,
    "sampler_name": str,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "restore_faces": _bool,
    "tiling": _bool,
    "do_not_save_samples": _bool,
    "do_not_save_grid": _bool,
}


def cmdargs(line: str) -> dict[str, Any]:
    """A1111's parser: ``--tag value`` pairs; ``--prompt`` and ``--negative_prompt`` take every word
    up to the next ``--tag``. Raises ValueError on anything else."""
    args = shlex.split(line)
    pos, found = 0, {}
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            words = [args[pos]]
            pos += 1
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            found[tag] = " ".join(words)
            continue
        reader = TAGS.get(tag)
        if reader is None:
            raise ValueError(f"unknown commandline option: {arg}")
        found[tag] = reader(args[pos + 1])
        pos += 2
    return found


def parse_line(line: str) -> dict[str, Any]:
    if "--" not in line:
        return {"prompt": line}
    try:
        return cmdargs(line)
    except ValueError as exc:
        log.info(
            "prompts from file: line %r is not command-line style (%s); using it as the prompt", line, exc
        )
        return {"prompt": line}


def _with_line(base: Any, line: dict[str, Any], position: str) -> Any:
    """The request for one line: its options over the request's; its prompts joined to the
    request's at ``position`` when both have one."""
    update: dict[str, Any] = {}
    for key, value in line.items():
        if key in _IGNORED:
            continue
        if key == "sd_model":
            update["override_settings"] = {**(base.override_settings or {}), "sd_model_checkpoint": value}
        else:
            update[key] = value
    for key in ("prompt", "negative_prompt"):
        mine, theirs = line.get(key), getattr(base, key)
        if mine and theirs:
            update[key] = f"{mine} {theirs}" if position == "start" else f"{theirs} {mine}"
    return base.model_copy(update=update)


class PromptsFromFile:
    title = "Prompts from file or textbox"
    img2img_only = False

    def args(self, is_img2img: bool) -> list[ArgSpec]:
        return [
            ArgSpec("Iterate seed every line", False),
            ArgSpec("Use same random seed for all lines", False),
            ArgSpec("Insert prompts at the", "start", choices=["start", "end"]),
            ArgSpec("List of prompt inputs", ""),
        ]

    def expand(self, ctx: ScriptContext, args: list[Any]) -> Plan:
        iterate = as_bool(self, args[0], "Iterate seed every line")
        same_seed = as_bool(self, args[1], "Use same random seed for all lines")
        position = args[2]
        if position not in ("start", "end"):
            raise script_error(self, f"Insert prompts at the: must be 'start' or 'end', got {position!r}")
        text = as_text(self, args[3], "List of prompt inputs")
        if len(text) > MAX_TEXT:
            raise script_error(self, f"List of prompt inputs: at most {MAX_TEXT} characters")
        lines = [stripped for stripped in (raw.strip() for raw in text.splitlines()) if stripped]
        if not lines:
            raise script_error(self, "List of prompt inputs: no prompt lines given")
        check_total(self, len(lines), ctx.settings)
        parsed = [parse_line(line) for line in lines]
        base = ctx.body
        per_image = base.batch_size * base.n_iter
        counts = [
            int(p.get("batch_size", base.batch_size)) * int(p.get("n_iter", base.n_iter)) for p in parsed
        ]
        check_total(self, sum(max(1, c) for c in counts), ctx.settings)
        if iterate or same_seed:  # A1111 fixes the seed once, then (iterate) moves it on per line
            base = base.model_copy(update={"seed": resolve_seed(base.seed, field="seed")})
        requests = []
        for line in parsed:
            requests.append(ctx.build(_with_line(base, line, position)))
            if iterate:
                base = base.model_copy(update={"seed": int(base.seed) + per_image})  # type: ignore[arg-type]

        def assemble(outputs: list[JobOutput]) -> ScriptOutput:
            images = [data for out in outputs for data in out.pngs]
            infotexts = [t for out in outputs for t in out.infotexts]
            return ScriptOutput(images, infotexts, info={"prompt": ctx.body.prompt})

        return Plan(requests, assemble)
