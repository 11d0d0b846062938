"""A tiny ComfyUI on loopback (stdlib HTTP server in a thread) speaking ``other_apis.md`` §1:
``/object_info/CheckpointLoaderSimple``, ``/upload/image``, ``/prompt`` (with its 400 shape),
``/history/{id}``, ``/queue``, ``/view`` and ``/ws`` (the events of a prompt go to the socket of
its ``client_id``: execution_start, executing, progress, a binary preview, executed,
execution_success, then ``executing`` with ``node: null``; ``progress`` for each KSampler, in the
order they run). A prompt followed on no socket finishes after ``polls`` history reads; a negative
prompt of "boom" fails like a node exception.

``/prompt`` validates a graph as ComfyUI does for the nodes the SDK uses: known class types, every
link input present and linked to an output of the right type, file names from the lists below.
Submitted graphs are kept in order (``graphs``); output files are numbered across prompts, and
``/view`` of ``sdgate_<n>_.png`` answers an image whose red channel is ``n``."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.sdk.fakes import png_bytes

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "other.safetensors"]
REQUIRED = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage"}
LORAS = ["detail.safetensors", "styles/ink.safetensors", "old.pt"]
VAES = ["vae-ft-mse-840000-ema-pruned.safetensors"]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
OUTPUTS = {  # class_type -> its output types, by index (nodes.py)
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",),
    "CLIPSetLastLayer": ("CLIP",),
    "LoraLoader": ("MODEL", "CLIP"),
    "VAELoader": ("VAE",),
    "EmptyLatentImage": ("LATENT",),
    "LoadImage": ("IMAGE", "MASK"),
    "VAEEncode": ("LATENT",),
    "VAEEncodeForInpaint": ("LATENT",),
    "RepeatLatentBatch": ("LATENT",),
    "KSampler": ("LATENT",),
    "LatentUpscale": ("LATENT",),
    "LatentUpscaleBy": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "SaveImage": (),
}
LINKS = {  # class_type -> its link inputs and their types
    "CLIPTextEncode": {"clip": "CLIP"},
    "CLIPSetLastLayer": {"clip": "CLIP"},
    "LoraLoader": {"model": "MODEL", "clip": "CLIP"},
    "VAEEncode": {"pixels": "IMAGE", "vae": "VAE"},
    "VAEEncodeForInpaint": {"pixels": "IMAGE", "vae": "VAE", "mask": "MASK"},
    "RepeatLatentBatch": {"samples": "LATENT"},
    "KSampler": {
        "model": "MODEL",
        "positive": "CONDITIONING",
        "negative": "CONDITIONING",
        "latent_image": "LATENT",
    },
    "LatentUpscale": {"samples": "LATENT"},
    "LatentUpscaleBy": {"samples": "LATENT"},
    "VAEDecode": {"samples": "LATENT", "vae": "VAE"},
    "SaveImage": {"images": "IMAGE"},
}
CHOICES = {  # (class_type, input) -> the values ComfyUI would list
    ("CheckpointLoaderSimple", "ckpt_name"): CHECKPOINTS,
    ("LoraLoader", "lora_name"): LORAS,
    ("VAELoader", "vae_name"): VAES,
    ("LatentUpscale", "upscale_method"): UPSCALE_METHODS,
    ("LatentUpscaleBy", "upscale_method"): UPSCALE_METHODS,
}


class FakeComfy:
    def __init__(self, polls: int = 2, websocket: bool = True) -> None:
        self.polls = polls
        self.websocket = websocket
        self.sockets: dict[str, tuple[object, threading.Lock]] = {}
        self.ws_threads: list[threading.Thread] = []
        self.prompts: dict[str, dict[str, Any]] = {}
        self.reads: dict[str, int] = {}
        self.uploads: dict[str, bytes] = {}
        self.paths: list[str] = []
        self.outputs: dict[str, list[str]] = {}  # prompt id -> its output file names
        self.files = 0
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
                elif url.path == "/ws" and fake.websocket:
                    self._websocket(parse_qs(url.query).get("clientId", [uuid.uuid4().hex])[0])
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
                        n = int(name.split("_")[1]) % 256
                        self._send(200, png_bytes((n, 0, 255), infotext=None), "image/png")
                else:
                    self._send(404)

            def _websocket(self, client_id: str) -> None:
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
                self.wfile.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
                )
                self.wfile.flush()
                self.close_connection = True
                lock = threading.Lock()
                fake.sockets[client_id] = (self.connection, lock)
                send_json(
                    self.connection,
                    lock,
                    {
                        "type": "status",
                        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id},
                    },
                )
                try:
                    while self.connection.recv(4096):  # until the client closes
                        pass
                except OSError:
                    pass
                finally:
                    fake.sockets.pop(client_id, None)

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
        problem = validate(graph)
        if problem:
            kind, message, details = problem
            return 400, {
                "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                "node_errors": {},
            }
        prompt_id = str(uuid.uuid4())
        self.prompts[prompt_id] = data
        socket = self.sockets.get(str(data.get("client_id")))
        if socket is not None:
            thread = threading.Thread(target=self._run_on_socket, args=(prompt_id, *socket), daemon=True)
            self.ws_threads.append(thread)
            thread.start()
        return 200, {"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}}

    def _run_on_socket(self, prompt_id: str, sock: object, lock: threading.Lock) -> None:
        time.sleep(0.01)  # after the /prompt answer
        graph = self.prompts[prompt_id]["prompt"]
        events: list[dict[str, Any]] = [
            {"type": "execution_start", "data": {"prompt_id": prompt_id, "timestamp": 0}},
            {"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt_id, "timestamp": 0}},
        ]
        for node in samplers_in_order(graph):
            steps = graph[node]["inputs"]["steps"]
            events.append(
                {"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": prompt_id}}
            )
            events += [
                {"type": "progress", "data": {"value": i, "max": steps, "prompt_id": prompt_id, "node": node}}
                for i in range(1, steps + 1)
            ]
        try:
            for event in events[:-1]:
                send_json(sock, lock, event)
            send_frame(sock, lock, 0x2, struct.pack(">II", 1, 2) + png_bytes())  # a preview
            send_json(sock, lock, events[-1])
            if graph["7"]["inputs"]["text"] == "boom":
                self.reads[prompt_id] = self.polls
                send_json(
                    sock,
                    lock,
                    {
                        "type": "execution_error",
                        "data": {
                            "prompt_id": prompt_id,
                            "node_id": "3",
                            "node_type": "KSampler",
                            "exception_type": "RuntimeError",
                            "exception_message": "CUDA out of memory",
                        },
                    },
                )
                return
            self.reads[prompt_id] = self.polls  # the history entry exists from now on
            send_json(
                sock, lock, {"type": "executed", "data": {"node": "9", "prompt_id": prompt_id, "output": {}}}
            )
            send_json(
                sock, lock, {"type": "execution_success", "data": {"prompt_id": prompt_id, "timestamp": 0}}
            )
            send_json(sock, lock, {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}})
        except OSError:
            pass

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
        if prompt_id not in self.outputs:  # numbered when the prompt finishes, as SaveImage does
            latent = graph.get("5", {}).get("inputs", {})
            count = latent.get("batch_size") or graph.get("12", {}).get("inputs", {}).get("amount", 1)
            self.outputs[prompt_id] = [f"sdgate_{self.files + i + 1:05d}_.png" for i in range(count)]
            self.files += count
        images = [{"filename": name, "subfolder": "", "type": "output"} for name in self.outputs[prompt_id]]
        return {
            prompt_id: {
                "prompt": [],
                "outputs": {"9": {"images": images}},
                "status": {"status_str": "success", "completed": True, "messages": []},
            }
        }

    @property
    def graphs(self) -> list[dict[str, Any]]:
        """The submitted graphs, in order."""
        return [data["prompt"] for data in self.prompts.values()]

    def __enter__(self) -> FakeComfy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def validate(graph: dict[str, Any]) -> tuple[str, str, str] | None:
    """What ComfyUI's ``validate_prompt`` would reject in ``graph``: (type, message, details)."""
    for node_id, node in graph.items():
        kind = node.get("class_type")
        if kind not in OUTPUTS:
            return "invalid_prompt", f"Cannot execute because node {kind} does not exist.", ""
        inputs = node["inputs"]
        for name in LINKS.get(kind, {}):
            if name not in inputs:
                return "invalid_prompt", f"Required input is missing: {name} (node {node_id})", ""
        for name, value in inputs.items():
            if (kind, name) in CHOICES and value not in CHOICES[kind, name]:
                failed = "Prompt outputs failed validation"
                return "prompt_outputs_failed_validation", failed, f"Value not in list: {name}: '{value}'"
            if not isinstance(value, list):
                continue
            if name not in LINKS.get(kind, {}) or len(value) != 2 or str(value[0]) not in graph:
                return "invalid_prompt", f"bad link in node {node_id}: {name}", ""
            source = graph[str(value[0])]["class_type"]
            produced = OUTPUTS[source][value[1]] if value[1] < len(OUTPUTS[source]) else None
            if produced != LINKS[kind][name]:
                mismatch = f"{name}, received_type({produced}) mismatch input_type({LINKS[kind][name]})"
                return "invalid_prompt", f"Return type mismatch between linked nodes: {mismatch}", ""
    return None


