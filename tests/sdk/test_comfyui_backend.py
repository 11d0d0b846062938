"""The ComfyUI backend: workflows built in code, checked by a fake ComfyUI on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image

from sdgate.client import (
    AsyncClient,
    BadRequestError,
    Client,
    ComfyUIBackend,
    Hires,
    ImageRequest,
    JobFailedError,
    Lora,
    UnsupportedFeatureError,
)
from sdgate.client.backends._comfy_graph import build_workflow
from tests.sdk.comfy_fake import CHECKPOINTS, FakeComfy, validate
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


# -- the A1111-style fields as nodes -------------------------------------------------------------


def _graph(**fields: object) -> dict:
    request = ImageRequest.build("cat", negative_prompt="dog", steps=10, **fields)
    image = "up.png" if request.mode != "txt2img" else None
    graph = build_workflow(request, ckpt_name=CHECKPOINTS[0], seed=42, image_name=image)
    assert validate(graph) is None  # well typed, as ComfyUI checks it
    return graph


def _of(graph: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type]


def test_loras_chain_between_the_checkpoint_and_its_users() -> None:
    graph = _graph(loras=["detail:0.8", Lora("styles/ink.safetensors", 0.5, unet_weight=1.2), "old.pt"])
    first, second, third = _of(graph, "LoraLoader")
    assert graph[first]["inputs"] == {
        "model": ["4", 0],
        "clip": ["4", 1],
        "lora_name": "detail.safetensors",  # A1111's bare name, as a file
        "strength_model": 0.8,
        "strength_clip": 0.8,
    }
    assert graph[second]["inputs"] == {
        "model": [first, 0],
        "clip": [first, 1],
        "lora_name": "styles/ink.safetensors",
        "strength_model": 1.2,  # the UNet weight
        "strength_clip": 0.5,  # the text encoder weight
    }
    assert graph[third]["inputs"]["lora_name"] == "old.pt"
    assert graph[third]["inputs"]["model"] == [second, 0]
    assert graph["3"]["inputs"]["model"] == [third, 0]
    assert graph["6"]["inputs"]["clip"] == graph["7"]["inputs"]["clip"] == [third, 1]
    assert graph["8"]["inputs"]["vae"] == ["4", 2]  # LoRAs leave the VAE alone
    assert not _of(_graph(), "LoraLoader")


def test_clip_skip_sets_the_last_layer_after_the_loras() -> None:
    graph = _graph(clip_skip=2, loras=["detail"])
    (lora,) = _of(graph, "LoraLoader")
    (skip,) = _of(graph, "CLIPSetLastLayer")
    assert graph[skip]["inputs"] == {"clip": [lora, 1], "stop_at_clip_layer": -2}
    assert graph["6"]["inputs"]["clip"] == graph["7"]["inputs"]["clip"] == [skip, 0]
    assert graph["3"]["inputs"]["model"] == [lora, 0]
    assert _graph(clip_skip=3)[_of(_graph(clip_skip=3), "CLIPSetLastLayer")[0]]["inputs"]["clip"] == ["4", 1]
    for no_skip in (None, 1):
        plain = _graph(clip_skip=no_skip)
        assert not _of(plain, "CLIPSetLastLayer") and plain["6"]["inputs"]["clip"] == ["4", 1]


def test_vae_loader_feeds_decode_and_encode() -> None:
    vae = "vae-ft-mse-840000-ema-pruned.safetensors"
    txt = _graph(vae=vae)
    (loader,) = _of(txt, "VAELoader")
    assert txt[loader]["inputs"] == {"vae_name": vae} and txt["8"]["inputs"]["vae"] == [loader, 0]
    img = _graph(vae="vae-ft-mse-840000-ema-pruned", init_image=b"i")  # a bare name gets .safetensors
    (loader,) = _of(img, "VAELoader")
    assert img[loader]["inputs"] == {"vae_name": vae}
    assert img["11"]["class_type"] == "VAEEncode" and img["11"]["inputs"]["vae"] == [loader, 0]
    assert img["8"]["inputs"]["vae"] == [loader, 0]
    inp = _graph(vae=vae, init_image=b"i", mask=b"m")
    assert inp["11"]["class_type"] == "VAEEncodeForInpaint" and inp["11"]["inputs"]["vae"] == [loader, 0]
    for own in ("Automatic", "None"):  # A1111's names for the checkpoint's own VAE
        graph = _graph(vae=own)
        assert not _of(graph, "VAELoader") and graph["8"]["inputs"]["vae"] == ["4", 2]


def test_hires_fix_upscales_the_latents_and_samples_again() -> None:
    graph = _graph(
        hires=Hires(scale=1.5, upscaler="Latent (nearest)", denoising_strength=0.45, prompt="sharp cat"),
        sampler="DPM++ 2M",
        cfg_scale=5.0,
    )
    (upscale,) = _of(graph, "LatentUpscaleBy")
    assert graph[upscale]["inputs"] == {
        "samples": ["3", 0],
        "upscale_method": "nearest-exact",
        "scale_by": 1.5,
    }
    first, second = graph["3"]["inputs"], graph[_of(graph, "KSampler")[1]]["inputs"]
    assert second["latent_image"] == [upscale, 0] and second["denoise"] == 0.45
    assert (second["seed"], second["steps"], second["cfg"], second["sampler_name"]) == (
        42,
        10,
        5.0,
        "dpmpp_2m",
    )
    assert first["denoise"] == 1.0 and first["latent_image"] == ["5", 0]
    positive = second["positive"][0]
    assert (
        graph[positive]["class_type"] == "CLIPTextEncode" and graph[positive]["inputs"]["text"] == "sharp cat"
    )
    assert graph[positive]["inputs"]["clip"] == ["4", 1] and second["negative"] == ["7", 0]
    assert first["positive"] == ["6", 0] and second["model"] == first["model"]
    assert graph["8"]["inputs"]["samples"] == [
        _of(graph, "KSampler")[1],
        0,
    ]  # the decode reads the second pass


def test_hires_fix_to_a_size_with_its_own_steps_and_sampler() -> None:
    graph = _graph(
        hires=Hires(
            upscaler="Latent (bicubic antialiased)",
            resize_x=1024,
            second_pass_steps=7,
            sampler="Euler a",
            scheduler="Karras",
            negative_prompt="blurry",
        ),
        loras=["detail"],
        clip_skip=2,
    )
    (upscale,) = _of(graph, "LatentUpscale")
    assert graph[upscale]["inputs"] == {
        "samples": ["3", 0],
        "upscale_method": "bicubic",
        "width": 1024,
        "height": 0,  # keeps the aspect ratio
        "crop": "disabled",
    }
    second = graph[_of(graph, "KSampler")[1]]["inputs"]
    assert (second["steps"], second["sampler_name"], second["scheduler"], second["denoise"]) == (
        7,
        "euler_ancestral",
        "karras",
        0.7,
    )
    (lora,), (skip,) = _of(graph, "LoraLoader"), _of(graph, "CLIPSetLastLayer")
    negative = second["negative"][0]
    assert graph[negative]["inputs"] == {"text": "blurry", "clip": [skip, 0]}
    assert second["positive"] == ["6", 0] and second["model"] == [lora, 0]
    both = _graph(hires=Hires(resize_x=768, resize_y=1024))
    (upscale,) = _of(both, "LatentUpscale")
    assert both[upscale]["inputs"]["crop"] == "center"  # A1111 fills the box and crops the middle
    assert both[upscale]["inputs"]["upscale_method"] == "bilinear"  # "Latent"


def test_image_upscalers_and_img2img_hires_are_left_out() -> None:
    backend = ComfyUIBackend("http://comfy")
    esrgan = ImageRequest(prompt="x", hires=Hires(upscaler="R-ESRGAN 4x+"))
    graph = build_workflow(esrgan, ckpt_name="m", seed=1)
    assert len(_of(graph, "KSampler")) == 1 and graph["8"]["inputs"]["samples"] == ["3", 0]
    assert backend.ignored_fields(esrgan) == ("hires",)
    img2img = ImageRequest(prompt="x", init_image=b"i", hires=Hires())
    assert len(_of(build_workflow(img2img, ckpt_name="m", seed=1, image_name="u"), "KSampler")) == 1
    assert backend.ignored_fields(img2img) == ("hires",)
    assert backend.ignored_fields(ImageRequest(prompt="x", hires=Hires(upscaler="Latent (bicubic)"))) == ()
    with pytest.raises(UnsupportedFeatureError, match="hires: .*latent upscaler only"):
        backend.check(esrgan, strict=True)


def test_what_core_nodes_cannot_do_is_reported(comfy: FakeComfy) -> None:
    unsupported = {
        "subseed": 7,
        "subseed_strength": 0.3,
        "seed_resize_from_w": 256,
        "seed_resize_from_h": 256,
        "tiling": True,
        "eta": 0.5,
        "s_churn": 1.0,
        "s_noise": 1.003,
        "styles": ["cinematic"],
    }
    honoured = {
        "n_iter": 2,
        "clip_skip": 2,
        "loras": ["detail:0.6"],
        "vae": "vae-ft-mse-840000-ema-pruned.safetensors",
        "hires": 1.5,
    }
    with Client(f"comfyui+{comfy.url}") as client:
        result = client.txt2img("x", seed=1, steps=2, **unsupported, **honoured)
    assert set(result.ignored_fields) == set(unsupported)
    assert len(result.images) == 2 and len(comfy.graphs) == 2
    assert {n["class_type"] for n in comfy.graphs[0].values()} >= {
        "LoraLoader",
        "CLIPSetLastLayer",
        "VAELoader",
        "LatentUpscaleBy",
    }
    backend = ComfyUIBackend(comfy.url)
    for name in unsupported:
        assert backend.unsupported[name] and "ComfyUI" in backend.unsupported[name]
    with (
        Client(f"comfyui+{comfy.url}", strict=True) as strict,
        pytest.raises(UnsupportedFeatureError, match="variation seeds") as caught,
    ):
        strict.txt2img("x", seed=1, subseed_strength=0.3, loras=["detail"])
    assert caught.value.fields == ("subseed_strength",)
    assert len(comfy.graphs) == 2  # nothing was submitted


@pytest.mark.parametrize("websocket", [True, False])
def test_n_iter_submits_once_per_iteration_with_advancing_seeds(websocket: bool) -> None:
    with FakeComfy(polls=1, websocket=websocket) as comfy, Client(f"comfyui+{comfy.url}") as client:
        result = client.txt2img("x", seed=10, n=2, n_iter=3, steps=2)
        assert [g["3"]["inputs"]["seed"] for g in comfy.graphs] == [10, 12, 14]  # advanced by batch_size
        assert all(g["5"]["inputs"]["batch_size"] == 2 for g in comfy.graphs)
        assert result.seeds == [10, 10, 12, 12, 14, 14]
        # every image, in the order the prompts finished (the fake numbers its files 1, 2, ...)
        assert [image.getpixel((0, 0))[0] for image in result.images] == [1, 2, 3, 4, 5, 6]
        assert result.job_id == next(iter(comfy.prompts))
        top = client.txt2img("x", seed=2**64 - 1, n_iter=2, steps=1)
        assert top.seeds == [2**64 - 1, 0]  # ComfyUI's seed range wraps around


def test_progress_counts_across_passes_and_iterations(comfy: FakeComfy) -> None:
    with Client(f"comfyui+{comfy.url}") as client:
        events = list(client.stream("x", seed=1, steps=3, n_iter=2, hires=Hires(second_pass_steps=2)))
    kinds = [e.kind for e in events]
    assert kinds == ["queued", "started"] + ["progress"] * 10 + ["succeeded"]
    progress = [e for e in events if e.kind == "progress"]
    assert [(e.step, e.total) for e in progress] == [(i, 10) for i in range(1, 11)]
    assert [e.data["iteration"] for e in progress] == [0] * 5 + [1] * 5
    assert progress[0].job_id == events[0].job_id != progress[-1].job_id  # the second prompt's own id
    assert len(events[-1].result.images) == 2


def test_fake_rejects_miswired_graphs() -> None:
    """The wiring checks above lean on the fake's validation: it must catch a miswired graph."""
    graph = build_workflow(ImageRequest(prompt="x", loras=["detail"]), ckpt_name=CHECKPOINTS[0], seed=1)
    assert validate(graph) is None
    graph["3"]["inputs"]["model"] = ["100", 1]  # the LoRA's CLIP into the sampler's model
    assert validate(graph) == (
        "invalid_prompt",
        "Return type mismatch between linked nodes: model, received_type(CLIP) mismatch input_type(MODEL)",
        "",
    )
    graph["3"]["inputs"]["model"] = ["100", 0]
    graph["100"]["inputs"]["lora_name"] = "missing.safetensors"
    assert validate(graph)[2] == "Value not in list: lora_name: 'missing.safetensors'"  # type: ignore[index]
