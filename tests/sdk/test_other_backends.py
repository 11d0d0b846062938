"""OpenAI, Stability (v1, v2beta) and Hugging Face backends against small fakes of their wire
formats (``reference/other_apis.md`` §2-4), on MockTransport; backend choice from URLs."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from sdgate.client import (
    AsyncClient,
    Client,
    ConfigurationError,
    HuggingFaceBackend,
    InternalServerError,
    UnsupportedFeatureError,
)
from sdgate.client.backends import guess_kind, resolve_backend
from tests.sdk.fakes import Sleeps, png_bytes

B64 = base64.b64encode(png_bytes((0, 255, 0))).decode()


def recorder(answer):
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return httpx.MockTransport(handle), seen


def form_fields(request: httpx.Request) -> dict[str, str]:
    """The text fields of a multipart body (enough for these assertions)."""
    out: dict[str, str] = {}
    for part in request.content.split(b"--" + request.headers["content-type"].split("boundary=")[1].encode()):
        head, _, body = part.partition(b"\r\n\r\n")
        if b'name="' in head and b"filename=" not in head:
            name = head.split(b'name="')[1].split(b'"')[0].decode()
            out[name] = body.rstrip(b"\r\n").decode()
    return out


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://host:7860", "sdgate"),
        ("http://host:7860/sdapi/v1", "a1111"),
        ("http://host:8188", "comfyui"),
        ("https://api.stability.ai", "stability"),
        ("https://api.stability.ai/v2beta", "stability-v2beta"),
        ("https://api.openai.com/v1", "openai"),
        ("https://router.huggingface.co/hf-inference/models/x/y", "hf"),
    ],
)
def test_backend_guess(url: str, kind: str) -> None:
    assert guess_kind(url) == kind


def test_explicit_kind_prefix_and_argument() -> None:
    assert resolve_backend("comfyui+http://h:1234").kind == "comfyui"
    assert resolve_backend("comfyui+http://h:1234").base_url == "http://h:1234"
    assert resolve_backend("http://h:1", kind="openai").kind == "openai"
    assert Client("http://h:1", backend="stability").backend.kind == "stability"
    with pytest.raises(ConfigurationError):
        resolve_backend("not a url")


# -- OpenAI -----------------------------------------------------------------------------------------


def test_openai_generations() -> None:
    transport, seen = recorder(
        lambda r: httpx.Response(200, json={"created": 1, "data": [{"b64_json": B64}] * 2})
    )
    client = Client("https://api.openai.com/v1", api_key="sk-o", transport=transport)
    result = client.txt2img("a red circle", width=512, height=512, n=2, model="dall-e-2", steps=30, seed=1)
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v1/images/generations"
    assert body == {
        "prompt": "a red circle",
        "n": 2,
        "response_format": "b64_json",
        "model": "dall-e-2",
        "size": "512x512",
    }
    assert seen[0].headers["authorization"] == "Bearer sk-o"
    assert len(result.images) == 2 and result.seeds == [None, None]
    assert result.ignored_fields == ("steps", "seed")


def test_openai_url_responses_are_fetched() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/files/x.png":
            return httpx.Response(200, content=png_bytes())
        return httpx.Response(200, json={"data": [{"url": "https://cdn.test/files/x.png"}]})

    transport, seen = recorder(answer)
    assert len(Client("openai+http://local.test", transport=transport).txt2img("x").images) == 1
    assert str(seen[1].url) == "https://cdn.test/files/x.png"


def test_openai_inpaint_sends_transparency_mask() -> None:
    transport, seen = recorder(lambda r: httpx.Response(200, json={"data": [{"b64_json": B64}]}))
    client = Client("openai+http://local.test", transport=transport)
    init = png_bytes((10, 20, 30), size=(4, 4))
    mask_img = Image.new("L", (4, 4), 0)
    mask_img.putpixel((0, 0), 255)  # white = repaint, our convention
    client.inpaint("x", init_image=init, mask=mask_img)
    assert seen[0].url.path == "/v1/images/edits"
    raw = seen[0].content
    png = raw[raw.index(b"\x89PNG") :]
    sent = Image.open(io.BytesIO(png))
    assert sent.mode == "RGBA" and sent.getpixel((0, 0))[3] == 0 and sent.getpixel((1, 1))[3] == 255
    with pytest.raises(UnsupportedFeatureError, match="img2img"):
        client.img2img("x", init_image=init)


def test_openai_error_body() -> None:
    transport, _ = recorder(
        lambda r: httpx.Response(
            400, json={"error": {"message": "bad size", "type": "x", "param": "size", "code": None}}
        )
    )
    with pytest.raises(Exception, match="bad size"):
        Client("openai+http://local.test", transport=transport).txt2img("x")


# -- Stability --------------------------------------------------------------------------------------


def test_stability_v1_text_to_image() -> None:
    transport, seen = recorder(
        lambda r: httpx.Response(
            200, json={"artifacts": [{"base64": B64, "seed": 11, "finishReason": "SUCCESS"}]}
        )
    )
    client = Client("https://api.stability.ai", api_key="sk-s", transport=transport)
    result = client.txt2img(
        "a cat",
        negative_prompt="dog",
        width=512,
        height=512,
        steps=30,
        cfg_scale=7,
        sampler="Euler a",
        scheduler="karras",
        seed=11,
    )
    assert seen[0].url.path == "/v1/generation/stable-diffusion-v1-6/text-to-image"
    assert json.loads(seen[0].content) == {
        "samples": 1,
        "seed": 11,
        "cfg_scale": 7,
        "steps": 30,
        "sampler": "K_EULER_ANCESTRAL",
        "text_prompts": [{"text": "a cat", "weight": 1.0}, {"text": "dog", "weight": -1.0}],
        "width": 512,
        "height": 512,
    }
    assert seen[0].headers["accept"] == "application/json"
    assert result.seeds == [11] and result.ignored_fields == ("scheduler",)


def test_stability_v1_img2img_and_masking_are_multipart() -> None:
    transport, seen = recorder(
        lambda r: httpx.Response(
            200, json={"artifacts": [{"base64": B64, "seed": 1, "finishReason": "SUCCESS"}]}
        )
    )
    client = Client("https://api.stability.ai", transport=transport, model="stable-diffusion-xl-1024-v1-0")
    client.img2img("a cat", init_image=png_bytes(), denoising_strength=0.25)
    client.inpaint("a cat", init_image=png_bytes(), mask=png_bytes((255, 255, 255)))
    assert seen[0].url.path == "/v1/generation/stable-diffusion-xl-1024-v1-0/image-to-image"
    fields = form_fields(seen[0])
    assert fields["image_strength"] == "0.75" and fields["text_prompts[0][text]"] == "a cat"
    assert seen[1].url.path.endswith("/image-to-image/masking")
    assert form_fields(seen[1])["mask_source"] == "MASK_IMAGE_WHITE"


def test_stability_v1_error_and_filtered() -> None:
    transport, _ = recorder(
        lambda r: httpx.Response(
            404, json={"id": "1", "name": "not_found", "message": "The specified engine was not found."}
        )
    )
    with pytest.raises(Exception, match="engine was not found") as info:
        Client("https://api.stability.ai", transport=transport).txt2img("x")
    assert info.value.code == "not_found"


def test_stability_v2beta() -> None:
    transport, seen = recorder(
        lambda r: httpx.Response(200, json={"image": B64, "finish_reason": "SUCCESS", "seed": 5})
    )
    client = Client("https://api.stability.ai/v2beta", api_key="sk", transport=transport)
    result = client.txt2img("a cat", width=1024, height=576, seed=5, n=2, steps=20)
    assert [r.url.path for r in seen] == ["/v2beta/stable-image/generate/core"] * 2
    fields = form_fields(seen[0])
    assert fields["aspect_ratio"] == "16:9" and fields["seed"] == "5" and form_fields(seen[1])["seed"] == "6"
    assert result.seeds == [5, 5] and set(result.ignored_fields) == {"steps", "width", "height"}


# -- Hugging Face -----------------------------------------------------------------------------------


def test_hf_text_to_image_raw_bytes() -> None:
    transport, seen = recorder(
        lambda r: httpx.Response(200, content=png_bytes(), headers={"content-type": "image/png"})
    )
    client = Client(
        "https://router.huggingface.co/hf-inference/models/stabilityai/sdxl",
        api_key="hf_x",
        transport=transport,
    )
    result = client.txt2img(
        "a cat",
        negative_prompt="dog",
        width=512,
        height=512,
        steps=20,
        cfg_scale=5,
        seed=3,
        n=2,
        sampler="Euler",
    )
    assert str(seen[0].url) == "https://router.huggingface.co/hf-inference/models/stabilityai/sdxl"
    assert json.loads(seen[0].content) == {
        "inputs": "a cat",
        "parameters": {
            "negative_prompt": "dog",
            "height": 512,
            "width": 512,
            "num_inference_steps": 20,
            "guidance_scale": 5,
            "seed": 3,
        },
    }
    assert json.loads(seen[1].content)["parameters"]["seed"] == 4
    assert seen[0].headers["accept"] == "image/png" and seen[0].headers["authorization"] == "Bearer hf_x"
    assert result.seeds == [3, 4] and result.ignored_fields == ("sampler",)


def test_hf_model_from_argument_and_loading_503() -> None:
    answers = [
        httpx.Response(503, json={"error": "Model x is currently loading", "estimated_time": 2.0}),
        httpx.Response(200, content=png_bytes()),
    ]
    transport, seen = recorder(lambda r: answers.pop(0))
    client = Client("hf+http://hf.test", model="org/model", transport=transport)
    client._sleep = Sleeps()
    client.txt2img("x")
    assert seen[-1].url.path == "/models/org/model" and len(seen) == 2
    with pytest.raises(ConfigurationError, match="model id"):
        HuggingFaceBackend("http://hf.test").endpoint(__import__("sdgate").ImageRequest(prompt="x"))


def test_hf_refuses_img2img_clearly() -> None:
    client = Client("hf+http://hf.test/models/a/b")
    with pytest.raises(UnsupportedFeatureError, match="cannot do img2img"):
        client.img2img("x", init_image=png_bytes())


async def test_async_client_other_backends() -> None:
    transport, _ = recorder(lambda r: httpx.Response(500, json={"error": "boom"}))
    async with AsyncClient("hf+http://hf.test/models/a/b", transport=transport, max_retries=0) as client:
        with pytest.raises(InternalServerError, match="boom"):
            await client.txt2img("x")


@pytest.mark.parametrize(
    ("url", "response"),
    [
        ("https://api.stability.ai/v2beta", httpx.Response(200, json={})),
        ("a1111+http://a.test", httpx.Response(200, text="<html>proxy login</html>")),
        ("openai+http://o.test", httpx.Response(200, json={"data": [{"b64_json": "bm90IGFuIGltYWdl"}]})),
    ],
)
def test_unexpected_answers_are_api_response_errors(url: str, response: httpx.Response) -> None:
    from sdgate.client import APIResponseError

    transport, _ = recorder(lambda r: response)
    with pytest.raises(APIResponseError):
        Client(url, transport=transport).txt2img("x")


def test_a1111_img2img_and_inpaint_bodies() -> None:
    """Our server has no /sdapi/v1/img2img yet: the body is checked against A1111's wire format."""
    answer = {"images": [B64], "parameters": {}, "info": json.dumps({"all_seeds": [4], "infotexts": ["t"]})}
    transport, seen = recorder(lambda r: httpx.Response(200, json=answer))
    client = Client("http://a.test/sdapi/v1", transport=transport, model="alpha")
    init, mask = png_bytes(), png_bytes((255, 255, 255))
    result = client.inpaint(
        "x", init_image=init, mask=mask, denoising_strength=0.6, seed=4, sampler="Euler a"
    )
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/sdapi/v1/img2img"
    assert base64.b64decode(body["init_images"][0]) == init and base64.b64decode(body["mask"]) == mask
    assert (body["denoising_strength"], body["seed"], body["sampler_name"]) == (0.6, 4, "Euler a")
    assert body["override_settings"] == {"sd_model_checkpoint": "alpha"}
    assert result.seeds == [4] and result.infotexts == ["t"]
    client.txt2img("y")
    assert json.loads(seen[1].content)["seed"] == -1 and seen[1].url.path == "/sdapi/v1/txt2img"