def samplers_in_order(graph: dict[str, Any]) -> list[str]:
    """The KSampler node ids, each after those it depends on."""

    def upstream(node_id: str) -> set[str]:
        seen: set[str] = set()
        todo = [node_id]
        while todo:
            for value in graph[todo.pop()]["inputs"].values():
                if isinstance(value, list) and value[0] not in seen:
                    seen.add(value[0])
                    todo.append(value[0])
        return seen

    samplers = [n for n, node in graph.items() if node["class_type"] == "KSampler"]
    return sorted(samplers, key=lambda n: len(upstream(n) & set(samplers)))


def send_frame(sock: object, lock: threading.Lock, opcode: int, payload: bytes) -> None:
    """A server frame (unmasked); split in two fragments when long, to exercise reassembly."""
    with lock:
        if len(payload) > 200:
            half = len(payload) // 2
            sock.sendall(_frame(opcode, payload[:half], fin=False))  # type: ignore[attr-defined]
            sock.sendall(_frame(0x0, payload[half:], fin=True))  # type: ignore[attr-defined]
        else:
            sock.sendall(_frame(opcode, payload, fin=True))  # type: ignore[attr-defined]


def _frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def send_json(sock: object, lock: threading.Lock, message: dict[str, Any]) -> None:
    send_frame(sock, lock, 0x1, json.dumps(message).encode())
