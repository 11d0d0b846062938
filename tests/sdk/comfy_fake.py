"""A tiny ComfyUI on loopback (stdlib HTTP server in a thread) speaking ``other_apis.md`` §1:
``/object_info/CheckpointLoaderSimple``, ``/upload/image``, ``/prompt`` (with its 400 shape),
``/history/{id}``, ``/queue``, ``/view``. Each prompt finishes after ``polls`` history reads; a
negative prompt of "boom" makes it fail like a node exception."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.sdk.fakes import png_bytes

CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "other.safetensors"]
REQUIRED = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage"}


class FakeComfy:
    def __init__(self, polls: int = 2) -> None:
        self.polls = polls
        self.prompts: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.uploads: dict[str, bytes] = {}
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, data: Any) -> None:
                self._send(status, json.dumps(data).encode())

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                url = urlsplit(self.path)
                fake.paths.append(url.path)
                if url.path in (
                    "/object_info/CheckpointLoaderSimple",
                    "/api/object_info/CheckpointLoaderSimple",
                ):
                    self._json(
                        200,
                        {
                            "CheckpointLoaderSimple": {
                                "input": {"required": {"ckpt_name": [CHECKPOINTS, {"tooltip": "x"}]}}
                            }
                        },
                    )
                elif url.path.startswith("/history/"):
                    self._json(200, fake.history(url.path.removeprefix("/history/")))
                elif url.path == "/queue":
                    running = [
                        [0, pid, {}, {}, ["9"]] for pid in fake.prompts if fake.reads.get(pid, 0) < fake.polls
                    ]
                    self._json(200, {"queue_running": running[:1], "queue_pending": running[1:]})
                elif url.path == "/view":
                    q = parse_qs(url.query)
                    name = q["filename"][0]
                    if not name.startswith("sdgate_"):
                        self._send(404)
                    else:
                        self._send(200, png_bytes((0, 0, 255), infotext=None), "image/png")
                else:
                    self._send(404)

            def do_POST(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                fake.paths.append(url.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if url.path == "/prompt":
                    status, data = fake.submit(json.loads(body))
                    self._json(status, data)
                elif url.path == "/upload/image":
                    start = body.index(b"\x89PNG")
                    name = body.split(b'filename="')[1].split(b'"')[0].decode()
                    fake.uploads[name] = body[start:]
                    self._json(200, {"name": name, "subfolder": "", "type": "input"})
                else:
                    self._send(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def submit(self, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        graph = data.get("prompt")
        if not isinstance(graph, dict):
            return 400, {
                "error": {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "",
                    "extra_info": {},
                },
                "node_errors": {},
            }
        classes = {node.get("class_type") for node in graph.values()}
        missing = REQUIRED - classes
        if missing:
            return 400, {
                "error": {
                    "type": "prompt_no_outputs",
                    "message": "Prompt has no outputs",
                    "details": ", ".join(sorted(missing)),
                    "extra_info": {},
                },
                "node_errors": {},
            }
        for node_id, node in graph.items():
            for value in node["inputs"].values():
                if isinstance(value, list) and (len(value) != 2 or str(value[0]) not in graph):
                    return 400, {
                        "error": {
                            "type": "invalid_prompt",
                            "message": f"bad link in node {node_id}",
                            "details": "",
                            "extra_info": {},
                        },
                        "node_errors": {},
                    }
        if graph["4"]["inputs"]["ckpt_name"] not in CHECKPOINTS:
            return 400, {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "ckpt_name not in list",
                    "extra_info": {},
                },
                "node_errors": {},
            }
        prompt_id = str(uuid.uuid4())
        self.prompts[prompt_id] = data
        return 200, {"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}}

    def history(self, prompt_id: str) -> dict[str, Any]:
        self.reads[prompt_id] = self.reads.get(prompt_id, 0) + 1
        if prompt_id not in self.prompts or self.reads[prompt_id] <= self.polls:
            return {}
        graph = self.prompts[prompt_id]["prompt"]
        if graph["7"]["inputs"]["text"] == "boom":
            return {
                prompt_id: {
                    "prompt": [],
                    "outputs": {},
                    "status": {
                        "status_str": "error",
                        "completed": False,
                        "messages": [
                            ["execution_start", {}],
                            [
                                "execution_error",
                                {"exception_type": "RuntimeError", "exception_message": "CUDA out of memory"},
                            ],
                        ],
                    },
                }
            }
        latent = graph.get("5", {}).get("inputs", {})
        count = latent.get("batch_size") or graph.get("12", {}).get("inputs", {}).get("amount", 1)
        images = [
            {"filename": f"sdgate_{i:05d}_.png", "subfolder": "", "type": "output"} for i in range(count)
        ]
        return {
            prompt_id: {
                "prompt": [],
                "outputs": {"9": {"images": images}},
                "status": {"status_str": "success", "completed": True, "messages": []},
            }
        }

    def __enter__(self) -> FakeComfy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
