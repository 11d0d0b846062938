"""Schemathesis, every default check, over the Hugging Face operation."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis

from tests.server.dialects.stability.fuzz import MAX_EXAMPLES_SETTINGS, fuzz_schema, fuzz_url

__all__ = ["fuzz_schema", "fuzz_url"]
pytestmark = pytest.mark.slow

schema = schemathesis.pytest.from_fixture("fuzz_schema").include(path_regex=r"^/models/")


@schema.parametrize()
@hypothesis.settings(MAX_EXAMPLES_SETTINGS)
def test_hf_operations(case: schemathesis.Case, fuzz_url: str) -> None:
    case.call_and_validate(base_url=fuzz_url, timeout=30)
