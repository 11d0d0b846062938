"""The clients of the cluster tests (tests/test_cluster.py): what they submit (``short``), a naive
load balancer over the API nodes (``Clients``), a client that keeps submitting through an outage
(``Submitter``), an SSE reader (``follow``), and a ``Clock`` that prints how long each phase took.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from itertools import count
from typing import Any

import httpx

from tests.cluster_services import Node
from tests.server.dialects.native.conftest import parse_sse


def short(label: str, n: int) -> dict[str, Any]:
    """A native job body: 64x64, 2 steps."""
    return {"prompt": f"{label} {n}", "seed": n, "steps": 2, "width": 64, "height": 64}


class Clock:
    """Prints how long each phase took (shown with a failure)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        print(f"{now - self.start:6.1f} s (+{now - self.last:5.1f}) {phase}")
        self.last = now


class Clients:
    """The cluster's clients behind a naive load balancer: native submits go round-robin over the
    API nodes; a node that does not answer is skipped and the same request (same Idempotency-Key)
    goes to the next. Counts what each node accepted, and which node took each native job."""

    def __init__(self, *nodes: Node) -> None:
        self.nodes = list(nodes)
        self.http = httpx.Client(timeout=httpx.Timeout(60, connect=5))
        self.accepted = dict.fromkeys((node.name for node in nodes), 0)
        self.via: dict[str, str] = {}
        self.failovers = 0
        self._turn = count()
        self._lock = threading.Lock()

    def native(self, body: dict[str, Any], *, via: Node | None = None) -> str:
        key, first = uuid.uuid4().hex, next(self._turn)
        order = [via] if via else [self.nodes[(first + i) % len(self.nodes)] for i in range(len(self.nodes))]
        for node in order:
            try:
                r = self.http.post(node.url + "/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError:  # a dead node: the next one
                with self._lock:
                    self.failovers += 1
                continue
            assert r.status_code == 202, (node.name, r.status_code, r.text)
            job_id = str(r.json()["id"])
            with self._lock:
                if r.headers.get("Idempotent-Replayed") != "true":
                    self.accepted[node.name] += 1
                self.via[job_id] = node.name
            return job_id
        raise AssertionError(f"no API node took {body}")

    def blocking(self, dialect: str, node: Node, model: str, n: int) -> bytes:
        """One image through a dialect whose route answers once the job has ended; its PNG."""
        prompt, url = f"{dialect} {n}", node.url
        if dialect == "a1111":
            r = self.http.post(url + "/sdapi/v1/txt2img", json=short(prompt, n))
            b64 = r.json()["images"][0] if r.status_code == 200 else ""
        elif dialect == "openai":
            r = self.http.post(url + "/v1/images/generations", json={
                "prompt": prompt, "size": "64x64", "steps": 2, "response_format": "b64_json"})
            b64 = r.json()["data"][0]["b64_json"] if r.status_code == 200 else ""
        else:  # stability v1: at least 128x128 and 10 steps
            r = self.http.post(url + f"/v1/generation/{model}/text-to-image", json={
                "text_prompts": [{"text": prompt}], "width": 128, "height": 128, "steps": 10, "seed": n + 1})
            b64 = r.json()["artifacts"][0]["base64"] if r.status_code == 200 else ""
        assert r.status_code == 200, (dialect, node.name, r.status_code, r.text[:500])
        with self._lock:
            self.accepted[node.name] += 1
        return base64.b64decode(b64)

    def close(self) -> None:
        self.http.close()


def follow(url: str, job_id: str, into: list[dict[str, Any]]) -> None:
    """Reads the job's SSE stream from ``url`` to its end (the terminal event)."""
    with httpx.Client(timeout=httpx.Timeout(10, read=180)) as http:
        response = http.get(f"{url}/api/v1/jobs/{job_id}/events")
        assert response.status_code == 200, response.text
        into.extend(parse_sse(response.text))


class Submitter(threading.Thread):
    """A client that submits jobs one after another until stopped, retrying each (same
    Idempotency-Key) while the service is unavailable; what it could not handle is re-raised by
    ``check``."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.accepted: list[str] = []
        self.refused: list[str] = []  # the error codes of the answers it retried
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=60) as http:
                for n in count():
                    if self.stopping.is_set():
                        return
                    self.accepted.append(self._submit(http, short("job", n)))
        except BaseException as exc:  # noqa: BLE001 - the test re-raises it
            self.error = exc

    def _submit(self, http: httpx.Client, body: dict[str, Any]) -> str:
        key = uuid.uuid4().hex
        while True:
            r = http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
            if r.status_code == 202:
                return str(r.json()["id"])
            # the database away: storage_unavailable (503; 507 for a job that failed of it)
            assert r.status_code in (503, 507), (r.status_code, r.text)
            self.refused.append(r.json()["error"]["code"])
            time.sleep(0.2)

    def check(self, at_least: int) -> bool:
        if self.error is not None:
            raise self.error
        return len(self.accepted) >= at_least
