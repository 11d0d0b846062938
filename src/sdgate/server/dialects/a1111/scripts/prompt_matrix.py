"""A1111's "Prompt matrix" (``scripts/prompt_matrix.py``): ``a | b | c`` makes one image per
combination of the optional parts ``b``, ``c`` (2**2 here), one job each, and a grid whose legends
show which parts each row and column holds.

``script_args`` (v1.10.1): put_at_start, different_seeds, prompt_type ("positive"/"negative"),
variations_delimiter ("comma"/"space"), margin_size. The response is the grid then every image;
``info.infotexts`` starts with the grid's (the first image's).
"""

from __future__ import annotations

from typing import Any

from sdgate.core.grid import image_grid
from sdgate.core.grid_annotations import draw_grid_annotations, prompt_matrix_annotations
from sdgate.core.images import encode_png
from sdgate.server.dialects.a1111.scripts.base import (
    ArgSpec,
    JobOutput,
    Plan,
    ScriptContext,
    ScriptOutput,
    as_bool,
    as_number,
    check_total,
    script_error,
)
from sdgate.server.validation import resolve_seed


def combinations(prompt: str, *, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(parts, one prompt per combination), combination ``n`` holding part ``i + 1`` when bit ``i``
    of ``n`` is set: A1111's order, which its grid layout relies on."""
    parts = prompt.split("|")
    prompts = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for n, text in enumerate(parts[1:]) if number & (1 << n)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(chosen))
    return parts, prompts


class PromptMatrix:
    title = "Prompt matrix"
    img2img_only = False

    def args(self, is_img2img: bool) -> list[ArgSpec]:
        return [
            ArgSpec("Set at prompt start", False),
            ArgSpec("Random seeds", False),
            ArgSpec("Prompt type", "positive", choices=["positive", "negative"]),
            ArgSpec("Joining char", "comma", choices=["comma", "space"]),
            ArgSpec("Grid margins", 0, 0, 500, 2),
        ]

    def expand(self, ctx: ScriptContext, args: list[Any]) -> Plan:
        put_at_start = as_bool(self, args[0], "Set at prompt start")
        different_seeds = as_bool(self, args[1], "Random seeds")
        prompt_type, joining = args[2], args[3]
        if prompt_type not in ("positive", "negative"):
            raise script_error(self, f"Prompt type: must be 'positive' or 'negative', got {prompt_type!r}")
        if joining not in ("comma", "space"):
            raise script_error(self, f"Joining char: must be 'comma' or 'space', got {joining!r}")
        margin = int(as_number(self, args[4], "Grid margins", lo=0, hi=500))
        body = ctx.body
        source = body.prompt if prompt_type == "positive" else body.negative_prompt
        optional = source.count("|")
        if optional > 20:  # 2**20 combinations: refuse before counting them
            raise script_error(self, f"{optional} optional prompt parts is too many")
        check_total(self, 2**optional, ctx.settings)
        parts, prompts = combinations(
            source, put_at_start=put_at_start, delimiter=", " if joining == "comma" else " "
        )
        seed = resolve_seed(body.seed, field="seed")
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        base = body.model_copy(
            update={"batch_size": 1, "n_iter": 1, "subseed": resolve_seed(body.subseed, field="subseed")}
        )
        requests = [
            ctx.build(base.model_copy(update={field: text, "seed": seed + (i if different_seeds else 0)}))
            for i, text in enumerate(prompts)
        ]

        def assemble(outputs: list[JobOutput]) -> ScriptOutput:
            pictures = [out.first_picture() for out in outputs]
            grid = image_grid(pictures, rows=1 << ((len(parts) - 1) // 2))
            hor, ver = prompt_matrix_annotations(parts)
            grid = draw_grid_annotations(grid, pictures[0].width, pictures[0].height, hor, ver, margin)
            infos = [text for out in outputs for text in out.infotexts]
            grid_info = infos[0] if infos else ""
            images = [encode_png(grid, grid_info), *(data for out in outputs for data in out.pngs)]
            return ScriptOutput(images, [grid_info, *infos], index_of_first_image=1)

        return Plan(requests, assemble)
