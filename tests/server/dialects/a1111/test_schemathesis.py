"""Property-based: schemathesis drives every /sdapi/v1 operation from /openapi.json with all its
checks (no 5xx, statuses and bodies as documented, bad data refused, valid data accepted).

Valid-by-schema data may still be refused where the refusal depends on more than one field or on
what this server has installed, which no schema can state: those refusals are listed in
``RUNTIME_REFUSALS`` (each a 4xx in A1111's shape naming the field) and only they are let through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import positive_data_acceptance

from sdgate.core.requests import MAX_SEED
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import ThreadServer

pytestmark = pytest.mark.slow

# Operations that change the whole server: server-stop is refused (404) while not enabled, which the
# fixture keeps; nothing else here is harmful to the shared fixture.
EXCLUDED = r"^/sdapi/v1/server-stop$"

# (field, why): a valid-by-schema value the server may still refuse, with the reason.
RUNTIME_REFUSALS: dict[str, str] = {
    "infotext": "free text parsed at run time: a pasted value that does not parse (Clip skip: abc)",
    "width": "width x height over max_pixels (two fields)",
    "batch_size": "batch_size x n_iter over max_batch_images (two fields)",
    "hr_scale": "the size after hires fix over the limits (three fields)",
    "hr_resize_x": "the size after hires fix over the limits",
    "hr_resize_y": "the size after hires fix over the limits",
    "steps": "steps plus hires steps over max_steps",
    "hr_second_pass_steps": "steps plus hires steps over max_steps",
    "prompt": "prompt bytes or tokens over the limit (the schema counts characters)",
    "negative_prompt": "as prompt",
    "hr_prompt": "as prompt",
    "hr_negative_prompt": "as prompt",
    "styles": "a style this server does not have (404)",
    "sd_model_checkpoint": "a checkpoint this server does not have (404)",
    "sd_vae": "a VAE this server does not have (400)",
    "refiner_checkpoint": "a checkpoint this server does not have",
    "refiner_switch_at": "needs a refiner_checkpoint",
    "hr_checkpoint_name": "a checkpoint this server does not have",
    "hr_upscaler": "an upscaler this server does not have",
    "restore_faces": "no face restorer installed",
    "face_restoration_model": "no face restorer installed",
    "gfpgan_visibility": "no face restorer installed",
    "codeformer_visibility": "no face restorer installed",
    "upscaler_1": "an upscaler this server does not have",
    "upscaler_2": "an upscaler this server does not have",
    "upscaling_resize": "the upscaled size over the limits (depends on the image)",
    "script_name": "script names match in any case; an unknown one is A1111's 422",
    "script_args": "each script checks its own arguments",
    "script": "as script_name (A1111's detail: Script '...' not found)",
    "init_images": "an image must decode (the schema says string)",
    "mask": "an image must decode",
    "image": "an image must decode",
    "imageList": "an image must decode",
    "model": "interrogate: the interrogator is installed for the demo model only",
    "firstphase_width": "legacy hires fix: both firstphase sizes or neither",
    "firstphase_height": "legacy hires fix: both firstphase sizes or neither",
    "seed_resize_from_w": "a multiple of the model's own VAE factor",
    "seed_resize_from_h": "a multiple of the model's own VAE factor",
    "sampler_name": "a sampler unknown with this scheduler suffix",
}


@pytest.fixture(scope="module")
def a1111_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("schemathesis-a1111")
    write_fake_checkpoint(root / "models" / "Stable-diffusion" / "alpha.safetensors")
    # Small images and batches keep the run short: a request over them is refused as a two-field
    # limit (width, batch_size in RUNTIME_REFUSALS); every other limit is the default the schema states.
    settings = Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", worker_poll_s=0.05,
                        max_pixels=256 * 256, max_batch_images=4)
    with ThreadServer(create_app(settings, engine=FakeEngine())) as server:
        yield server


@pytest.fixture(scope="module")
def a1111_schema(a1111_server: ThreadServer) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{a1111_server.url}/openapi.json")


schema = (
    schemathesis.pytest.from_fixture("a1111_schema")
    .include(path_regex=r"^/sdapi/v1/")
    .exclude(path_regex=EXCLUDED)
)


def _named_field(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("detail"), list) and body["detail"]:
        loc = [str(p) for p in body["detail"][0].get("loc", ()) if p != "body"]
        return loc[-1] if loc else None
    # A1111's shape: the detail starts with the field ("init_images.0: ...", "Image not found").
    match = re.match(r"\s*([\w.]+)", str(body.get("detail") or ""))
    parts = [p for p in match.group(1).lower().split(".") if not p.isdigit()] if match else []
    known = {name.lower(): name for name in RUNTIME_REFUSALS}
    return next((known[p] for p in reversed(parts) if p in known), parts[-1] if parts else None)


def _too_big_seed(case: schemathesis.Case, field: str) -> bool:
    value = case.body.get(field) if isinstance(case.body, dict) else None
    return isinstance(value, int) and value > MAX_SEED


def _accepted_or_runtime_refusal(case: schemathesis.Case, response: requests.Response) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    field = _named_field(response)
    if field in ("seed", "subseed") and _too_big_seed(case, field):
        return  # the fuzzer reads the schema's maximum (2**64-1) as a float and goes past it
    assert 400 <= response.status_code < 500 and field in RUNTIME_REFUSALS, (
        f"valid data refused: {case.method} {case.path} -> {response.status_code} {response.text[:500]}"
    )


@schema.parametrize()
@hypothesis.settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_every_a1111_operation_passes_all_checks(case: schemathesis.Case, a1111_server: ThreadServer) -> None:
    response = case.call(base_url=a1111_server.url, timeout=60)
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
    _accepted_or_runtime_refusal(case, response)


def test_the_schema_covers_every_a1111_route(a1111_schema: schemathesis.schemas.BaseSchema) -> None:
    paths = {p for p in a1111_schema.raw_schema["paths"] if p.startswith("/sdapi/v1/")}
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options", "/sdapi/v1/png-info",
            "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images", "/sdapi/v1/interrogate"} <= paths
    assert len(paths) >= 33  # every route but server-stop, which is excluded
