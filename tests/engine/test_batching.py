"""Cross-request batching (issue 17) on the tiny models: a job's images are the same batched as alone.

Tolerance (``engine.batching``): at most 2/255 per channel on 8-bit pixels; only the UNet's batched
kernels differ from a single call. The batched runs check that ``generate`` was not used, so the
jobs really shared a pipeline call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from sdgate.core.engine import (
    EngineInputs,
    EngineJob,
    EngineOutput,
    NoControl,
    StepAction,
    StepReport,
    run_batch,
)
from sdgate.core.errors import InvalidRequest, JobCancelled, ModelNotFound
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.null import NULL_BATCH_ROWS, NullEngine
from sdgate.settings import Settings

TOLERANCE = 2  # 8-bit levels per channel


class Control:
    """Records each report as (iteration, iterations, step, steps); answers ``action`` at ``at``
    = (iteration, step)."""

    def __init__(self, at: tuple[int, int] | None = None, action: StepAction = StepAction.CONTINUE) -> None:
        self.at, self.action = at, action
        self.reports: list[tuple[int, int, int, int]] = []
        self.previews: list[Any] = []

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append((report.iteration, report.iterations, report.step, report.steps))
        self.previews.append(report.preview)
        return self.action if (report.iteration, report.step) == self.at else StepAction.CONTINUE


def request(**fields: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a red circle",
        "model": "tiny-sd15",
        "width": 32,
        "height": 32,
        "steps": 3,
        "seed": 1234,
        "sampler": "Euler a",
    }
    values.update(fields)
    return GenerationRequest(**values)


def job(req: GenerationRequest, control: Any = None) -> EngineJob:
    return EngineJob(req, EngineInputs(), control or NoControl())


def alone(engine: Any, req: GenerationRequest, control: Any = None) -> EngineOutput:
    return engine.generate(req, EngineInputs(), control or NoControl())  # type: ignore[no-any-return]


@contextmanager
def no_single_calls(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside, ``engine.generate`` fails the test: the jobs must run as one batch."""

    def single(*args: Any, **kwargs: Any) -> EngineOutput:
        raise AssertionError("a job ran alone instead of in the batch")

    with monkeypatch.context() as patch:
        patch.setattr(engine, "generate", single)
        yield


def batched(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch, jobs: Sequence[EngineJob]
) -> list[EngineOutput | BaseException]:
    with no_single_calls(engine, monkeypatch):
        return engine.generate_batch(jobs)


def assert_same_images(got: EngineOutput | BaseException, want: EngineOutput) -> None:
    assert isinstance(got, EngineOutput), got
    assert [i.seed for i in got.images] == [i.seed for i in want.images]
    assert [i.infotext for i in got.images] == [i.infotext for i in want.images]
    assert got.notes == want.notes and got.interrupted == want.interrupted
    for a, b in zip(got.images, want.images, strict=True):
        x, y = np.asarray(a.image).astype(int), np.asarray(b.image).astype(int)
        assert x.shape == y.shape and np.abs(x - y).max() <= TOLERANCE


def mates() -> list[GenerationRequest]:
    """Three compatible jobs: different prompts, negatives, CFG scales, seeds and row counts."""
    return [
        request(prompt="a red circle", cfg_scale=7.0, seed=10, batch_size=2, n_iter=2),
        request(prompt="a blue square, detailed", negative_prompt="blurry", cfg_scale=3.5, seed=99),
        request(prompt="(green:1.3) triangle [small]", negative_prompt="text", cfg_scale=11.0, seed=5),
    ]


# --- equality -----------------------------------------------------------------------------------


# Ancestral (per-row generators), multistep (past outputs per row), second order, and the SDE
# samplers (a Brownian tree per row's seed; per-row generator noise).
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "DPM++ SDE", "DPM++ 2M SDE"])
def test_each_job_equals_its_image_alone(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    reqs = [r.model_copy(update={"sampler": sampler}) for r in mates()]
    outs = batched(engine, monkeypatch, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))
    # The rows really are their own: different jobs, and different seeds of one job, differ.
    first, second = outs[0], outs[1]
    assert isinstance(first, EngineOutput) and isinstance(second, EngineOutput)
    assert [i.seed for i in first.images] == [10, 11, 12, 13]
    assert not np.array_equal(np.asarray(first.images[0].image), np.asarray(second.images[0].image))
    assert not np.array_equal(np.asarray(first.images[0].image), np.asarray(first.images[1].image))


