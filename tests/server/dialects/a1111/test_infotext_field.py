"""The A1111 ``infotext`` request field fills what the request left unset (reference §1.1)."""

from __future__ import annotations

import httpx
import pytest

from sdgate.core.errors import InvalidRequest
from sdgate.server.dialects.a1111.infotext_fields import with_infotext
from sdgate.server.dialects.a1111.protocol import Img2ImgRequest, Txt2ImgRequest
from tests.fakes import FakeEngine

TXT2IMG_INFOTEXT = (
    "a (red:1.2) circle, on blue\n"
    "Negative prompt: blurry\n"
    "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 1234, Size: 320x256, "
    "Model hash: abcdef1234, Model: other, Variation seed: 99, Variation seed strength: 0.25, "
    "Denoising strength: 0.55, Clip skip: 2, ENSD: 31337, Tiling: True, NGMS: 0.5, Sigma churn: 0.2, "
    "Hires upscale: 1.5, Hires steps: 5, "
    "Hires upscaler: Latent (nearest), Version: v1.10.1"
)


def test_every_pasted_field_fills_an_unset_request_field() -> None:
    body = with_infotext(Txt2ImgRequest(infotext=TXT2IMG_INFOTEXT))
    assert body.prompt == "a (red:1.2) circle, on blue"
    assert body.negative_prompt == "blurry"
    assert (body.steps, body.sampler_name, body.scheduler, body.cfg_scale) == (12, "DPM++ 2M", "Karras", 4.5)
    assert (body.seed, body.width, body.height) == (1234, 320, 256)  # pasted text typed as JSON values
    assert (body.subseed, body.subseed_strength) == (99, 0.25)
    assert body.enable_hr is True
    assert (body.hr_scale, body.hr_second_pass_steps, body.hr_upscaler) == (1.5, 5, "Latent (nearest)")
    assert body.denoising_strength == 0.55
    assert body.tiling is True
    assert (body.s_min_uncond, body.s_churn) == (0.5, 0.2)
    assert body.override_settings == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}


def test_fields_the_request_sets_win_over_the_infotext() -> None:
    body = with_infotext(
        Txt2ImgRequest(
            infotext=TXT2IMG_INFOTEXT,
            prompt="mine",
            steps=3,
            override_settings={"CLIP_stop_at_last_layers": 1},
        )
    )
    assert (body.prompt, body.steps) == ("mine", 3)
    assert body.cfg_scale == 4.5  # not set by the request: pasted
    assert body.override_settings == {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 31337}


def test_no_infotext_leaves_the_body_alone() -> None:
    body = Txt2ImgRequest(prompt="x")
    assert with_infotext(body) is body


def test_plain_txt2img_infotext_does_not_enable_hires() -> None:
    body = with_infotext(Txt2ImgRequest(infotext="a cat\nSteps: 7, Sampler: Euler a, CFG scale: 7, Seed: 5"))
    assert body.enable_hr is False
    assert body.steps == 7
    assert body.sampler_name == "Euler a"


def test_the_model_is_taken_only_when_the_server_knows_it() -> None:
    known = {"abcdef1234": "tiny-sd15.safetensors [abcdef1234]"}
    body = with_infotext(Txt2ImgRequest(infotext=TXT2IMG_INFOTEXT), resolve_model=known.get)
    assert body.override_settings is not None
    assert body.override_settings["sd_model_checkpoint"] == "tiny-sd15.safetensors [abcdef1234]"
    body = with_infotext(Txt2ImgRequest(infotext=TXT2IMG_INFOTEXT), resolve_model=lambda _: None)
    assert body.override_settings is not None
    assert "sd_model_checkpoint" not in body.override_settings


def test_the_vae_is_taken_only_when_the_server_has_it() -> None:
    text = "a cat\nSteps: 4, Sampler: Euler, Seed: 1, VAE hash: 0123456789, VAE: blue.safetensors"
    known = {"blue.safetensors": "blue.safetensors"}
    body = with_infotext(Txt2ImgRequest(infotext=text), resolve_vae=known.get)
    assert body.override_settings is not None
    assert body.override_settings["sd_vae"] == "blue.safetensors"
    body = with_infotext(Txt2ImgRequest(infotext=text), resolve_vae=lambda _: None)
    assert body.override_settings is not None
    assert "sd_vae" not in body.override_settings


def test_img2img_reads_the_inpaint_choices() -> None:
    text = (
        "a cat\nSteps: 8, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Denoising strength: 0.4, "
        "Mask blur: 2, Masked content: latent noise, Inpaint area: Only masked, Masked area padding: 12, "
        "Mask mode: Inpaint not masked"
    )
    body = with_infotext(Img2ImgRequest(infotext=text))
    assert body.denoising_strength == 0.4
    assert (body.mask_blur, body.inpainting_fill, body.inpaint_full_res) == (2, 2, True)
    assert (body.inpaint_full_res_padding, body.inpainting_mask_invert) == (12, 1)
    assert not hasattr(body, "enable_hr")


def test_a_bad_value_is_a_400_naming_the_infotext_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        with_infotext(Txt2ImgRequest(infotext="a cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 5"))
    assert info.value.field == "infotext"
    assert "steps" in str(info.value)


async def test_route_re_runs_a_pasted_infotext(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    text = (
        "a red circle\nNegative prompt: blurry\n"
        "Steps: 4, Sampler: DPM++ 2M, CFG scale: 5, Seed: 77, Size: 64x48"
    )
    r = await client.post("/sdapi/v1/txt2img", json={"infotext": text, "cfg_scale": 9})
    assert r.status_code == 200, r.text
    call = engine.calls[0]
    assert (call.prompt, call.negative_prompt, call.steps) == ("a red circle", "blurry", 4)
    assert (call.sampler, call.seed, call.width, call.height) == ("DPM++ 2M", 77, 64, 48)
    assert call.cfg_scale == 9  # set by the request itself
    assert r.json()["parameters"]["steps"] == 4  # A1111 echoes the request after the paste


async def test_route_reports_a_bad_infotext_value(client: httpx.AsyncClient) -> None:
    r = await client.post("/sdapi/v1/txt2img", json={"infotext": "x\nSteps: lots, Sampler: Euler, Seed: 1"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("infotext:")
