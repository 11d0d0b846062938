"""The content filter through every dialect: the prompt blocklist (refused before a job exists, in
each dialect's error shape) and the image safety checker (a tiny random-weight one in diffusers'
format that flags everything, and one that flags nothing), reported each dialect's own way."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sdgate.core.blocklist import BlocklistError
from sdgate.core.engine import EngineInputs, StepAction, StepReport
from sdgate.core.requests import GenerationRequest
from sdgate.engine.safety import (
    SafetyCheckedEngine,
    SafetyCheckerMissing,
    checked_engine,
    safety_checker_problem,
)
from sdgate.server import content
from sdgate.server.app import create_app
from sdgate.server.services import Services
from sdgate.settings import Settings
from tests.fakes import FakeEngine, write_fake_checkpoint

SIZE = 128
SEED = 200  # the fake engine draws colour (200, 0, 0): anything but black

# -- the requests, one per dialect route that generates ---------------------------------------------


def _native(prompt: str) -> tuple[str, str, dict[str, Any]]:
    body = {"prompt": prompt, "width": SIZE, "height": SIZE, "steps": 2, "seed": SEED, "batch_size": 2}
    return "POST", "/api/v1/jobs?wait=30&include=images", body


def _a1111(prompt: str) -> tuple[str, str, dict[str, Any]]:
    body = {"prompt": prompt, "width": SIZE, "height": SIZE, "steps": 2, "seed": SEED, "batch_size": 2}
    return "POST", "/sdapi/v1/txt2img", body


def _stability_v1(prompt: str) -> tuple[str, str, dict[str, Any]]:
    body = {"text_prompts": [{"text": prompt}], "width": SIZE, "height": SIZE, "steps": 10, "seed": SEED,
            "samples": 2}
    return "POST", "/v1/generation/stable-diffusion-v1-6/text-to-image", body


def _openai(prompt: str) -> tuple[str, str, dict[str, Any]]:
    body = {"prompt": prompt, "size": f"{SIZE}x{SIZE}", "n": 2, "response_format": "b64_json",
            "seed": SEED, "steps": 2}
    return "POST", "/v1/images/generations", body


def _hf(prompt: str) -> tuple[str, str, dict[str, Any]]:
    body = {"inputs": prompt, "parameters": {"width": SIZE, "height": SIZE, "num_inference_steps": 2,
                                             "seed": SEED}}
    return "POST", "/models/alpha", body


JSON_ROUTES: dict[str, Callable[[str], tuple[str, str, dict[str, Any]]]] = {
    "native": _native,
    "a1111": _a1111,
    "stability": _stability_v1,
    "openai": _openai,
    "hf": _hf,
}
V2BETA = "/v2beta/stable-image/generate/core"


async def _post(client: httpx.AsyncClient, dialect: str, prompt: str) -> httpx.Response:
    if dialect == "stability-v2beta":
        data = {"prompt": prompt, "seed": str(SEED), "output_format": "png", "aspect_ratio": "1:1"}
        headers = {"accept": "application/json"}
        return await client.post(V2BETA, files={"none": ""}, data=data, headers=headers)
    method, path, body = JSON_ROUTES[dialect](prompt)
    return await client.request(method, path, json=body)


DIALECTS = [*JSON_ROUTES, "stability-v2beta"]

# -- servers --------------------------------------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_fake_checkpoint(root / "Stable-diffusion" / "alpha.safetensors")
    return root


def _settings(tmp_path: Path, models_dir: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models_dir, device="cpu", worker_poll_s=0.05,
                    **overrides)


@asynccontextmanager
async def _serve(settings: Settings, engine: FakeEngine) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sdgate", timeout=60) as c:
            yield c, app.state.services


def _metric(services: Services, stage: str, dialect: str) -> float:
    value = services.metrics.registry.get_sample_value(
        "sdgate_content_filtered_total", {"stage": stage, "dialect": dialect}
    )
    return value or 0.0


# -- the prompt blocklist --------------------------------------------------------------------------

BLOCKLIST = "# the operator's list\nforbidden thing\n/secret\\s*code\\d+/\n"


@pytest.fixture
async def blocking(tmp_path: Path, models_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    path = tmp_path / "blocked.txt"
    path.write_text(BLOCKLIST, encoding="utf-8")
    settings = _settings(tmp_path, models_dir, content_blocklist=path)
    async with _serve(settings, FakeEngine(size=SIZE)) as served:
        yield served


def _assert_refusal_shape(dialect: str, r: httpx.Response) -> None:
    body = r.json()
    text = json.dumps(body)
    assert "forbidden" not in text and "secret" not in text, "the refusal must not echo the blocklist"
    if dialect == "native":
        assert r.status_code == 400
        assert body["error"]["code"] == "content_filtered" and body["error"]["field"] == "prompt"
    elif dialect == "a1111":
        assert r.status_code == 400
        assert body["error"] == "ContentFiltered" and "content policy" in body["detail"]
    elif dialect == "stability":
        assert r.status_code == 400
        assert set(body) == {"id", "name", "message"} and body["name"] == "invalid_prompts"
    elif dialect == "stability-v2beta":
        assert r.status_code == 403
        assert body["name"] == "content_moderation" and body["errors"]
    elif dialect == "openai":
        assert r.status_code == 400
        assert body["error"]["code"] == "content_policy_violation"
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == "prompt"
    elif dialect == "hf":
        assert r.status_code == 400
        assert set(body) == {"error"} and "content policy" in body["error"]
        assert r.headers["x-error-code"] == "content_filtered"
    else:  # pragma: no cover
        raise AssertionError(dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("prompt", ["a FORBIDDEN   thing, at dusk", "(the secretcode42:1.2)"])
async def test_blocked_prompt_is_refused_leaving_nothing(
    blocking: tuple[httpx.AsyncClient, Services], dialect: str, prompt: str
) -> None:
    client, services = blocking
    images_before = sorted(p.name for p in services.settings.data_dir.rglob("*") if p.is_file())
    r = await _post(client, dialect, prompt)
    _assert_refusal_shape(dialect, r)
    assert services.store.count_by_state().get("queued", 0) == 0
    assert sum(services.store.count_by_state().values()) == 0, "no job was created"
    assert services.engine is not None and not services.engine.calls  # type: ignore[attr-defined]
    # nothing stored for a text-only request (the database files aside, which existed already)
    assert sorted(p.name for p in services.settings.data_dir.rglob("*") if p.is_file()) == images_before
    label = "stability" if dialect.startswith("stability") else dialect
    assert _metric(services, "prompt", label) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_allowed_prompt_runs(blocking: tuple[httpx.AsyncClient, Services], dialect: str) -> None:
    client, services = blocking
    r = await _post(client, dialect, "a forbidden-looking castle, thing")  # not the phrase
    assert r.status_code in (200, 202), r.text
    assert services.engine is not None and services.engine.calls  # type: ignore[attr-defined]


async def test_hires_prompt_is_checked_and_negative_is_not(
    blocking: tuple[httpx.AsyncClient, Services],
) -> None:
    client, services = blocking
    body = {"prompt": "a castle", "width": SIZE, "height": SIZE, "steps": 2, "enable_hr": True,
            "hr_scale": 2, "hr_prompt": "forbidden thing"}
    r = await client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 400 and r.json()["error"] == "ContentFiltered"
    assert sum(services.store.count_by_state().values()) == 0
    body = {"prompt": "a castle", "negative_prompt": "forbidden thing", "width": SIZE, "height": SIZE,
            "steps": 2}
    r = await client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text


def test_bad_blocklist_stops_the_server(tmp_path: Path, models_dir: Path) -> None:
    path = tmp_path / "blocked.txt"
    path.write_text("fine\n/(a+)+/\n", encoding="utf-8")
    with pytest.raises(BlocklistError, match=r"blocked\.txt:2: "):
        Services.build(_settings(tmp_path, models_dir, content_blocklist=path), engine=FakeEngine())
    with pytest.raises(BlocklistError, match="not found"):
        Services.build(_settings(tmp_path, models_dir, content_blocklist=tmp_path / "nope.txt"),
                       engine=FakeEngine())


# -- the image safety checker ------------------------------------------------------------------------


def _write_checker(models_dir: Path, *, flags_everything: bool, pipeline_layout: bool) -> None:
    """A tiny random-weight checker in diffusers' format: every concept's threshold below any cosine
    (-2: flags everything) or above any (2: flags nothing)."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                     "num_hidden_layers": 1, "vocab_size": 100},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                       "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flags_everything else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    root = models_dir / "safety_checker"
    model_dir = root / "safety_checker" if pipeline_layout else root
    processor_dir = root / "feature_extractor" if pipeline_layout else root
    checker.save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        processor_dir
    )