def test_cfg_scale_is_per_row(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same prompt and seed, different CFG: each row gets its own guidance, as alone."""
    reqs = [request(cfg_scale=cfg, seed=3) for cfg in (2.0, 7.0, 15.0)]
    outs = batched(engine, monkeypatch, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))
    pictures = [np.asarray(o.images[0].image) for o in outs if isinstance(o, EngineOutput)]
    assert not np.array_equal(pictures[0], pictures[2])


def test_sdxl_batch_equals_alone(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = [
        request(model="tiny-sdxl", prompt="a cat", negative_prompt="", cfg_scale=5.0, seed=1, batch_size=2),
        request(
            model="tiny-sdxl", prompt="a dog, (sharp:1.2)", negative_prompt="blur", cfg_scale=8.0, seed=2
        ),
    ]
    outs = batched(engine, monkeypatch, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))


def test_missing_lora_is_noted_as_alone(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = [request(prompt="a cat <lora:nope:0.5>", seed=s, cfg_scale=c) for s, c in ((1, 5.0), (2, 9.0))]
    outs = batched(engine, monkeypatch, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        want = alone(engine, req)
        assert any("nope" in note for note in want.notes)
        assert_same_images(out, want)


def test_prompts_of_different_token_lengths_still_equal_alone(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt over 75 tokens has two chunks; padding the other job's would change its image, so
    the engine splits them into two calls."""
    long_prompt = ", ".join(f"word{i}" for i in range(60))
    reqs = [request(prompt=long_prompt, seed=1), request(prompt="short", seed=2), request(seed=3)]
    outs = batched(engine, monkeypatch, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))


def test_jobs_that_cannot_share_a_batch_run_alone(engine: DiffusersEngine) -> None:
    reqs = [
        request(seed=1),
        request(seed=2, sampler="DPM++ 2M"),  # another key: a batch of its own
        request(seed=3, prompt="a [cat:dog:2]"),  # prompt editing: never batched
        request(seed=4),
    ]
    outs = run_batch(engine, [job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))


# --- failures and control -----------------------------------------------------------------------


