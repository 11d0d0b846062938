"""The demo canny ControlNet: the shipped folder loads as a diffusers ``ControlNetModel`` that fits the
demo UNet, the catalog lists it as ``control_sdgate_demo_canny``, the trainer runs end to end, the
edge IoU metric, and the evaluator through sdgate's engine and through the A1111 API (webuiapi)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdgate.demo import controlnet_train as ct
from sdgate.demo import evaluate_controlnet as ec


def test_the_shipped_controlnet_loads_and_fits_the_demo_unet() -> None:
    import torch

    from sdgate.demo import model as dm

    folder = ct.CONTROLNET_DIR
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert sum(f.stat().st_size for f in folder.iterdir()) < 6 * 1024 * 1024  # a few MB (fp16)
    net = ct.load_controlnet()
    pipe = dm.load_pipeline()
    unet = pipe.unet
    assert list(net.config.block_out_channels) == list(unet.config.block_out_channels)
    assert net.config.cross_attention_dim == unet.config.cross_attention_dim
    assert tuple(net.config.conditioning_embedding_out_channels) == ct.EMBEDDING_CHANNELS
    assert 2 ** (len(ct.EMBEDDING_CHANNELS) - 1) == dm.VAE_FACTOR
    trained = [v for k, v in net.state_dict().items() if k.startswith("controlnet_down_blocks")]
    assert any(float(v.abs().max()) > 0 for v in trained)  # the zero convolutions have learnt
    latents, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    cond = pipe.text_encoder(pipe.tokenizer(["a red circle"], return_tensors="pt").input_ids)[0]
    control = torch.zeros(1, 3, dm.NATIVE_SIZE, dm.NATIVE_SIZE)
    with torch.no_grad():
        down, mid = net(latents, t, cond, controlnet_cond=control, return_dict=False)
        out = unet(latents, t, cond, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
    assert out.shape == latents.shape


def test_the_catalog_lists_the_builtin_controlnet(tmp_path: Path) -> None:
    from sdgate.core.models import BUILTIN_CONTROLNET_DIR, BUILTIN_CONTROLNET_NAME, ModelCatalog
    from sdgate.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", device="cpu")
    found = ModelCatalog(settings).list_files("controlnet")
    assert [(f.name, f.path) for f in found] == [(BUILTIN_CONTROLNET_NAME, BUILTIN_CONTROLNET_DIR)]
    assert BUILTIN_CONTROLNET_NAME == ct.CATALOG_NAME and BUILTIN_CONTROLNET_DIR == ct.CONTROLNET_DIR
    assert ModelCatalog(settings, builtin_dir=None).list_files("controlnet") == []


def test_edge_iou_with_tolerance() -> None:
    import cv2

    a = np.zeros((64, 64), np.uint8)
    cv2.circle(a, (32, 32), 16, 255, 1)
    shifted = np.roll(a, 1, axis=1)
    far = np.roll(a, 20, axis=1)
    assert ec.edge_iou(a, a) == 1.0
    assert ec.edge_iou(a, shifted) > 0.7
    assert ec.edge_iou(a, shifted, tolerance=0) < 0.5
    assert ec.edge_iou(a, far) < 0.2
    assert ec.edge_iou(a, np.zeros_like(a)) == 0.0


def test_held_out_scenes_are_outside_every_training_range() -> None:
    from sdgate.demo import dataset as ds

    scenes = ec.held_out(4, 256)
    assert len(scenes) == 4
    assert all(s.seed >= ds.EVAL_BASE for s, _ in scenes)
    assert all(edges.any() for _, edges in scenes)
    assert ct.CONTROL_TRAIN_BASE < ds.EVAL_BASE


@pytest.mark.slow
def test_train_controlnet_smoke_runs_resumes_and_exports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdgate.cli.demo import app

    ckpt, export = tmp_path / "ckpt", tmp_path / "canny"
    runner = CliRunner()
    args = ["train-controlnet", "--smoke", "--ckpt-dir", str(ckpt)]
    first = runner.invoke(app, [*args, "--export", str(export)])
    assert first.exit_code == 0, first.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3
    again = runner.invoke(app, [*args, "--steps", "4"])
    assert again.exit_code == 0, again.output
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    net = ct.load_controlnet(export)
    assert tuple(net.config.conditioning_embedding_out_channels) == ct.EMBEDDING_CHANNELS


# -- the evaluator through the engine -------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ec.EngineGenerator]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("demo-controlnet")
    yield ec.EngineGenerator(data_dir=root / "data", models_dir=root / "models")
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_controlnet_unit_through_the_engine_changes_the_image(engine_generator: ec.EngineGenerator) -> None:
    """``DiffusersEngine.generate`` with a ``ControlNetUnit`` naming the built-in ControlNet: the
    catalog finds it, the engine loads the packaged folder, and its residuals reach the UNet."""
    settings = ec.ControlEvalSettings(n=1)
    (sample, edges), = ec.held_out(1, settings.size, seed=3)
    control = Image.fromarray(edges).convert("RGB")
    with_cn = engine_generator(sample.caption, sample.seed, control, settings)
    without = engine_generator(sample.caption, sample.seed, None, settings)
    assert with_cn.size == without.size == (settings.size, settings.size)
    diff = np.abs(np.asarray(with_cn, np.int16) - np.asarray(without, np.int16))
    assert diff.max() > 0


@pytest.mark.slow
def test_the_evaluator_scores_through_the_engine(engine_generator: ec.EngineGenerator) -> None:
    """The evaluator's bookkeeping on real generations (the issue's bar, mean IoU >= 0.6, is not met
    by the shipped weights yet: demo/RESULTS.md has the figures; no test pretends otherwise)."""
    report = ec.evaluate(engine_generator, ec.ControlEvalSettings(n=3), baseline=False)
    assert len(report.with_control) == 3 and all(0.0 <= v <= 1.0 for v in report.with_control)


@pytest.mark.slow
def test_the_demo_controlnet_through_webuiapi(tmp_path: Path) -> None:
    """``sdgate serve`` on a fresh data dir with an empty models folder (the built-ins only): A1111's
    ``alwayson_scripts.controlnet`` from webuiapi's ``ControlNetUnit``, the rendered scene through the
    server's canny preprocessor, scored by the evaluator."""
    import webuiapi

    from tests.harness import ProcessServer

    server = ProcessServer.sdgate(["--models-dir", str(tmp_path / "models"), "--device", "cpu"],
                                  tmp_path / "data")
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler", steps=20)
        assert any(m.startswith(ct.CATALOG_NAME) for m in api.controlnet_model_list())
        ious = []
        for sample, edges in ec.held_out(2, 256):
            scene = Image.fromarray(ct.to_uint8(ct.ds.render([sample.scene], 256))[0])
            unit = webuiapi.ControlNetUnit(image=scene, module="canny", model=ct.CATALOG_NAME,
                                           processor_res=256, threshold_a=100, threshold_b=200)
            result = api.txt2img(prompt=sample.caption, width=256, height=256, cfg_scale=4.0,
                                 seed=sample.seed, controlnet_units=[unit],
                                 alwayson_scripts={})  # not webuiapi's shared default dict
            assert result.images[0].size == (256, 256)
            assert "ControlNet" in result.info["infotexts"][0]
            ious.append(ec.edge_iou(edges, ec.image_edges(result.images[0])))
    finally:
        server.stop()
    assert len(ious) == 2 and all(0.0 <= v <= 1.0 for v in ious)
