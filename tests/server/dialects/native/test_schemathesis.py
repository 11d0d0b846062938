"""Property-based: schemathesis drives every native route from /openapi.json; none answers 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from sdgate.server.app import create_app
from sdgate.settings import Settings
from tests.server.dialects.native.conftest import ThreadServer
from tests.server.fakes import FakeEngine, write_fake_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def native_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    root = tmp_path_factory.mktemp("schemathesis")
    write_fake_checkpoint(root / "models" / "Stable-diffusion" / "alpha.safetensors")
    settings = Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", worker_poll_s=0.05,
                        max_steps=50, max_batch_images=4)
    with ThreadServer(create_app(settings, engine=FakeEngine())) as server:
        yield server


@pytest.fixture(scope="module")
def native_schema(native_server: ThreadServer) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{native_server.url}/openapi.json")


# Only the native API and the ops routes: other dialects test their own.
schema = schemathesis.pytest.from_fixture("native_schema").include(path_regex=r"^/(api/v1/|healthz|readyz)")


@schema.parametrize()
@hypothesis.settings(max_examples=30, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_route_answers_5xx(case: schemathesis.Case, native_server: ThreadServer) -> None:
    response = case.call(base_url=native_server.url, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])


def test_the_schema_covers_the_native_routes(native_schema: schemathesis.schemas.BaseSchema) -> None:
    paths = set(native_schema.raw_schema["paths"])
    job = "/api/v1/jobs/{job_id}"
    jobs = {"/api/v1/jobs", job, f"{job}/cancel", f"{job}/retry", f"{job}/events"}
    others = {"/api/v1/uploads", "/api/v1/images/{image_id}", "/api/v1/models", "/api/v1/samplers",
              "/api/v1/schedulers", "/api/v1/queue", "/healthz", "/readyz"}
    assert jobs | others <= paths


