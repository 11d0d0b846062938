"""Schemathesis over the ComfyUI operations (plain and under /api): no input is a 500, every status
is a documented one, in the dialect's error shape. Whether a schema-valid request is accepted
depends on what the server holds (a graph's nodes and models, a file's name), so that check is left
out; ``/interrupt`` takes any body, as ComfyUI does."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.server.dialects.stability.fuzz import (
    MAX_EXAMPLES_SETTINGS,
    form_checks_excluded,
    fuzz_schema,
    fuzz_url,
    with_images,
)

__all__ = ["fuzz_schema", "fuzz_url"]
pytestmark = pytest.mark.slow

COMFY = (r"^(/api)?/(prompt|history|queue|interrupt|view|upload/(image|mask)|object_info|embeddings|models"
         r"|features|system_stats|extensions)(/|$)")
# /models/{folder} shares its path with Hugging Face's POST /models/{id} (its Allow lists both): the
# same route under /api stands for it.
schema = (schemathesis.pytest.from_fixture("fuzz_schema").include(path_regex=COMFY)
          .exclude(path_regex=r"^/models/"))


@schema.parametrize()
@hypothesis.settings(MAX_EXAMPLES_SETTINGS)
def test_comfyui_operations(case: schemathesis.Case, fuzz_url: str) -> None:
    with_images(case, ("image",))
    excluded = [positive_data_acceptance, *form_checks_excluded(case)]
    if case.path.endswith("/interrupt"):
        excluded.append(negative_data_rejection)
    case.call_and_validate(base_url=fuzz_url, timeout=30, excluded_checks=excluded)
