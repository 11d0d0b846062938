"""The scripts sdgate runs, by A1111's names: its titles, matched case-insensitively."""

from __future__ import annotations

from typing import Any

from sdgate.core.errors import InvalidRequest
from sdgate.server.dialects.a1111.scripts.base import Script
from sdgate.server.dialects.a1111.scripts.prompt_matrix import PromptMatrix
from sdgate.server.dialects.a1111.scripts.prompts_from_file import PromptsFromFile
from sdgate.server.dialects.a1111.scripts.sd_upscale import SDUpscale
from sdgate.server.dialects.a1111.scripts.xyz_plot import XYZPlot

# In A1111's order (its scripts/ folder, by file name).
SCRIPTS: tuple[Script, ...] = (PromptMatrix(), PromptsFromFile(), SDUpscale(), XYZPlot())


class ScriptNotFound(InvalidRequest):
    """A1111's ``get_script``: an HTTPException 422 ``Script '<name>' not found``."""

    status_code = 422
    code = "script_not_found"


def available(is_img2img: bool) -> list[Script]:
    return [s for s in SCRIPTS if is_img2img or not s.img2img_only]


def find(name: str | None, *, is_img2img: bool) -> Script | None:
    """The script ``name`` means on this tab; None when no script is asked for."""
    if not name:
        return None
    for script in available(is_img2img):
        if script.title.lower() == name.lower():
            return script
    raise ScriptNotFound(f"Script '{name}' not found", field="script_name")


# The always-on scripts sdgate honours (``alwayson_scripts`` keys): the ControlNet extension's.
ALWAYSON = ("controlnet",)


def listing() -> dict[str, list[str]]:
    """``GET /scripts``: lowercase titles per tab, the always-on ones after (as A1111 lists them)."""
    return {
        "txt2img": [s.title.lower() for s in available(False)] + list(ALWAYSON),
        "img2img": [s.title.lower() for s in available(True)] + list(ALWAYSON),
    }


def script_info() -> list[dict[str, Any]]:
    """``GET /script-info``: each script once per tab it shows on, with its UI's controls."""
    return [
        {
            "name": script.title.lower(),
            "is_alwayson": False,
            "is_img2img": is_img2img,
            "args": [spec.info() for spec in script.args(is_img2img)],
        }
        for is_img2img in (False, True)
        for script in available(is_img2img)
    ] + [
        {"name": "controlnet", "is_alwayson": True, "is_img2img": is_img2img, "args": _CONTROLNET_ARGS}
        for is_img2img in (False, True)
    ]


# What the ControlNet script takes: one unit (an object with the extension's fields) per argument.
_CONTROLNET_ARGS = [
    {"label": "ControlNet Unit", "value": {
        "enabled": True, "module": "none", "model": "None", "weight": 1.0, "image": None, "mask": None,
        "resize_mode": "Crop and Resize", "processor_res": -1, "threshold_a": -1, "threshold_b": -1,
        "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False,
    }, "minimum": None, "maximum": None, "step": None, "choices": None},
]  # fmt: skip