@pytest.fixture
async def checked(
    request: pytest.FixtureRequest, tmp_path: Path, models_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    flags_everything: bool = request.param
    _write_checker(models_dir, flags_everything=flags_everything, pipeline_layout=not flags_everything)
    settings = _settings(tmp_path, models_dir)  # safety_checker "auto": used because its files are there
    async with _serve(settings, FakeEngine(size=SIZE)) as served:
        assert isinstance(served[1].engine, SafetyCheckedEngine)
        yield served


def _is_black(data: bytes) -> bool:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image.size == (SIZE, SIZE) and image.getextrema() == ((0, 0), (0, 0), (0, 0))


def _b64(value: str) -> bytes:
    return base64.b64decode(value.split(",", 1)[-1])


@pytest.mark.parametrize("checked", [True], indirect=True)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_flagged_images_are_reported(checked: tuple[httpx.AsyncClient, Services], dialect: str) -> None:
    client, services = checked
    r = await _post(client, dialect, "a castle")
    if dialect in ("openai", "hf"):  # these services refuse the request
        assert r.status_code == 400, r.text
        body = r.json()
        if dialect == "openai":
            assert body["error"]["code"] == "content_policy_violation"
        else:
            assert set(body) == {"error"} and "content policy" in body["error"]
    elif dialect == "native":
        assert r.status_code in (200, 202), r.text
        images = r.json()["result"]["images"]
        assert len(images) == 2
        assert all(img["filtered"] is True for img in images)
        assert all(_is_black(_b64(img["data"])) for img in images)
        job = (await client.get(f"/api/v1/jobs/{r.json()['id']}")).json()  # kept in the stored result
        assert [img["filtered"] for img in job["result"]["images"]] == [True, True]
    elif dialect == "a1111":
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["images"]) == 2 and all(_is_black(_b64(img)) for img in body["images"])
        info = json.loads(body["info"])
        assert info["filtered_images"] == [0, 1]
        assert "content filter" in info["extra_generation_params"]["Notes"]
    elif dialect == "stability":
        assert r.status_code == 200, r.text
        artifacts = r.json()["artifacts"]
        assert [a["finishReason"] for a in artifacts] == ["CONTENT_FILTERED"] * 2
        assert all(_is_black(_b64(a["base64"])) for a in artifacts)
    else:
        assert r.status_code == 200, r.text
        assert r.json()["finish_reason"] == "CONTENT_FILTERED"
    label = "stability" if dialect.startswith("stability") else dialect
    expected = 1 if dialect in ("hf", "stability-v2beta") else 2
    assert _metric(services, "image", label) == expected


