"""ComfyUI's wire shapes (``reference/other_apis.md`` §1): the bodies of ``POST /prompt``,
``/queue``, ``/history`` and ``/interrupt``, and its error body.

Bodies are read leniently, as ComfyUI's aiohttp handlers do (``/interrupt`` takes an empty or
non-JSON body); unknown fields are kept and logged once. What a value may be is bounded here: ids
are short printable strings, lists of ids are short, ``number`` is finite.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from sdgate.server.wire import Bool, Float, WireModel

MAX_ID = 64  # prompt ids and client ids: uuid4 strings and hex in practice
MAX_IDS = 1000  # ids in one delete
MAX_EXTRA_DATA_BYTES = 1 << 20
PromptId = Annotated[str, Field(min_length=1, max_length=MAX_ID, pattern=r"^[\x21-\x7e]+$")]
ClientId = Annotated[str, Field(max_length=MAX_ID, pattern=r"^[\x21-\x7e]*$")]
# Keys ComfyUI drops from extra_data before it keeps a prompt: its cloud tokens.
SECRET_EXTRA_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})
IMAGE_TYPES = ("output", "input", "temp")
MAX_HISTORY = 10_000
DEFAULT_HISTORY = 100  # /history without max_items (ComfyUI answers everything: unbounded)


class PromptRequest(WireModel):
    prompt: dict[str, Any] | None = None
    client_id: ClientId | None = None
    prompt_id: PromptId | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)
    number: Float | None = Field(None, ge=-1e15, le=1e15)
    front: Bool = False
    partial_execution_targets: Annotated[list[PromptId], Field(max_length=MAX_IDS)] | None = None


class ClearOrDelete(WireModel):
    """``POST /queue`` and ``POST /history``."""

    clear: Bool = False
    delete: Annotated[list[PromptId], Field(max_length=MAX_IDS)] | None = None


class InterruptRequest(WireModel):
    prompt_id: PromptId | None = None


class ComfyErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = Field(default_factory=dict)


class ComfyError(BaseModel):
    """``{"error": {type, message, details, extra_info}, "node_errors": {...}}``."""

    error: ComfyErrorDetail
    node_errors: dict[str, Any] = Field(default_factory=dict)