def test_a_job_with_bad_input_fails_alone(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    good = [request(seed=1, cfg_scale=6.0), request(seed=2, prompt="a blue square")]
    reqs = [good[0], request(model="no-such-model"), request(width=36), good[1]]
    with no_single_calls(engine, monkeypatch):  # the bad ones fail their checks before any call
        outs = engine.generate_batch([job(r) for r in reqs])
    assert isinstance(outs[1], ModelNotFound)
    assert isinstance(outs[2], InvalidRequest) and outs[2].field == "width"
    assert_same_images(outs[0], alone(engine, good[0]))
    assert_same_images(outs[3], alone(engine, good[1]))


def test_cancel_drops_one_job_and_leaves_the_others(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = mates()
    controls = [Control(), Control(at=(0, 2), action=StepAction.CANCEL), Control()]
    outs = batched(engine, monkeypatch, [job(r, c) for r, c in zip(reqs, controls, strict=True)])
    assert isinstance(outs[1], JobCancelled)
    assert [r[2] for r in controls[1].reports] == [1, 2]  # asked no more once cancelled
    for i in (0, 2):
        assert_same_images(outs[i], alone(engine, reqs[i]))
        assert [r[2] for r in controls[i].reports] == [1, 2, 3]


def test_interrupt_keeps_that_jobs_rows_as_they_are(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = [request(seed=1, batch_size=2), request(seed=2, prompt="a blue square", cfg_scale=4.0)]
    controls = [Control(at=(0, 1), action=StepAction.INTERRUPT), Control()]
    outs = batched(engine, monkeypatch, [job(r, c) for r, c in zip(reqs, controls, strict=True)])
    interrupted = alone(engine, reqs[0], Control(at=(0, 1), action=StepAction.INTERRUPT))
    assert interrupted.interrupted and len(interrupted.images) == 2
    assert_same_images(outs[0], interrupted)  # the images at step 1, as a single call gives them
    assert_same_images(outs[1], alone(engine, reqs[1]))
    assert not np.array_equal(  # really stopped early: not the finished image
        np.asarray(outs[0].images[0].image),  # type: ignore[union-attr]
        np.asarray(alone(engine, reqs[0]).images[0].image),
    )


def test_skip_drops_the_jobs_current_iteration(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = [request(seed=20, batch_size=2, n_iter=2), request(seed=2, cfg_scale=9.0)]
    controls = [Control(at=(0, 1), action=StepAction.SKIP), Control()]
    outs = batched(engine, monkeypatch, [job(r, c) for r, c in zip(reqs, controls, strict=True)])
    skipped = alone(engine, reqs[0], Control(at=(0, 1), action=StepAction.SKIP))
    assert [i.seed for i in skipped.images] == [22, 23]  # alone: iteration 0 skipped, 1 drawn
    assert_same_images(outs[0], skipped)
    assert_same_images(outs[1], alone(engine, reqs[1]))


def test_progress_is_reported_per_job(engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = [request(seed=1, n_iter=2, sampler="Heun"), request(seed=2, sampler="Heun")]  # 2 evals a step
    controls = [Control(), Control()]
    outs = batched(engine, monkeypatch, [job(r, c) for r, c in zip(reqs, controls, strict=True)])
    assert all(isinstance(o, EngineOutput) for o in outs)
    for control in controls:  # a job's iterations run side by side: one pass, steps 1..N once each
        assert control.reports == [(0, 1, 1, 3), (0, 1, 2, 3), (0, 1, 3, 3)]
        preview = control.previews[-1]
        assert preview is not None and preview().size == (4, 4)  # latent pixels


def test_when_every_job_is_cancelled_the_loop_stops(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = [request(seed=1, steps=6), request(seed=2, steps=6, prompt="b")]
    controls = [Control(at=(0, 1), action=StepAction.CANCEL) for _ in reqs]
    outs = batched(engine, monkeypatch, [job(r, c) for r, c in zip(reqs, controls, strict=True)])
    assert all(isinstance(o, JobCancelled) for o in outs)
    assert all(len(c.reports) == 1 for c in controls)


def test_a_failing_control_fails_only_its_job(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def on_step(self, report: StepReport) -> StepAction:
            raise RuntimeError("store down")

    reqs = [request(seed=1), request(seed=2, prompt="b")]
    outs = batched(engine, monkeypatch, [job(reqs[0], Broken()), job(reqs[1])])
    assert isinstance(outs[0], RuntimeError)
    assert_same_images(outs[1], alone(engine, reqs[1]))


def test_a_failed_shared_call_runs_each_job_alone(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdgate.engine import batching

    def broken(group: Any, members: Any) -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(batching, "_draw", broken)
    reqs = [request(seed=1), request(seed=2, prompt="b")]
    outs = engine.generate_batch([job(r) for r in reqs])
    for out, req in zip(outs, reqs, strict=True):
        assert_same_images(out, alone(engine, req))


# --- how many rows ------------------------------------------------------------------------------


def test_batch_rows_is_off_on_the_cpu_unless_set(tiny_settings: Callable[..., Settings]) -> None:
    def rows(**overrides: Any) -> int:
        settings = tiny_settings(**overrides)
        return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None)).batch_rows(request())

    assert rows() == 1
    assert rows(batch_max=6) == 6


def test_batch_rows_on_cuda_follow_free_memory_and_shape(
    tiny_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def engine_with(free: int | None, **overrides: Any) -> DiffusersEngine:
        settings = tiny_settings(**overrides)
        made = DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))
        made.device = torch.device("cuda")  # only read for its type: nothing runs
        monkeypatch.setattr(made, "free_memory_bytes", lambda: free)
        return made

    gib = 2**30
    small, large = request(width=512, height=512), request(width=1024, height=1024)
    assert engine_with(None).batch_rows(small) == 1  # cannot tell: no batching
    assert engine_with(None, batch_max=4).batch_rows(small) == 4
    assert engine_with(80 * gib).batch_rows(small) == 32  # the automatic cap
    assert engine_with(80 * gib, batch_max=8).batch_rows(small) == 8
    roomy = engine_with(16 * gib)  # fp32 on this engine: 6 GiB a 1024x1024 row
    assert 1 < roomy.batch_rows(large) < roomy.batch_rows(small) < 32  # bigger images, fewer rows
    assert engine_with(gib // 4).batch_rows(large) == 1
    assert engine_with(80 * gib).batch_rows(request(model="no-such-model")) == 1


# --- the null engine ----------------------------------------------------------------------------


@pytest.fixture
def null(tiny_settings: Callable[..., Settings]) -> NullEngine:
    settings = tiny_settings(engine="null")
    return NullEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_null_engine_batches_with_per_job_control(null: NullEngine) -> None:
    reqs = [
        request(seed=1, batch_size=2, n_iter=2),
        request(seed=2),
        request(seed=3),
        request(seed=4, n_iter=2),
        request(width=36),
    ]
    controls = [
        Control(),
        Control(at=(0, 2), action=StepAction.CANCEL),
        Control(at=(0, 2), action=StepAction.INTERRUPT),
        Control(at=(0, 1), action=StepAction.SKIP),
        Control(),
    ]
    outs = null.generate_batch([job(r, c) for r, c in zip(reqs, controls, strict=True)])
    assert isinstance(outs[0], EngineOutput) and [i.seed for i in outs[0].images] == [1, 2, 3, 4]
    assert outs[0].images[1].infotext == alone(null, reqs[0]).images[1].infotext
    assert controls[0].reports == [(0, 1, 1, 3), (0, 1, 2, 3), (0, 1, 3, 3)]
    assert isinstance(outs[1], JobCancelled) and len(controls[1].reports) == 2
    assert isinstance(outs[2], EngineOutput) and outs[2].interrupted and len(outs[2].images) == 1
    assert isinstance(outs[3], EngineOutput) and [i.seed for i in outs[3].images] == [5]
    assert isinstance(outs[4], InvalidRequest)


def test_null_engine_batch_rows(null: NullEngine, tiny_settings: Callable[..., Settings]) -> None:
    assert null.batch_rows(request()) == NULL_BATCH_ROWS == 1  # off unless asked: a lone job never waits
    settings = tiny_settings(engine="null", batch_max=3)
    assert NullEngine(settings, ModelCatalog(settings, builtin_dir=None)).batch_rows(request()) == 3
