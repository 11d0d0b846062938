"""A1111's selectable scripts over the API (``script_name`` + positional ``script_args``).

Each script expands one request into many jobs (``base.Plan``) and assembles their images into
A1111's response; ``registry`` names them, ``runner`` submits, waits and renders.
"""

from sdgate.server.dialects.a1111.scripts.registry import ScriptNotFound, find, listing, script_info
from sdgate.server.dialects.a1111.scripts.runner import run_script

__all__ = ["ScriptNotFound", "find", "listing", "run_script", "script_info"]
