"""Issue 13's hostile inputs on the Stability routes: each a 400 in Stability's shape, no job."""

from __future__ import annotations

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.server.dialects.stability.test_v1 import T2I, assert_error, png_bytes

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"text_prompts": [{"text": "cat", "weight": NaN}]}', "text_prompts.0.weight"),
        ('{"text_prompts": [{"text": "cat"}], "cfg_scale": Infinity}', "cfg_scale"),
        ('{"text_prompts": [{"text": "cat"}], "cfg_scale": 1e999}', "cfg_scale"),
        ('{"text_prompts": [{"text": "cat"}], "seed": false}', "seed"),
        ('{"text_prompts": [{"text": "cat"}], "samples": "2"}', "samples"),
        ('{"text_prompts": [{"text": "cat"}], "width": 4096}', "width"),
    ],
)
def test_bad_numbers_are_400_and_leave_no_job(live: str, engine: FakeEngine, body: str, field: str) -> None:
    before = len(engine.calls)
    r = httpx.post(live + T2I, content=body, headers=JSON)
    assert_error(r, 400, "invalid_samples" if field == "samples" else
                 "invalid_height_or_width" if field == "width" else "bad_request")
    assert r.json()["message"].startswith(f"{field}:")
    assert len(engine.calls) == before


def test_nan_weight_in_a_form_is_400(live: str, engine: FakeEngine) -> None:
    before = len(engine.calls)
    form = {"text_prompts[0][text]": "cat", "text_prompts[0][weight]": "nan"}
    r = httpx.post(live + "/v1/generation/stable-diffusion-v1-6/image-to-image", data=form,
                   files={"init_image": ("i.png", png_bytes((64, 64)), "image/png")})
    assert_error(r, 400, "bad_request")
    assert "text_prompts.0.weight" in r.json()["message"]
    assert len(engine.calls) == before


@pytest.mark.parametrize(
    "path",
    ["/v1/generation/stable-diffusion-v1-6/image-to-image", "/v2beta/stable-image/generate/core"],
)
def test_a_broken_multipart_body_answers_in_stability_shape(live: str, path: str) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    r = httpx.post(live + path, content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n",
                   headers=headers)
    assert r.status_code == 400, r.text
    body = r.json()
    assert "detail" not in body and body["name"] == "bad_request"
