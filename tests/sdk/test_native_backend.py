"""The native backend against a fake that follows issue 6's wire format (MockTransport).

Swap to the real app once ``/api/v1/jobs`` lands: see ``test_native_contract.py``.
"""

from __future__ import annotations

import base64
import json

import pytest

from sdgate.client import AsyncClient, Client, ImageRequest, JobFailedError, UnsupportedFeatureError
from tests.sdk.fakes import FakeNative, png_bytes


def client_for(native: FakeNative) -> Client:
    return Client("http://sdgate.test", transport=native.transport)


def test_txt2img_wire_body_and_result() -> None:
    native = FakeNative()
    result = client_for(native).txt2img(
        "a red circle",
        negative_prompt="blue",
        width=512,
        height=512,
        steps=25,
        cfg_scale=7.0,
        sampler="DPM++ 2M",
        scheduler="karras",
        seed=42,
        n=2,
        model="sdgate-demo-shapes",
    )
    body = json.loads(native.requests[0].content)
    assert body == {
        "prompt": "a red circle",
        "negative_prompt": "blue",
        "width": 512,
        "height": 512,
        "steps": 25,
        "cfg_scale": 7.0,
        "sampler": "DPM++ 2M",
        "scheduler": "karras",
        "seed": 42,
        "batch_size": 2,
        "model": "sdgate-demo-shapes",
        "priority": 0,
    }
    assert result.seeds == [42, 43]
    assert result.infotexts == ["a red circle\nSeed: 42", "a red circle\nSeed: 43"]
    assert [im.size for im in result.images] == [(8, 8), (8, 8)]
    assert result.timings == {"total_s": 0.5} and result.backend == "sdgate" and result.ignored_fields == ()


def test_img2img_and_inpaint_send_base64_images_to_a_server_without_uploads() -> None:
    native = FakeNative()
    client = client_for(native)
    init, mask = png_bytes((1, 2, 3)), png_bytes((255, 255, 255))
    client.img2img("x", init_image=init, denoising_strength=0.4)
    client.inpaint("x", init_image=init, mask=mask)
    uploads = [r for r in native.requests if r.url.path == "/api/v1/uploads"]
    assert len(uploads) == 1  # tried once (404), then never again
    first, second = (json.loads(r.content) for r in native.requests if r.url.path == "/api/v1/jobs")
    assert base64.b64decode(first["init_image"]) == init and first["denoising_strength"] == 0.4
    assert "mask" not in first and base64.b64decode(second["mask"]) == mask


def test_save_writes_pngs_with_infotext(tmp_path) -> None:
    result = client_for(FakeNative()).txt2img("a red circle", seed=1)
    (path,) = result.save(tmp_path)
    from PIL import Image

    assert Image.open(path).info["parameters"] == "a red circle\nSeed: 1"


def test_jobs_api() -> None:
    native = FakeNative(steps=3)
    client = client_for(native)
    job = client.jobs.submit("a red circle", seed=3, metadata={"user": "abc"})
    assert job.state == "queued" and job.id == "job_0001" and not job.done
    assert client.jobs.get(job.id).state == "running"
    assert [j.id for j in client.jobs.list(state="running")] == [job.id]
    assert native.requests[-1].url.params["state"] == "running"
    done = client.jobs.wait(job.id)
    assert done.state == "succeeded" and done.done
    result = client.jobs.result(done)
    assert result.job_id == job.id and result.seeds == [3]
    other = client.jobs.submit("b")
    assert client.jobs.cancel(other.id).state == "cancelled"
    with pytest.raises(JobFailedError) as info:
        client.jobs.result(other.id)
    assert info.value.code == "cancelled"


def test_failed_job_raises_with_the_server_message() -> None:
    with pytest.raises(JobFailedError, match="the engine exploded") as info:
        client_for(FakeNative()).txt2img("please fail")
    assert info.value.code == "generation_failed" and info.value.job_id == "job_0001"


def test_stream_events_over_sse() -> None:
    client = client_for(FakeNative(steps=2))
    events = list(client.stream("a red circle", seed=1))
    assert [e.kind for e in events] == ["queued", "queued", "started", "progress", "progress", "succeeded"]
    assert (events[3].step, events[3].total) == (1, 2)
    assert events[-1].result is not None and events[-1].result.seeds == [1]


