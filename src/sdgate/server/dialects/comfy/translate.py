"""Pure translation between sdgate's jobs and ComfyUI's shapes: queue items, history entries, the
names of output files, WebSocket messages and binary preview frames.

Output files are named so that ``/view`` finds them without a table:
``<prefix>_<n:05>_<job id>_.png``, where ``n`` is the image's place in the job's result (1-based)
and a prefix with ``/`` puts the file in that subfolder, as ComfyUI's SaveImage does. ``/view``
reads the job id and the place back (``parse_output_name``) and checks the job is the caller's.
"""

from __future__ import annotations

import json
import re
import struct
from datetime import datetime
from typing import Any

from sdgate.core.errors import SdgateError
from sdgate.core.jobs import Job, JobState
from sdgate.core.requests import GraphRequest
from sdgate.server.dialects.comfy.protocol import SECRET_EXTRA_KEYS

PREVIEW_IMAGE = 1  # binary event: 4-byte image format (1 JPEG, 2 PNG), then the image
PREVIEW_IMAGE_WITH_METADATA = 4  # 4-byte length of a JSON object, the JSON, then the image
JPEG = 1
_OUTPUT_NAME = re.compile(r"(?P<prefix>.*)_(?P<n>\d{5})_(?P<job>job_[0-9A-Za-z]{1,40})_\.png")
_SAFE_PREFIX = re.compile(r"[^\w\-. ]+")
# The note a graph job's result carries naming the nodes served from the executor's cache
# (``engine.comfy.executor.CACHED_NOTE_PREFIX``; the server does not import the engine).
CACHED_NOTE_PREFIX = "comfy.cached_nodes: "


