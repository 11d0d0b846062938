"""The official ``openai`` package, unchanged but for base_url, against a real uvicorn."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from sdgate.core.requests import Mode
from sdgate.jobs.images import LocalImageStore
from sdgate.settings import Settings
from tests.fakes import FakeEngine
from tests.harness import serve
from tests.server.dialects.stability.loopback import fresh


@pytest.fixture
def client(live: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live + "/v1", api_key="sk-local")


def png_file(image: Image.Image) -> io.BytesIO:
    out = io.BytesIO()
    image.save(out, format="PNG")
    out.seek(0)
    out.name = "image.png"
    return out


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_b64(client: openai.OpenAI, engine: FakeEngine) -> None:
    result = client.images.generate(
        model="dall-e-3",
        prompt="a red circle",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"negative_prompt": "blue", "steps": 9, "seed": 5},
    )
    assert len(result.data) == 2
    assert decode(result.data[0].b64_json).size == (256, 256)
    gen = engine.calls[-1]
    assert (gen.prompt, gen.negative_prompt, gen.steps, gen.seed, gen.batch_size) == (
        "a red circle",
        "blue",
        9,
        5,
        2,
    )


def test_generate_url_is_signed_and_expires(client: openai.OpenAI, live: str) -> None:
    result = client.images.generate(prompt="a cat", size="512x512")  # dall-e default: url
    url = result.data[0].url
    assert url and url.startswith(live + "/v1/images/files/img_")
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (512, 512)
    tampered = url.replace("signature=", "signature=0")
    bad = httpx.get(tampered)
    assert bad.status_code == 404 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_generate_gpt_image_defaults_to_b64_and_output_format(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="x", size="1024x1024", output_format="jpeg", output_compression=70
    )
    assert result.data[0].url is None and result.output_format == "jpeg"
    assert decode(result.data[0].b64_json).format == "JPEG"


def test_edit_transparent_mask_means_edit(
    client: openai.OpenAI, engine: FakeEngine, settings: Settings
) -> None:
    image = Image.new("RGBA", (128, 128), (200, 10, 10, 255))
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 128))  # the left half is transparent: edit it
    result = client.images.edit(
        model="dall-e-2",
        image=png_file(image),
        mask=png_file(mask),
        prompt="a hat",
        response_format="b64_json",
        size="128x128",
    )
    assert decode(result.data[0].b64_json).size == (128, 128)
    gen = engine.calls[-1]
    assert gen.mode == Mode.INPAINT and gen.denoising_strength == 1.0 and not gen.inpainting_mask_invert
    assert gen.mask is not None
    stored = Image.open(io.BytesIO(LocalImageStore(settings.images_dir).get(gen.mask))).convert("L")
    assert stored.getpixel((10, 10)) == 255 and stored.getpixel((120, 10)) == 0


def test_edit_without_mask_uses_image_alpha_or_whole_image(client: openai.OpenAI, engine: FakeEngine) -> None:
    cut = Image.new("RGBA", (64, 64), (1, 2, 3, 255))
    cut.paste((0, 0, 0, 0), (0, 0, 32, 32))
    client.images.edit(image=png_file(cut), prompt="fill", response_format="b64_json")
    assert engine.calls[-1].mode == Mode.INPAINT
    client.images.edit(
        image=png_file(Image.new("RGB", (64, 64))), prompt="restyle", response_format="b64_json"
    )
    gen = engine.calls[-1]
    assert (gen.mode, gen.mask, gen.denoising_strength, gen.width) == (Mode.IMG2IMG, None, 0.75, 64)


def test_edit_mask_size_mismatch_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.images.edit(
            image=png_file(Image.new("RGB", (64, 64))), mask=png_file(Image.new("RGBA", (32, 32))), prompt="x"
        )
    assert info.value.body["param"] == "mask"  # type: ignore[index]


def test_create_variation(client: openai.OpenAI, engine: FakeEngine) -> None:
    result = client.images.create_variation(
        image=png_file(Image.new("RGB", (256, 256), "blue")), n=2, response_format="b64_json", size="256x256"
    )
    assert len(result.data) == 2
    gen = engine.calls[-1]
    assert (gen.mode, gen.batch_size, gen.denoising_strength, len(gen.init_images)) == (
        Mode.IMG2IMG,
        2,
        0.6,
        1,
    )


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"alpha", "dall-e-3", "gpt-image-1"} <= ids


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 11}, "n"),
        ({"size": "big"}, "size"),
        ({"size": "500x500"}, "size"),  # the schema's pattern: sides are multiples of 16
        ({"size": "4096x4096"}, "size"),
        ({"n": "2"}, "n"),  # OpenAI refuses a string for an integer
        ({"extra_body": {"seed": False}}, "seed"),
        ({"prompt": ""}, "prompt"),
        ({"extra_body": {"sampler": "nope"}}, "sampler"),
        ({"response_format": "gif"}, "response_format"),
    ],
)
def test_user_errors_are_400_and_not_retried(
    client: openai.OpenAI, engine: FakeEngine, kwargs: dict[str, object], param: str
) -> None:
    args: dict[str, object] = {"prompt": "x", **kwargs}
    before = len(engine.calls)
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**args)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 400
    assert err.body["param"] == param and err.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert len(engine.calls) == before  # refused before any job was queued


def test_unknown_model_strict_is_404(settings: Settings, tmp_path: Path) -> None:
    with serve(fresh(settings, tmp_path, strict_models=True), FakeEngine()) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k")
        with pytest.raises(openai.NotFoundError) as info:
            client.images.generate(model="my-model", prompt="x")
        assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
        client.images.generate(model="dall-e-3", prompt="x", response_format="b64_json")


def test_failed_generation_is_not_retried(client: openai.OpenAI, engine: FakeEngine) -> None:
    before = len(engine.calls)
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(prompt="boom", response_format="b64_json")
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(engine.calls) == before + 1  # the client did not send it again


def test_unknown_fields_are_accepted_and_logged(
    client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="sdgate.openai"):
        for _ in range(2):
            client.images.generate(
                prompt="x",
                quality="hd",
                style="vivid",
                user="u1",
                response_format="b64_json",
                extra_body={"frobnicate": 1},
            )
    assert caplog.text.count("generations.frobnicate") == 1
