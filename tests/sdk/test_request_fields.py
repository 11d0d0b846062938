"""The A1111-style request fields (n_iter, variation seeds, hires fix, LoRAs, VAE, styles, ...):
how the A1111 backend maps them, and that every other service says it cannot honour them."""

from __future__ import annotations

import httpx
import pytest

from sdgate.client import (
    A1111Backend,
    AsyncClient,
    Client,
    ComfyUIBackend,
    Hires,
    HuggingFaceBackend,
    ImageRequest,
    Lora,
    NativeBackend,
    OpenAIBackend,
    StabilityBackend,
    StabilityV2Backend,
    UnsupportedFeatureError,
)
from sdgate.client.backends import a1111
from sdgate.client.backends._base import A1111_EXTRAS
from tests.sdk.fakes import png_bytes

EVERYTHING = ImageRequest(
    prompt="a cat",
    n_iter=2,
    subseed=9,
    subseed_strength=0.3,
    seed_resize_from_w=32,
    seed_resize_from_h=48,
    clip_skip=2,
    tiling=True,
    eta=0.5,
    s_churn=0.1,
    s_tmin=0.2,
    s_tmax=0.9,
    s_noise=1.001,
    eta_noise_seed_delta=31337,
    resize_mode=1,
    image_cfg_scale=1.5,
    mask_blur=6,
    inpainting_fill=2,
    inpaint_full_res=True,
    inpaint_full_res_padding=16,
    inpainting_mask_invert=True,
    initial_noise_multiplier=0.9,
    hires=Hires(scale=1.5, second_pass_steps=4, denoising_strength=0.4, sampler="Euler a"),
    loras=(Lora("detail", 0.7), Lora("style", 0.5, unet_weight=0.25)),
    vae="kl-f8.safetensors",
    styles=("cinematic",),
)


def test_a1111_txt2img_body() -> None:
    body = a1111.request_body(EVERYTHING, "alpha")
    assert body["prompt"] == "a cat <lora:detail:0.7> <lora:style:0.5:0.25>"
    assert (body["n_iter"], body["subseed"], body["subseed_strength"]) == (2, 9, 0.3)
    assert (body["seed_resize_from_w"], body["seed_resize_from_h"], body["tiling"]) == (32, 48, True)
    assert (body["eta"], body["s_churn"], body["s_tmin"], body["s_tmax"], body["s_noise"]) == (
        0.5,
        0.1,
        0.2,
        0.9,
        1.001,
    )
    assert body["styles"] == ["cinematic"]
    assert body["enable_hr"] is True and body["hr_scale"] == 1.5 and body["hr_second_pass_steps"] == 4
    assert body["denoising_strength"] == 0.4 and body["hr_sampler_name"] == "Euler a"
    assert body["override_settings"] == {
        "sd_vae": "kl-f8.safetensors",
        "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337,
        "sd_model_checkpoint": "alpha",
    }
    assert "mask_blur" not in body and "resize_mode" not in body  # img2img's, not txt2img's
    assert A1111Backend("http://a.test").ignored_fields(EVERYTHING) == ()


def test_a1111_img2img_body_and_hires_is_txt2img_only() -> None:
    request = EVERYTHING.replace(
        init_image=png_bytes(), mask=png_bytes((255, 255, 255)), denoising_strength=0.6
    )
    body = a1111.request_body(request)
    assert (body["resize_mode"], body["image_cfg_scale"], body["mask_blur"], body["inpainting_fill"]) == (
        1,
        1.5,
        6,
        2,
    )
    assert body["inpaint_full_res"] is True and body["inpaint_full_res_padding"] == 16
    assert body["inpainting_mask_invert"] is True and body["initial_noise_multiplier"] == 0.9
    assert "enable_hr" not in body and body["denoising_strength"] == 0.6
    assert A1111Backend("http://a.test").ignored_fields(request) == ("hires",)


def test_a1111_plain_request_stays_plain() -> None:
    body = a1111.request_body(ImageRequest(prompt="x", seed=1))
    assert body == {"prompt": "x", "negative_prompt": "", "seed": 1, "batch_size": 1, "n_iter": 1}


@pytest.mark.parametrize(
    "backend",
    [
        StabilityBackend("http://s.test"),
        StabilityV2Backend("http://s.test"),
        OpenAIBackend("http://o.test"),
        HuggingFaceBackend("http://h.test", model="m"),
    ],
    ids=lambda b: b.kind,
)
def test_other_services_name_every_field_they_cannot_honour(backend) -> None:
    ignored = backend.ignored_fields(EVERYTHING)
    assert set(A1111_EXTRAS) <= set(ignored)
    assert all(backend.unsupported[name] for name in ignored)
    with pytest.raises(UnsupportedFeatureError, match="LoRAs") as info:
        backend.check(EVERYTHING, strict=True)
    assert "loras" in info.value.fields
    assert backend.ignored_fields(ImageRequest(prompt="x", n_iter=1, tiling=False, loras=())) == ()


def test_native_honours_everything() -> None:
    assert NativeBackend("http://n.test").ignored_fields(EVERYTHING) == ()


def test_the_result_says_what_was_ignored() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        import base64

        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(png_bytes()).decode()}]})

    client = Client("openai+http://o.test", transport=httpx.MockTransport(handler))
    result = client.txt2img("x", n_iter=2, loras=["detail:0.5"], vae="v")
    assert set(result.ignored_fields) == {"n_iter", "loras", "vae"}


async def test_a1111_n_iter_against_the_real_app(asgi_transport: httpx.ASGITransport) -> None:
    async with AsyncClient("a1111+http://sdgate", transport=asgi_transport) as client:
        result = await client.txt2img("a red circle", seed=5, n=1, n_iter=2, width=64, height=64, steps=2)
    assert result.seeds == [5, 6] and len(result.images) == 2


def test_comfyui_names_what_its_core_nodes_cannot_do() -> None:
    backend = ComfyUIBackend("http://c.test")
    ignored = set(backend.ignored_fields(EVERYTHING))
    honoured = {"n_iter", "clip_skip", "loras", "vae", "hires"}  # nodes in the graph (latent hires)
    assert ignored == set(A1111_EXTRAS) - honoured
    assert all(backend.unsupported[name] for name in ignored)
    with pytest.raises(UnsupportedFeatureError, match="tiling") as info:
        backend.check(EVERYTHING, strict=True)
    assert "tiling" in info.value.fields and "loras" not in info.value.fields
