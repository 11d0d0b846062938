"""Schemathesis, every default check, over the Hugging Face operation."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import allow_header_conformance

from tests.server.dialects.stability.fuzz import MAX_EXAMPLES_SETTINGS, fuzz_schema, fuzz_url

__all__ = ["fuzz_schema", "fuzz_url"]
pytestmark = pytest.mark.slow

# POST /models/{model_id} is Hugging Face's; GET /models/{folder} at the same URLs is ComfyUI's
# (fuzzed with its dialect), so the Allow header of /models/<x> lists both: that check is left out.
schema = schemathesis.pytest.from_fixture("fuzz_schema").include(path_regex=r"^/models/", method="POST")


@schema.parametrize()
@hypothesis.settings(MAX_EXAMPLES_SETTINGS)
def test_hf_operations(case: schemathesis.Case, fuzz_url: str) -> None:
    case.call_and_validate(base_url=fuzz_url, timeout=30, excluded_checks=[allow_header_conformance])