@pytest.mark.parametrize("checked", [False], indirect=True)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_unflagged_images_pass(checked: tuple[httpx.AsyncClient, Services], dialect: str) -> None:
    client, services = checked
    r = await _post(client, dialect, "a castle")
    assert r.status_code in (200, 202), r.text
    assert _metric(services, "image", "stability" if dialect.startswith("stability") else dialect) == 0
    if dialect == "hf":  # the image's bytes
        assert not _is_black(r.content)
        return
    body = r.json()
    if dialect == "native":
        images = body["result"]["images"]
        assert [img["filtered"] for img in images] == [False, False]
        assert not any(_is_black(_b64(img["data"])) for img in images)
    elif dialect == "a1111":
        assert not any(_is_black(_b64(img)) for img in body["images"])
        assert "filtered_images" not in json.loads(body["info"])
    elif dialect == "stability":
        assert [a["finishReason"] for a in body["artifacts"]] == ["SUCCESS"] * 2
    elif dialect == "stability-v2beta":
        assert body["finish_reason"] == "SUCCESS"
    elif dialect == "openai":
        assert not any(_is_black(_b64(item["b64_json"])) for item in body["data"])


async def test_stability_image_accept_header(tmp_path: Path, models_dir: Path) -> None:
    _write_checker(models_dir, flags_everything=True, pipeline_layout=False)
    async with _serve(_settings(tmp_path, models_dir), FakeEngine(size=SIZE)) as (client, _):
        method, path, body = _stability_v1("a castle")
        body["samples"] = 1
        r = await client.post(path, json=body, headers={"accept": "image/png"})
        assert r.status_code == 200 and r.headers["finish-reason"] == "CONTENT_FILTERED"
        assert _is_black(r.content)
        r = await client.post(V2BETA, files={"none": ""}, data={"prompt": "x", "output_format": "png"},
                              headers={"accept": "image/*"})
        assert r.status_code == 200 and r.headers["finish-reason"] == "CONTENT_FILTERED"


def test_checker_settings(tmp_path: Path, models_dir: Path) -> None:
    """on without weights: refused with one line; off: never loaded even when the files are there."""
    on = _settings(tmp_path, models_dir, safety_checker="on")
    problem = safety_checker_problem(on)
    assert problem is not None and "safety_checker" in problem and "\n" not in problem
    with pytest.raises(SafetyCheckerMissing):
        Services.build(on, engine=FakeEngine())
    assert not isinstance(Services.build(_settings(tmp_path, models_dir), engine=FakeEngine()).engine,
                          SafetyCheckedEngine)  # auto, no files: no checker
    _write_checker(models_dir, flags_everything=True, pipeline_layout=False)
    (models_dir / "safety_checker" / "model.safetensors").unlink()
    assert "no weights" in (safety_checker_problem(on) or "")
    off = _settings(tmp_path, models_dir, safety_checker="off")
    assert safety_checker_problem(off) is None
    assert not isinstance(Services.build(off, engine=FakeEngine()).engine, SafetyCheckedEngine)


