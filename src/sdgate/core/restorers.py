"""Face restorers: which files in the models folder are which restorer, and which one a request
runs. No torch here: the server lists and checks them; ``engine.restorers`` runs them.

A1111 keeps GFPGAN weights in ``GFPGAN/`` and CodeFormer's in ``Codeformer/``; ComfyUI keeps all of
them in ``facerestore_models/``, where the file name tells (``GFPGANv1.4.pth``, ``codeformer.pth``,
``RestoreFormer.pth``). A file whose name says nothing is taken for what its folder holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdgate.core.errors import InvalidRequest
from sdgate.core.models import AssetFile

RESTORERS = ("CodeFormer", "GFPGAN", "RestoreFormer")  # A1111's default (CodeFormer) first
NONE_INSTALLED = (
    "no face restorer is installed (put GFPGAN weights in the models folder's GFPGAN/, "
    "CodeFormer's in Codeformer/, or either in facerestore_models/)"
)


def restorer_name(file: AssetFile) -> str:
    """``CodeFormer``, ``GFPGAN`` or ``RestoreFormer``: by file name, else by folder."""
    for text in (file.name, file.path.parent.name):
        lowered = text.lower()
        for name in ("RestoreFormer", "CodeFormer", "GFPGAN"):  # "restoreformer" before "former"
            if name.lower() in lowered:
                return name
    return "GFPGAN"


def available(files: Sequence[AssetFile]) -> dict[str, AssetFile]:
    """Restorer name -> the file that runs it (the first one found), in A1111's order."""
    found: dict[str, AssetFile] = {}
    for file in files:
        found.setdefault(restorer_name(file), file)
    return {name: found[name] for name in RESTORERS if name in found}


def listing(files: Sequence[AssetFile]) -> list[dict[str, Any]]:
    """A1111's ``/face-restorers``: name and the folder its weights are in."""
    return [{"name": name, "cmd_dir": str(f.path.parent)} for name, f in available(files).items()]


def choose(files: Sequence[AssetFile], wanted: str | None, *, field: str) -> str:
    """The restorer a request runs: ``wanted`` (A1111's ``face_restoration_model``) when given,
    else the first installed one. A 400 naming ``field`` when there is none, or not that one."""
    found = available(files)
    if not found:
        raise InvalidRequest(f"{field}: {NONE_INSTALLED}", field=field)
    if wanted in (None, "", "None"):
        return next(iter(found))
    for name in found:
        if name.lower() == str(wanted).lower():
            return name
    raise InvalidRequest(
        f"{field}: face restorer {wanted!r} is not installed (installed: {', '.join(found)})", field=field
    )
