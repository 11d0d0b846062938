"""The native job API shows jobs of every kind its caller owns: a ComfyUI graph job reads back as
stored (no 500 for a request without ``init_images``)."""

from __future__ import annotations

import httpx

from sdgate.core.requests import GraphRequest

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["4", 0]}},
}


async def test_a_graph_job_reads_back_through_the_native_api(api: httpx.AsyncClient) -> None:
    services = api.app.state.services  # type: ignore[attr-defined]
    # Held queued (no worker claims it before the read): stop the workers first.
    for worker in services.workers:
        worker.stop(timeout=5)
    job = services.store.submit(GraphRequest(graph=GRAPH, outputs=("9",), client_id="c1"), dialect="comfy")
    response = await api.get(f"/api/v1/jobs/{job.id}")
    assert response.status_code == 200, response.text
    request = response.json()["request"]
    assert request["mode"] == "comfy" and request["graph"] == GRAPH and request["outputs"] == ["9"]
    assert "init_image" not in request
