"""Schemathesis, every default check, over every Stability operation (v1 and v2beta)."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.server.dialects.stability.fuzz import (
    MAX_EXAMPLES_SETTINGS,
    form_checks_excluded,
    fuzz_schema,
    fuzz_url,
    with_images,
)

__all__ = ["fuzz_schema", "fuzz_url"]
pytestmark = pytest.mark.slow

schema = schemathesis.pytest.from_fixture("fuzz_schema").include(
    path_regex=r"^/(v1/(generation|engines|user)|v2beta/stable-image)/"
)


@schema.parametrize()
@hypothesis.settings(MAX_EXAMPLES_SETTINGS)
def test_stability_operations(case: schemathesis.Case, fuzz_url: str) -> None:
    with_images(case, ("init_image", "mask_image", "image"))
    # Three refusals depend on fields together, which the schemas say in words only (schemathesis
    # cannot generate from if/then or not with file fields): masking's MASK_IMAGE_* sources need a
    # mask_image, upscale takes width or height but not both, and a v2beta image needs a strength.
    together = ("/masking", "/upscale", "/generate/{service}")
    excluded = [positive_data_acceptance] if case.path.endswith(together) else []
    excluded += form_checks_excluded(case)
    case.call_and_validate(base_url=fuzz_url, timeout=30, excluded_checks=excluded)
