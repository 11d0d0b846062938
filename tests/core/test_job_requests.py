"""A request's image references, the inputs built from them, and the two kinds of job request."""

from __future__ import annotations

import pytest
from PIL import Image
from pydantic import ValidationError

from sdgate.core.engine import EngineInputs
from sdgate.core.jobs import Job, JobState
from sdgate.core.requests import (
    FacePass,
    GenerationRequest,
    ImageRef,
    ImageRole,
    Mode,
    PostprocessRequest,
    parse_job_request,
)


def test_image_refs_list_init_images_in_order_then_the_mask() -> None:
    request = GenerationRequest(mode=Mode.INPAINT, init_images=("a", "b"), mask="m")
    assert request.image_refs() == (
        ImageRef("a", ImageRole.INIT, "init_images"),
        ImageRef("b", ImageRole.INIT, "init_images"),
        ImageRef("m", ImageRole.MASK, "mask"),
    )
    assert GenerationRequest().image_refs() == ()
    assert PostprocessRequest(init_images=("x",)).image_refs() == (
        ImageRef("x", ImageRole.INIT, "init_images"),
    )


def test_engine_inputs_group_images_by_role() -> None:
    a, b, m, c = (Image.new("RGB", (i + 1, 1)) for i in range(4))
    refs = [
        ImageRef("a", ImageRole.INIT, "init_images"),
        ImageRef("m", ImageRole.MASK, "mask"),
        ImageRef("c", ImageRole.CONTROL, "control"),
        ImageRef("b", ImageRole.INIT, "init_images"),
    ]
    inputs = EngineInputs.from_refs(zip(refs, (a, m, c, b), strict=True))
    assert inputs.init_images == (a, b) and inputs.mask is m and inputs.control_images == (c,)
    assert EngineInputs.from_refs([]) == EngineInputs()
    with pytest.raises(ValueError, match="one mask"):
        EngineInputs.from_refs([(refs[1], m), (refs[1], m)])


def test_stored_requests_read_back_as_their_kind() -> None:
    generation = GenerationRequest(prompt="a cat", init_images=("a",), mode=Mode.IMG2IMG)
    extras = PostprocessRequest(
        init_images=("a", "b"), upscaler_1="Lanczos", faces=(FacePass(restorer="GFPGAN"),)
    )
    assert "mode" in generation.model_dump() and generation.model_dump()["mode"] == "img2img"
    for request in (generation, extras):
        data = request.model_dump(mode="json")
        assert parse_job_request(data) == request and type(parse_job_request(data)) is type(request)
    job = Job(
        id="j",
        state=JobState.QUEUED,
        request=extras.model_dump(mode="json"),
        created_at="2024-01-01T00:00:00Z",
    )
    assert job.request == extras
    with pytest.raises(ValidationError):  # a generation field on an extras request is refused
        parse_job_request({"mode": "extras", "prompt": "x"})
    with pytest.raises(ValidationError):
        parse_job_request({"mode": "upscale"})


@pytest.mark.parametrize(
    ("request_", "size", "target", "upscaled"),
    [
        (PostprocessRequest(scale=2), (30, 20), (60, 40), (60, 40)),
        (PostprocessRequest(scale=1.5), (3, 3), (4, 4), (4, 4)),  # rounded, as A1111
        (PostprocessRequest(resize_mode=1, width=64, height=64, crop=True), (30, 20), (64, 64), (96, 64)),
        (PostprocessRequest(resize_mode=1, width=64, height=64, crop=False), (30, 20), (64, 64), (64, 64)),
    ],
)
def test_postprocess_sizes(
    request_: PostprocessRequest, size: tuple[int, int], target: tuple[int, int], upscaled: tuple[int, int]
) -> None:
    assert request_.target_size(*size) == target and request_.upscaled_size(*size) == upscaled


def test_the_second_upscaler_takes_part_only_with_a_name_and_a_visibility() -> None:
    assert PostprocessRequest(upscaler_2="Nearest", upscaler_2_visibility=0.5).second_upscaler == "Nearest"
    assert PostprocessRequest(upscaler_2="Nearest").second_upscaler is None
    assert PostprocessRequest(upscaler_2="None", upscaler_2_visibility=1).second_upscaler is None
