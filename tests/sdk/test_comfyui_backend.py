"""The ComfyUI backend: workflows built in code, checked by a fake ComfyUI on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image

from sdgate.client import AsyncClient, BadRequestError, Client, ComfyUIBackend, ImageRequest, JobFailedError
from sdgate.client.backends.comfyui import build_workflow
from tests.sdk.comfy_fake import CHECKPOINTS, FakeComfy
from tests.sdk.fakes import png_bytes


@pytest.fixture
def comfy() -> Iterator[FakeComfy]:
    with FakeComfy(polls=2) as fake:
        yield fake


def test_txt2img_workflow_shape() -> None:
    graph = build_workflow(
        ImageRequest(
            prompt="cat",
            negative_prompt="dog",
            width=768,
            height=512,
            steps=12,
            cfg_scale=6.5,
            sampler="DPM++ 2M",
            scheduler="karras",
            batch_size=3,
        ),
        ckpt_name="m.safetensors",
        seed=2**64 - 1,
    )
    assert graph["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 3}
    ks = graph["3"]["inputs"]
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"], ks["denoise"]) == (
        2**64 - 1,
        12,
        6.5,
        "dpmpp_2m",
        "karras",
        1.0,
    )
    assert ks["latent_image"] == ["5", 0] and graph["6"]["inputs"]["text"] == "cat"
    assert graph["7"]["inputs"]["text"] == "dog" and graph["9"]["class_type"] == "SaveImage"


def test_img2img_and_inpaint_workflows() -> None:
    img = build_workflow(
        ImageRequest(prompt="x", init_image=b"i", denoising_strength=0.4),
        ckpt_name="m",
        seed=1,
        image_name="up.png",
    )
    assert img["10"]["inputs"] == {"image": "up.png"} and img["11"]["class_type"] == "VAEEncode"
    assert img["3"]["inputs"]["denoise"] == 0.4 and img["3"]["inputs"]["latent_image"] == ["11", 0]
    inp = build_workflow(
        ImageRequest(prompt="x", init_image=b"i", mask=b"m"), ckpt_name="m", seed=1, image_name="up.png"
    )
    assert inp["11"]["class_type"] == "VAEEncodeForInpaint" and inp["11"]["inputs"]["mask"] == ["10", 1]


def test_txt2img_end_to_end(comfy: FakeComfy) -> None:
    with Client(f"comfyui+{comfy.url}") as client:
        result = client.txt2img("a cat", seed=5, n=2, width=64, height=64)
        assert len(result.images) == 2 and result.seeds == [5, 5] and result.job_id in comfy.prompts
        graph = comfy.prompts[result.job_id]["prompt"]
        assert graph["4"]["inputs"]["ckpt_name"] == CHECKPOINTS[0]  # the first listed, as none was named
        assert comfy.prompts[result.job_id]["client_id"]
        unseeded = client.txt2img("a cat", model="other.safetensors")
        assert isinstance(unseeded.seeds[0], int)
        assert [m.name for m in client.models.list()] == CHECKPOINTS


def test_inpaint_uploads_an_image_whose_alpha_is_the_mask(comfy: FakeComfy) -> None:
    mask = Image.new("L", (4, 4), 0)
    mask.putpixel((3, 3), 255)
    with Client(f"comfyui+{comfy.url}") as client:
        client.inpaint("x", init_image=png_bytes(size=(4, 4)), mask=mask)
    (uploaded,) = comfy.uploads.values()
    import io

    sent = Image.open(io.BytesIO(uploaded))
    assert sent.getpixel((3, 3))[3] == 0 and sent.getpixel((0, 0))[3] == 255


def test_validation_and_execution_errors(comfy: FakeComfy) -> None:
    with Client(f"comfyui+{comfy.url}", max_retries=0) as client:
        with pytest.raises(BadRequestError, match="Prompt outputs failed validation"):
            client.txt2img("x", model="missing.safetensors")
        with pytest.raises(JobFailedError, match="CUDA out of memory"):
            client.txt2img("x", negative_prompt="boom")


def test_progress_events_over_the_websocket(comfy: FakeComfy) -> None:
    with Client(f"comfyui+{comfy.url}") as client:
        events = list(client.stream("x", seed=1, steps=4))
    assert [e.kind for e in events] == [
        "queued",
        "started",
        "progress",
        "progress",
        "progress",
        "progress",
        "succeeded",
    ]
    assert [(e.step, e.total) for e in events[2:6]] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert events[4].preview is None and events[5].preview is not None  # a binary preview came before step 4
    assert events[5].preview.size == (8, 8)
    assert events[-1].result is not None and len(events[-1].result.images) == 1
    assert "/ws" in comfy.paths and comfy.paths.count(f"/history/{events[-1].result.job_id}") == 1


def test_polling_when_there_is_no_websocket() -> None:
    with FakeComfy(polls=2, websocket=False) as comfy, Client(f"comfyui+{comfy.url}") as client:
        kinds = [e.kind for e in client.stream("x", seed=1)]
        assert kinds == ["queued", "started", "succeeded"]
        with pytest.raises(JobFailedError, match="CUDA out of memory"):
            client.txt2img("x", negative_prompt="boom", seed=1)


def test_websocket_can_be_turned_off(comfy: FakeComfy) -> None:
    backend = ComfyUIBackend(comfy.url, websocket=False)
    with Client(backend=backend) as client:
        assert client.txt2img("x", seed=2).seeds == [2]
    assert "/ws" not in comfy.paths


async def test_async_comfyui(comfy: FakeComfy) -> None:
    async with AsyncClient(f"{comfy.url.replace('http', 'comfy+http', 1)}") as client:
        result = await client.img2img("x", init_image=png_bytes(), seed=3)
    assert result.seeds == [3] and len(comfy.uploads) == 1
