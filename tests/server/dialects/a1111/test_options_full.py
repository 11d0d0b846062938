"""``/sdapi/v1/options`` lists every A1111 1.10 setting and validates each one; ``/cmd-flags`` lists
every A1111 flag."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from sdgate.server.app import create_app
from sdgate.server.dialects.a1111.option_table import OPTIONS
from sdgate.server.dialects.a1111.system import A1111_FLAGS
from sdgate.settings import Settings
from tests.fakes import FakeEngine

# Counted from A1111 v1.10.1: 284 in modules/shared_options.py, 1 from the prompt-comments script,
# 44 from the built-in extensions (Lora 10, canvas-zoom 12, extra-options 5, LDSR 2, ScuNET 2,
# SwinIR 3, hypertile 10).
A1111_OPTION_COUNT = 329
A1111_FLAG_COUNT = 126  # modules/cmd_args.py 121, the built-in extensions' preload.py 5


async def test_every_a1111_option_with_its_default(client: httpx.AsyncClient) -> None:
    opts = (await client.get("/sdapi/v1/options")).json()
    assert len(OPTIONS) == A1111_OPTION_COUNT
    assert list(opts) == [spec.key for spec in OPTIONS]
    sample = {
        "send_seed": True,
        "img2img_color_correction": False,
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1.0,  # int with a non-zero default: served as a float
        "jpeg_quality": 80.0,
        "eta_noise_seed_delta": 0,  # falsy default: served as stored
        "sd_vae": "Automatic",
        "emphasis": "Original",
        "randn_source": "GPU",
        "quicksettings_list": ["sd_model_checkpoint"],
        "lora_preferred_name": "Alias from file",
        "hypertile_max_tile_unet": 256.0,
        "canvas_hotkey_zoom": "Alt",
        "upscaler_for_img2img": None,
        "sd3_enable_t5": False,
    }
    assert {k: opts[k] for k in sample} == sample
    assert isinstance(opts["CLIP_stop_at_last_layers"], float)
    assert opts["sd_model_checkpoint"].startswith("alpha")


async def test_the_whole_dict_round_trips(client: httpx.AsyncClient, settings: Settings) -> None:
    opts = (await client.get("/sdapi/v1/options")).json()
    r = await client.post("/sdapi/v1/options", json=opts)
    assert r.status_code == 200 and r.json() is None
    assert (await client.get("/sdapi/v1/options")).json() == opts
    opts.update(CLIP_stop_at_last_layers=2.0, eta_noise_seed_delta=31337, send_seed=False, s_noise=1.05)
    assert (await client.post("/sdapi/v1/options", json=opts)).status_code == 200
    again = (await client.get("/sdapi/v1/options")).json()
    assert (again["CLIP_stop_at_last_layers"], again["eta_noise_seed_delta"]) == (2.0, 31337)
    assert (again["send_seed"], again["s_noise"]) == (False, 1.05)
    saved = json.loads((settings.data_dir / "a1111-options.json").read_text())
    assert saved["CLIP_stop_at_last_layers"] == 2 and isinstance(saved["CLIP_stop_at_last_layers"], int)


async def test_saved_settings_reach_jobs(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    await client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3.0, "eta_noise_seed_delta": 7})
    await client.post("/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64})
    assert engine.calls[-1].clip_skip == 3


BAD_VALUES: list[tuple[str, Any]] = [
    ("CLIP_stop_at_last_layers", "abc"),
    ("CLIP_stop_at_last_layers", 13),
    ("CLIP_stop_at_last_layers", 1.5),
    ("eta_noise_seed_delta", -5),
    ("send_seed", "yes"),
    ("send_seed", 1),
    ("jpeg_quality", True),
    ("randn_source", "TPU"),
    ("quicksettings_list", "sd_model_checkpoint"),
    ("samples_format", 3),
    ("live_previews_enable", None),
    # Found by benchmarks/hostile_inputs.py: saved, then every later txt2img answered 400.
    ("eta_noise_seed_delta", 2**70),
    ("samples_format", "n" * 5000),
    ("sd_model_checkpoint", "x" * 5000),
    ("quicksettings_list", ["sd_vae"] * 300),
    ("jpeg_quality", 10**300),
]


def _short_id(value: Any) -> str:
    return value if isinstance(value, str) and len(value) < 40 else ""


@pytest.mark.parametrize(("key", "value"), BAD_VALUES, ids=_short_id)
async def test_a_bad_value_is_a_422_naming_the_key_and_nothing_is_saved(
    client: httpx.AsyncClient, settings: Settings, key: str, value: Any
) -> None:
    before = (await client.get("/sdapi/v1/options")).json()
    r = await client.post("/sdapi/v1/options", json={"send_size": False, key: value})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", key]] and key in detail[0]["msg"]
    assert (await client.get("/sdapi/v1/options")).json() == before  # send_size was not saved either
    assert not (settings.data_dir / "a1111-options.json").exists()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_json_numbers_are_refused(client: httpx.AsyncClient, token: str) -> None:
    body = f'{{"CLIP_stop_at_last_layers": {token}, "s_noise": {token}}}'
    r = await client.post("/sdapi/v1/options", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    keys = [d["loc"][-1] for d in r.json()["detail"]]
    assert keys == ["CLIP_stop_at_last_layers", "s_noise"]
    assert all("finite" in d["msg"] for d in r.json()["detail"])
    assert (await client.get("/sdapi/v1/options")).json()["CLIP_stop_at_last_layers"] == 1.0


async def test_unknown_keys_are_refused_whole(client: httpx.AsyncClient) -> None:
    opts = (await client.get("/sdapi/v1/options")).json()
    r = await client.post("/sdapi/v1/options", json={**opts, "send_seed": False, "no_such_option": 1})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "no_such_option"]
    assert "no_such_option" in r.json()["detail"][0]["msg"]
    assert (await client.get("/sdapi/v1/options")).json()["send_seed"] is True


async def test_restricted_and_explanation_keys_are_accepted_and_ignored(client: httpx.AsyncClient) -> None:
    ignored = {"api_useragent": "x", "outdir_samples": "/etc", "sd_vae_explanation": "hi"}
    ignored["sd_checkpoint_hash"] = None
    r = await client.post("/sdapi/v1/options", json=ignored)
    assert r.status_code == 200
    opts = (await client.get("/sdapi/v1/options")).json()
    assert (opts["api_useragent"], opts["outdir_samples"]) == ("", "")
    assert opts["sd_vae_explanation"] != "hi"


def test_a_bad_saved_file_is_repaired_at_start(
    settings: Settings, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    path = settings.data_dir / "a1111-options.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"CLIP_stop_at_last_layers": "abc", "eta_noise_seed_delta": -5, "send_seed": False, "bogus": 1}
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="sdgate.a1111"), _client(settings, engine) as c:
        opts = c.get("/sdapi/v1/options").json()
    repaired = (opts["CLIP_stop_at_last_layers"], opts["eta_noise_seed_delta"], opts["send_seed"])
    assert repaired == (1.0, 0, False)
    assert json.loads(path.read_text()) == {"send_seed": False}
    assert all(key in caplog.text for key in ("CLIP_stop_at_last_layers", "eta_noise_seed_delta", "bogus"))


def test_an_unreadable_saved_file_is_set_aside(settings: Settings, engine: FakeEngine) -> None:
    path = settings.data_dir / "a1111-options.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with _client(settings, engine) as c:
        assert c.get("/sdapi/v1/options").json()["send_seed"] is True
        assert c.post("/sdapi/v1/options", json={"send_seed": False}).status_code == 200
    assert Path(str(path) + ".corrupt").read_text() == "{not json"
    assert json.loads(path.read_text()) == {"send_seed": False}


def test_webuiapi_get_and_set_options(settings: Settings, engine: FakeEngine) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=1, username="u", password="p")  # no network call
    with _client(settings, engine) as c:
        api.session = c  # requests-compatible, in process
        api.baseurl = "http://sdgate/sdapi/v1"
        options = api.get_options()
        assert len(options) == A1111_OPTION_COUNT
        assert api.set_options({"CLIP_stop_at_last_layers": 2, "send_seed": False}) is None
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2.0
        assert api.set_options(options) is None  # the whole dict back
        assert api.get_options()["CLIP_stop_at_last_layers"] == 1.0
        flags = api.get_cmd_flags()
        assert flags["api"] is True


async def test_cmd_flags_lists_every_a1111_flag(client: httpx.AsyncClient, settings: Settings) -> None:
    flags = (await client.get("/sdapi/v1/cmd-flags")).json()
    assert len(A1111_FLAGS) == A1111_FLAG_COUNT
    assert set(A1111_FLAGS) <= set(flags)
    # A1111's defaults where we have no such feature ...
    assert (flags["xformers"], flags["max_batch_count"], flags["timeout_keep_alive"]) == (False, 16, 30)
    assert (flags["ngrok_options"], flags["styles_file"], flags["gradio_queue"]) == ({}, [], True)
    # ... and our live values where we do.
    models = settings.resolved_models_dir
    assert flags["data_dir"] == str(settings.data_dir) and flags["port"] == settings.port
    assert flags["ckpt_dir"] == str(models / "Stable-diffusion") and flags["lora_dir"] == str(models / "Lora")
    assert flags["use_cpu"] == ["all"] and flags["api_auth"] is None and flags["nowebui"] is True
    assert flags["ui_settings_file"] == str(settings.data_dir / "a1111-options.json")


class _client:
    """The real app over the fake engine, as a sync (requests-like) client, lifespan included."""

    def __init__(self, settings: Settings, engine: FakeEngine) -> None:
        self.client = TestClient(create_app(settings, engine=engine), base_url="http://sdgate")

    def __enter__(self) -> TestClient:
        return self.client.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)


async def test_kept_overrides_skip_keys_a1111_lacks(client: httpx.AsyncClient) -> None:
    overrides = {"eta_noise_seed_delta": 31337, "some_extension_option": 1}
    body = {"steps": 2, "width": 64, "height": 64, "override_settings": overrides}
    r = await client.post("/sdapi/v1/txt2img", json={**body, "override_settings_restore_afterwards": False})
    assert r.status_code == 200
    opts = (await client.get("/sdapi/v1/options")).json()
    assert opts["eta_noise_seed_delta"] == 31337 and "some_extension_option" not in opts