def test_jobs_stream_ends_at_the_terminal_event() -> None:
    native = FakeNative(steps=2)
    client = client_for(native)
    job = client.jobs.submit("x")
    kinds = [e.kind for e in client.jobs.stream(job.id)]
    assert kinds[-1] == "succeeded" and "progress" in kinds


def test_sse_resumes_with_last_event_id() -> None:
    native = FakeNative(steps=2)
    events: list = []
    client_for(native).txt2img("cut me", on_progress=events.append)
    streams = [r for r in native.requests if r.url.path.endswith("/events")]
    assert len(streams) == 2
    assert "last-event-id" not in streams[0].headers and streams[1].headers["last-event-id"] == "1"
    assert [e.kind for e in events][-1] == "succeeded"


def test_polling_when_there_is_no_sse() -> None:
    native = FakeNative(steps=2, sse=False)
    events: list = []
    result = client_for(native).txt2img("x", seed=4, on_progress=events.append)
    assert result.seeds == [4]
    assert [(e.kind, e.step) for e in events] == [
        ("queued", 0),
        ("started", 0),
        ("progress", 1),
        ("succeeded", 0),
    ]


def test_models() -> None:
    (model,) = client_for(FakeNative()).models.list()
    assert model.name == "sdgate-demo-shapes"


def test_request_objects_and_unknown_fields() -> None:
    req = ImageRequest.build("x", init_image=png_bytes(), steps=3)
    assert req.mode == "img2img"
    with pytest.raises(TypeError, match="colour"):
        ImageRequest.build("x", colour="red")
    assert ImageRequest.from_dict({"prompt": "x", "n": 3}).batch_size == 3


def test_jobs_need_a_native_backend() -> None:
    client = Client("a1111+http://a1111.test")
    with pytest.raises(UnsupportedFeatureError, match="no job API"):
        client.jobs.get("x")


async def test_async_client_native() -> None:
    native = FakeNative(steps=2)
    async with AsyncClient("http://sdgate.test", transport=native.transport) as client:
        result = await client.txt2img("a red circle", seed=8, n=2)
        assert result.seeds == [8, 9]
        job = await client.jobs.submit("y")
        assert (await client.jobs.get(job.id)).state == "running"
        assert len(await client.jobs.list()) == 2
        assert (await client.jobs.wait(job.id)).state == "succeeded"
        assert (await client.jobs.result(job.id)).job_id == job.id
        kinds = [e.kind async for e in client.stream("z")]
        assert kinds[-1] == "succeeded" and "progress" in kinds
        job2 = await client.jobs.submit("w")
        assert [e.kind async for e in client.jobs.stream(job2.id)][-1] == "succeeded"
        assert (await client.jobs.cancel(job2.id)).state == "succeeded"
        assert [m.name for m in await client.models.list()] == ["sdgate-demo-shapes"]
        with pytest.raises(JobFailedError):
            await client.txt2img("fail")


def test_job_fields_go_to_the_native_api_only() -> None:
    native = FakeNative()
    client_for(native).jobs.submit(
        "x", priority=5, metadata={"user": "a"}, callback_url="https://hook.test/x"
    )
    body = json.loads(native.requests[0].content)
    assert (body["priority"], body["metadata"], body["callback_url"]) == (
        5,
        {"user": "a"},
        "https://hook.test/x",
    )
    from sdgate.client import A1111Backend

    ignored = A1111Backend("http://a.test").ignored_fields(ImageRequest(prompt="x", callback_url="https://h"))
    assert ignored == ("callback_url",)


def test_progress_event_preview_from_a_data_uri() -> None:
    from sdgate.client import ProgressEvent

    uri = "data:image/png;base64," + base64.b64encode(png_bytes(size=(4, 4))).decode()
    assert ProgressEvent(kind="progress", data={"preview": uri}).preview.size == (4, 4)
    assert ProgressEvent(kind="progress", data={"preview": "data:image/png;base64,!!"}).preview is None
    assert ProgressEvent(kind="progress").preview is None
