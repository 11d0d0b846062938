"""A ComfyUI user's script, the way ``script_examples/websockets_api_example.py`` is written
(``requests`` + ``websocket-client``), pointed at a real sdgate on loopback."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket  # websocket-client (the test extra), what ComfyUI's examples use
from PIL import Image

from sdgate.settings import Settings
from tests.fakes import write_fake_checkpoint
from tests.harness import ThreadServer


@dataclass
class Run:
    """What one prompt's /ws told its client, in order: JSON messages and binary frames."""

    prompt_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == kind]


class ComfyScript:
    """``queue_prompt`` / ``get_history`` / ``get_image`` / ``upload``, as ComfyUI users write them."""

    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, token: str | None = None,
                 client_id: str | None = None, prefix: str = "") -> None:
        self.url = url + prefix
        self.ws_url = url.replace("http://", "ws://") + prefix
        self.auth = auth
        self.token = token
        self.client_id = client_id or str(uuid.uuid4())

    def _kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"timeout": 120}
        if self.auth:
            kw["auth"] = self.auth
        if self.token:
            kw["headers"] = {"Authorization": f"Bearer {self.token}"}
        return kw

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, **self._kw())

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, **self._kw(), **kw)

    def queue_prompt(self, prompt: dict[str, Any], **extra: Any) -> requests.Response:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id, **extra})

    def connect(self, *, flags: dict[str, Any] | None = None) -> Any:
        ws = websocket.WebSocket()
        url = f"{self.ws_url}/ws?clientId={self.client_id}"
        header = []
        if self.token:
            url += f"&token={self.token}"
        if self.auth:
            import base64

            header = ["Authorization: Basic " + base64.b64encode(":".join(self.auth).encode()).decode()]
        ws.connect(url, header=header, timeout=120)
        if flags is not None:
            ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        return ws

    def wait(self, ws: Any, prompt_id: str) -> Run:
        """Reads /ws until ``executing`` with ``node: null`` for ``prompt_id`` (ComfyUI's done)."""
        run = Run(prompt_id)
        while True:
            out = ws.recv()
            if isinstance(out, bytes):
                run.frames.append(out)
                continue
            message = json.loads(out)
            run.messages.append(message)
            data = message.get("data") or {}
            done = message["type"] == "executing" and data.get("node") is None
            if done and data.get("prompt_id") == prompt_id:
                return run

    def history(self, prompt_id: str) -> dict[str, Any]:
        return self.get(f"/history/{prompt_id}").json()

    def images(self, prompt_id: str) -> list[Image.Image]:
        entry = self.history(prompt_id)[prompt_id]
        found = []
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                where = {k: image[k] for k in ("filename", "subfolder", "type")}
                r = self.get("/view", **where)
                assert r.status_code == 200, r.text
                found.append(Image.open(io.BytesIO(r.content)))
        return found

    def upload(self, image: Image.Image, name: str, **form: str) -> requests.Response:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return requests.post(self.url + "/upload/image", files={"image": (name, buf.getvalue(), "image/png")},
                             data=form, **self._kw())


@pytest.fixture
def null_models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    write_fake_checkpoint(root / "loras" / "ink.safetensors")
    return root


def null_settings(tmp_path: Path, models: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models, engine="null", device="cpu",
                    worker_poll_s=0.02, **overrides)


@pytest.fixture
def null_server(tmp_path: Path, null_models: Path) -> Iterator[str]:
    """sdgate on the null engine (blank images at once), in a uvicorn thread on loopback."""
    from sdgate.server.app import create_app

    with ThreadServer(create_app(null_settings(tmp_path, null_models))) as server:
        yield server.url
