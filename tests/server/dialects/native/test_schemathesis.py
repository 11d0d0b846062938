"""Property-based: schemathesis drives every native and ops operation from /openapi.json with all
its default checks: no 5xx, no status, header or body the schema does not state, invalid data
refused, valid data accepted.

One check is narrowed, not dropped: a request valid by the schema may still be refused with a 400
where the refusal depends on the server's settings or state, which a static schema cannot state.
``RUNTIME_REFUSALS`` lists, per operation, the fields such a 400 may name; any other refusal of
valid data (a 422, or a 400 naming another field) fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import jsonschema
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance

from sdgate.core.requests import MAX_SEED
from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import ThreadServer

pytestmark = pytest.mark.slow

# Fields a schema-valid request may still be refused for (400, or 413 for a size), and why.
RUNTIME_REFUSALS: dict[str, frozenset[str]] = {
    "POST /api/v1/jobs": frozenset({
        # the model's own VAE factor, the server's max_side / max_pixels / max_steps /
        # max_batch_images, and derived values (hires size and steps): settings and the model
        "width", "height", "steps", "batch_size", "n_iter", "seed_resize_from_w", "seed_resize_from_h",
        "hires", "hires.scale", "hires.resize_x", "hires.resize_y", "hires.second_pass_steps",
        # names the server must know (samplers match in any case, with suffixes: no enum)
        "sampler", "scheduler", "hires.sampler", "hires.scheduler", "hires.upscaler",
        # images must decode; a mode needs the images it works on
        "init_image", "mask", "mode", *(f"init_images.{i}" for i in range(16)),
        # the server's max_metadata_bytes and prompt limits; a callback must be a public http(s) URL
        "metadata", "prompt", "negative_prompt", "hires.prompt", "hires.negative_prompt", "callback_url",
        "refiner_switch_at", "restore_faces",
    }),
    "GET /api/v1/jobs": frozenset({"cursor"}),  # a cursor this server returned
    "POST /api/v1/uploads": frozenset({"file"}),  # the bytes must be an image
    # a preprocessor this server runs; the image must decode
    "POST /api/v1/controlnet/detect": frozenset({"module", "image"}),
    "GET /api/v1/jobs/{job_id}/events": frozenset({"Last-Event-ID"}),  # an id the stream sent
}
# ``?wait=`` long polls up to 60 s; the fuzzer's waits are cut to this.
MAX_WAIT_S = 0.5
EXAMPLES = 25


@pytest.fixture(scope="module")
def native_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("schemathesis")
    write_fake_checkpoint(root / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", worker_poll_s=0.05,
                        max_steps=50, max_batch_images=4, max_side=1024, max_pixels=1024 * 1024)
    with ThreadServer(create_app(settings, engine=FakeEngine())) as server:
        yield server


@pytest.fixture(scope="module")
def native_schema(native_server: ThreadServer) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{native_server.url}/openapi.json")


# Only the native API and the ops routes: other dialects test their own.
schema = schemathesis.pytest.from_fixture("native_schema").include(
    path_regex=r"^/(api/v1/|healthz$|readyz$|metrics$)"
)


def beyond_u64(value: object) -> bool:
    """An integer over 2**64-1 somewhere in ``value``: the generator rounds the schema's maximum
    of 2**64-1 (seeds) through a float and draws a few values just over it. Not a server fault."""
    if isinstance(value, dict):
        return any(beyond_u64(v) for v in value.values())
    if isinstance(value, list):
        return any(beyond_u64(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and value > MAX_SEED


def body_is_valid(case: schemathesis.Case) -> bool:
    """Whether a JSON body is valid by the operation's schema, judged by jsonschema itself."""
    if not isinstance(case.body, dict) or "json" not in (case.media_type or ""):
        return True
    raw = case.operation.schema.raw_schema
    content = raw["paths"][case.path][case.method.lower()]["requestBody"]["content"]
    body_schema = {**content[case.media_type]["schema"], "components": raw["components"]}
    return jsonschema.Draft202012Validator(body_schema).is_valid(case.body)


def check_refusal(case: schemathesis.Case, response: schemathesis.Response) -> None:
    """``positive_data_acceptance``, less the documented runtime refusals."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    if not body_is_valid(case):  # the coverage phase labels some invalid bodies positive
        return
    if response.status_code in (404, 409, 429):  # a job, image or name that does not exist; a full queue
        return
    if response.status_code == 403 and case.path.startswith("/api/v1/keys"):
        return  # the keys API needs an admin key; this server has no credentials (auth.py)
    allowed = RUNTIME_REFUSALS.get(f"{case.method.upper()} {case.path}", frozenset())
    field = (response.json().get("error") or {}).get("field")
    assert response.status_code in (400, 413) and field in allowed, (
        f"valid data refused: {case.method} {case.path} -> {response.status_code} {response.text[:500]}"
    )


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                     derandomize=True)
def test_every_operation_keeps_its_schema(case: schemathesis.Case, native_server: ThreadServer) -> None:
    if case.meta is not None and case.meta.generation.mode.is_positive:
        hypothesis.assume(not beyond_u64(case.body))
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool):
        case.query["wait"] = min(wait, MAX_WAIT_S)
    response = case.call_and_validate(
        base_url=native_server.url, timeout=30, excluded_checks=[positive_data_acceptance]
    )
    check_refusal(case, response)


def test_the_schema_covers_the_native_routes(native_schema: schemathesis.schemas.BaseSchema) -> None:
    paths = set(native_schema.raw_schema["paths"])
    job = "/api/v1/jobs/{job_id}"
    jobs = {"/api/v1/jobs", job, f"{job}/cancel", f"{job}/retry", f"{job}/events"}
    others = {"/api/v1/uploads", "/api/v1/images/{image_id}", "/api/v1/models", "/api/v1/samplers",
              "/api/v1/schedulers", "/api/v1/queue", "/healthz", "/readyz"}
    assert jobs | others <= paths

