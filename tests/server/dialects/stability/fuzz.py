"""Schemathesis over one dialect's operations: a live server on the fake engine, and real images
in the file fields (the schema says an upload is an image; random bytes are not one)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from PIL import Image
from schemathesis.specs.openapi.checks import negative_data_rejection

from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint
from tests.harness import serve

# Examples per operation: enough to reach every field, few enough for CI (the suite's fuzz step).
MAX_EXAMPLES = 25
MAX_EXAMPLES_SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,  # the same examples on every run: CI fails on a change, not on a dice roll
)


def png(size: tuple[int, int] = (64, 64), mode: str = "RGBA") -> bytes:
    """A square image, transparent on its left half (INIT_IMAGE_ALPHA and OpenAI edits need some)."""
    image = Image.new(mode, size, (200, 40, 40, 255) if mode == "RGBA" else "white")
    if mode == "RGBA":
        image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def with_images(case: schemathesis.Case, fields: tuple[str, ...]) -> None:
    """Put a real image in every file field the case sends."""
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        for name in fields:
            if name in case.body:
                case.body[name] = png(mode="L") if name == "mask_image" else png()


def form_checks_excluded(case: schemathesis.Case) -> list:
    """Every multipart form value is text on the wire: a "wrong type" mutation (null, or a number
    where the schema wants a string) arrives as a valid string, so "schema-violating request
    accepted" cannot be judged for form bodies. Form bounds are tested by each dialect's tests."""
    return [negative_data_rejection] if case.media_type == "multipart/form-data" else []


@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    write_fake_checkpoint(root / "models" / "Stable-diffusion" / "alpha.safetensors")
    # The schemas state each dialect's own limits; the server-wide prompt limits (settings) may be
    # tighter, and a request over them is refused naming the setting: here they are not tighter.
    settings = Settings(data_dir=root / "data", models_dir=Path(root / "models"), device="cpu",
                        worker_poll_s=0.02, max_prompt_bytes=1 << 20, max_prompt_tokens=1 << 20)
    with serve(settings, FakeEngine()) as url:
        yield url


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_url: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
