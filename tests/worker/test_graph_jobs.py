"""A ComfyUI graph job on the worker: it runs through the graph executor, its output nodes' images
are indexed in the result, and each stored PNG carries ComfyUI's ``prompt`` (and ``workflow``) chunks
beside the infotext."""

from __future__ import annotations

import io
import json
import time

from PIL import Image

from sdgate.core.jobs import JobState
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GraphRequest
from sdgate.engine.null import NullEngine
from sdgate.jobs.events import JobEvents
from sdgate.jobs.images import LocalImageStore
from sdgate.jobs.store import SqlJobStore
from sdgate.settings import Settings
from sdgate.worker.runner import Worker
from tests.comfy_graphs import txt2img


def test_a_graph_job_stores_its_pictures_with_comfyuis_chunks(
    store: SqlJobStore, images: LocalImageStore, events: JobEvents, settings: Settings
) -> None:
    settings = settings.model_copy(update={"engine": "null"})
    engine = NullEngine(settings, ModelCatalog(settings, builtin_dir=None))
    graph = txt2img("model.safetensors", width=64, height=48, batch_size=2)
    workflow = {"nodes": [], "links": [], "version": 0.4}
    request = GraphRequest(graph=graph, outputs=("9",), client_id="c1", image_count=2,
                           extra_data={"extra_pnginfo": {"workflow": workflow}})
    job = store.submit(request, dialect="comfy")
    worker = Worker(store, engine, images, events, settings)  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while store.get(job.id).state in (JobState.QUEUED, JobState.RUNNING) and time.monotonic() < deadline:
        worker.run_once()
    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None
    assert done.result.node_outputs["9"].images == (0, 1)
    assert done.result.node_outputs["9"].kind == "output"
    for stored in done.result.images:
        png = Image.open(io.BytesIO(images.get(stored.id)))
        assert png.size == (64, 48)
        assert json.loads(png.text["prompt"]) == graph
        assert json.loads(png.text["workflow"]) == workflow
        assert "parameters" in png.text
