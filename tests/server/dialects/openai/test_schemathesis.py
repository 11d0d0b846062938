"""Schemathesis, every default check, over every OpenAI Images operation."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis

from tests.server.dialects.stability.fuzz import (
    MAX_EXAMPLES_SETTINGS,
    form_checks_excluded,
    fuzz_schema,
    fuzz_url,
    with_images,
)

__all__ = ["fuzz_schema", "fuzz_url"]
pytestmark = pytest.mark.slow

schema = schemathesis.pytest.from_fixture("fuzz_schema").include(path_regex=r"^/v1/(images|models)")


@schema.parametrize()
@hypothesis.settings(MAX_EXAMPLES_SETTINGS)
def test_openai_operations(case: schemathesis.Case, fuzz_url: str) -> None:
    with_images(case, ("image", "mask"))
    case.call_and_validate(base_url=fuzz_url, timeout=30, excluded_checks=form_checks_excluded(case))