def clean_extra_data(extra: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    """``extra_data`` as a prompt keeps it: without ComfyUI's cloud tokens, with ``client_id``."""
    kept = {k: v for k, v in extra.items() if k not in SECRET_EXTRA_KEYS}
    if client_id:
        kept["client_id"] = client_id
    return kept


def timestamp(at: datetime | None) -> int:
    return int(at.timestamp() * 1000) if at is not None else 0


# -- output files --------------------------------------------------------------------------------


def split_prefix(prefix: str) -> tuple[str, str]:
    """(subfolder, file name prefix) of a SaveImage ``filename_prefix``: ``a/b/pic`` -> ("a/b",
    "pic"); parts that would leave the output folder (``..``, empty) are dropped."""
    parts = [p for p in prefix.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    parts = [_SAFE_PREFIX.sub("_", p)[:64] for p in parts]
    if not parts:
        return "", "ComfyUI"
    return "/".join(parts[:-1]), parts[-1]


def output_name(prefix: str, index: int, job_id: str) -> tuple[str, str]:
    """(subfolder, file name) of image ``index`` (0-based, in the job's result) of a node."""
    subfolder, base = split_prefix(prefix)
    return subfolder, f"{base}_{index + 1:05}_{job_id}_.png"


def parse_output_name(filename: str) -> tuple[str, int] | None:
    """(job id, 0-based image index) named by an output file name, or None."""
    found = _OUTPUT_NAME.fullmatch(filename)
    if found is None or int(found["n"]) < 1:
        return None
    return found["job"], int(found["n"]) - 1


def graph_of(job: Job) -> GraphRequest | None:
    return job.request if isinstance(job.request, GraphRequest) else None


def node_outputs(job: Job) -> dict[str, dict[str, Any]]:
    """The history's ``outputs``: each output node's images as ``{filename, subfolder, type}``. A
    result without per-node outputs gives all its images to the first output node."""
    request, result = graph_of(job), job.result
    if request is None or result is None or not result.images:
        return {}
    found = {node: (list(out.images), out.kind, out.filename_prefix)
             for node, out in result.node_outputs.items()}
    if not found and request.outputs:
        node = request.outputs[0]
        inputs = (request.graph.get(node) or {}).get("inputs") or {}
        given = inputs.get("filename_prefix")
        prefix = given if isinstance(given, str) else "ComfyUI"
        found = {node: (list(range(len(result.images))), "output", prefix)}
    outputs: dict[str, dict[str, Any]] = {}
    for node, (indices, kind, prefix) in found.items():
        images = []
        for index in indices:
            if 0 <= index < len(result.images):
                subfolder, filename = output_name(prefix, index, job.id)
                images.append({"filename": filename, "subfolder": subfolder, "type": kind})
        outputs[node] = {"images": images}
    return outputs


def class_of(request: GraphRequest, node: str | None) -> str:
    found = request.graph.get(node or "") if node else None
    return str(found.get("class_type", "")) if isinstance(found, dict) else ""


# -- queue and history -----------------------------------------------------------------------------


def queue_item(job: Job, prompt_id: str) -> list[Any]:
    """``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""
    request = graph_of(job)
    if request is None:
        return [0, prompt_id, {}, {}, []]
    number: float | int = int(request.number) if float(request.number).is_integer() else request.number
    return [number, prompt_id, request.graph, request.extra_data, list(request.outputs)]


def cached_nodes(job: Job) -> list[str]:
    """The node ids the executor served from its cache (``execution_cached``); [] if it says none."""
    for note in job.result.notes if job.result is not None else ():
        if note.startswith(CACHED_NOTE_PREFIX):
            try:
                found = json.loads(note[len(CACHED_NOTE_PREFIX):])
            except ValueError:
                return []
            return [str(n) for n in found] if isinstance(found, list) else []
    return []


def status_messages(job: Job, prompt_id: str) -> list[list[Any]]:
    started = {"prompt_id": prompt_id, "timestamp": timestamp(job.started_at or job.created_at)}
    messages: list[list[Any]] = [["execution_start", started],
                                 ["execution_cached", {"nodes": cached_nodes(job), **started}]]
    ended = timestamp(job.finished_at)
    if job.state is JobState.SUCCEEDED:
        messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": ended}])
    elif job.state is JobState.FAILED:
        messages.append(["execution_error", execution_error(job, prompt_id)])
    elif job.state is JobState.CANCELLED:
        messages.append(["execution_interrupted", execution_interrupted(job, prompt_id)])
    return messages


def history_entry(job: Job, prompt_id: str) -> dict[str, Any]:
    outputs = node_outputs(job)
    request = graph_of(job)
    meta = {
        node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
        for node in outputs
    }
    succeeded = job.state is JobState.SUCCEEDED
    return {
        "prompt": queue_item(job, prompt_id),
        "outputs": outputs,
        "status": {
            "status_str": "success" if succeeded else "error",
            "completed": succeeded,
            "messages": status_messages(job, prompt_id),
        },
        "meta": meta if request is not None else {},
    }


# -- WebSocket messages ------------------------------------------------------------------------------


def message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data}


def status_message(queue_remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": queue_remaining}}}
    if sid is not None:
        data["sid"] = sid
    return message("status", data)


def executing(node: str | None, prompt_id: str) -> dict[str, Any]:
    return message("executing", {"node": node, "display_node": node, "prompt_id": prompt_id})


def execution_error(job: Job, prompt_id: str) -> dict[str, Any]:
    request = graph_of(job)
    node = job.progress.node if job.progress is not None else None
    error = job.error or {}
    return {
        "prompt_id": prompt_id,
        "node_id": node,
        "node_type": class_of(request, node) if request is not None else "",
        "executed": [],
        "exception_message": str(error.get("message", "the prompt failed")),
        "exception_type": str(error.get("code", "error")),
        "traceback": [],
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": timestamp(job.finished_at),
    }


def execution_interrupted(job: Job, prompt_id: str) -> dict[str, Any]:
    request = graph_of(job)
    node = job.progress.node if job.progress is not None else None
    return {
        "prompt_id": prompt_id,
        "node_id": node,
        "node_type": class_of(request, node) if request is not None else "",
        "executed": [],
        "timestamp": timestamp(job.finished_at),
    }


def executed(node: str, output: dict[str, Any], prompt_id: str) -> dict[str, Any]:
    return message("executed", {"node": node, "display_node": node, "output": output, "prompt_id": prompt_id})


def preview_frame(jpeg: bytes, *, metadata: dict[str, Any] | None = None) -> bytes:
    """A binary preview frame: type 1 (JPEG), or type 4 with ``metadata`` for clients that
    announced ``supports_preview_metadata``."""
    if metadata is None:
        return struct.pack(">II", PREVIEW_IMAGE, JPEG) + jpeg
    blob = json.dumps(metadata, separators=(",", ":")).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(blob)) + blob + jpeg


def preview_metadata(node: str | None, prompt_id: str) -> dict[str, Any]:
    return {"node_id": node, "prompt_id": prompt_id, "display_node_id": node, "parent_node_id": None,
            "real_node_id": node, "image_type": "image/jpeg"}


# -- errors ------------------------------------------------------------------------------------------


def error_body(err: SdgateError) -> dict[str, Any]:
    """ComfyUI's ``/prompt`` error shape for every refusal (its other routes answer a bare status;
    a body in this shape is what its clients already parse)."""
    extra = {"field": err.field} if getattr(err, "field", None) else {}
    return {"error": {"type": err.code, "message": err.message, "details": "", "extra_info": extra},
            "node_errors": {}}