class _Recorder:
    def __init__(self) -> None:
        self.reports: list[StepReport] = []

    def on_step(self, report: StepReport) -> StepAction:
        self.reports.append(report)
        return StepAction.CONTINUE


def test_previews_are_withheld_while_the_checker_is_on(tmp_path: Path, models_dir: Path) -> None:
    """A step preview shows the image before the checker sees it."""
    request = GenerationRequest(prompt="x", width=SIZE, height=SIZE, steps=3, seed=SEED)
    bare = _Recorder()
    FakeEngine(size=SIZE).generate(request, EngineInputs(), bare)
    assert any(r.preview is not None for r in bare.reports)  # the fake engine offers them
    _write_checker(models_dir, flags_everything=False, pipeline_layout=False)
    engine = checked_engine(FakeEngine(size=SIZE), _settings(tmp_path, models_dir))
    checked = _Recorder()
    output = engine.generate(request, EngineInputs(), checked)
    assert len(checked.reports) == len(bare.reports)
    assert all(r.preview is None for r in checked.reports)
    assert [g.filtered for g in output.images] == [False]


def test_startup_problem_is_one_line(tmp_path: Path, models_dir: Path) -> None:
    path = tmp_path / "blocked.txt"
    path.write_text("ok\n/[broken/\n", encoding="utf-8")
    problem = content.startup_problem(_settings(tmp_path, models_dir, content_blocklist=path))
    assert problem is not None and f"{path}:2: " in problem and "\n" not in problem
    on = _settings(tmp_path, models_dir, safety_checker="on")
    assert "safety_checker" in (content.startup_problem(on) or "")
    api_only = _settings(tmp_path, models_dir, safety_checker="on", workers=0)  # no checker runs there
    assert content.startup_problem(api_only) is None
    path.write_text("ok\n", encoding="utf-8")
    assert content.startup_problem(_settings(tmp_path, models_dir, content_blocklist=path)) is None


@pytest.mark.parametrize("checked", [True, False], indirect=True)
async def test_the_sdk_says_which_images_were_filtered(
    checked: tuple[httpx.AsyncClient, Services], request: pytest.FixtureRequest
) -> None:
    import sdgate

    client, _services = checked
    transport = client._transport  # the app's ASGI transport
    flags_everything = request.node.callspec.params["checked"]
    async with sdgate.AsyncClient("http://sdgate.test", transport=transport) as sdk:
        result = await sdk.txt2img("a castle", steps=2, width=SIZE, height=SIZE, batch_size=2)
    assert result.filtered == [flags_everything] * 2


def test_batched_and_graph_images_pass_the_checker_too(tmp_path: Path, models_dir: Path) -> None:
    """The checker's wrapper is not bypassed by cross-request batching nor by a ComfyUI graph."""
    from sdgate.core.engine import EngineJob, EngineOutput
    from sdgate.core.models import ModelCatalog
    from sdgate.core.requests import GraphRequest
    from sdgate.engine.null import NullEngine
    from tests.comfy_graphs import txt2img

    _write_checker(models_dir, flags_everything=True, pipeline_layout=False)
    settings = _settings(tmp_path, models_dir)
    engine = checked_engine(FakeEngine(size=SIZE), settings)
    assert isinstance(engine, SafetyCheckedEngine)
    jobs = [EngineJob(GenerationRequest(prompt=p, width=SIZE, height=SIZE, steps=2, seed=SEED),
                      EngineInputs(), _Recorder()) for p in ("a", "b")]
    outputs = engine.generate_batch(jobs)
    assert all(isinstance(o, EngineOutput) and [g.filtered for g in o.images] == [True] for o in outputs)
    assert all(r.preview is None for job in jobs for r in job.control.reports)  # type: ignore[attr-defined]

    null_settings = settings.model_copy(update={"engine": "null"})
    graph_engine = checked_engine(NullEngine(null_settings, ModelCatalog(null_settings, builtin_dir=None)),
                                  null_settings)
    request = GraphRequest(graph=txt2img("m.safetensors", width=64, height=64), outputs=("9",))
    output = graph_engine.run_graph(request, EngineInputs(), _Recorder())  # type: ignore[attr-defined]
    assert [g.filtered for g in output.images] == [True]
