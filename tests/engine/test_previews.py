"""Progress previews (``engine.previews``): projections, the fitted fallback, TAESD, the methods."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from safetensors.torch import save_file

from sdgate.core.models import ModelCatalog
from sdgate.engine import previews
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings
from tests.engine.conftest import generate
from tests.engine.test_control import Script


def _mean_rgb(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=float).reshape(-1, 3).mean(0)


def _constant(values: list[float], side: int = 8) -> torch.Tensor:
    return torch.tensor(values).view(1, len(values), 1, 1).expand(1, len(values), side, side).contiguous()


# --- projections ------------------------------------------------------------------------------------


def test_the_sd_projection_is_latent_sized_and_follows_the_factors() -> None:
    latent = _constant([1.5, 1.5, -1.5, -1.5])  # along SD's red column: red up, blue down
    image = previews.Previewer("latent", "sd1").render(None, latent)
    assert image.mode == "RGB" and image.size == (8, 8)
    r, g, b = _mean_rgb(image)
    assert r > g and r > b
    xl = previews.Previewer("latent", "sdxl").render(None, latent)
    assert xl.tobytes() != image.tobytes()  # SDXL's latent space has its own factors


class _Pipe:
    def __init__(self, vae: Any) -> None:
        self.vae = vae


def _vae(latent_channels: int, red: bool = False) -> AutoencoderKL:
    torch.manual_seed(3)
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32,
        scaling_factor=0.5,
    ).eval()
    if red:  # a VAE whose every decode leans red
        with torch.no_grad():
            vae.decoder.conv_out.bias.copy_(torch.tensor([0.8, -0.6, -0.6]))
    return vae


def test_a_latent_space_without_factors_gets_a_fit_to_its_own_vae() -> None:
    vae = _vae(latent_channels=6)
    latent = torch.randn(1, 6, 4, 4, generator=torch.Generator().manual_seed(9))
    previewer = previews.Previewer("latent", None)
    image = previewer.render(_Pipe(vae), latent)
    assert image.size == (4, 4)
    with torch.inference_mode():
        decoded = vae.decode(previews.vae_input(vae, latent)).sample
    pooled = torch.nn.functional.adaptive_avg_pool2d(decoded, (4, 4))[0]
    expected = _mean_rgb(previews.to_image(pooled))
    # A random VAE is far from linear: the fit gets its colour right, not its texture.
    assert np.abs(_mean_rgb(image) - expected).max() < 6
    assert set(previewer._fitted) == {6}  # fitted once, kept


def test_a_vae_that_decodes_red_gives_a_reddish_fitted_preview() -> None:
    vae = _vae(latent_channels=4, red=True)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        r, g, b = vae.decode(previews.vae_input(vae, latent)).sample.mean((0, 2, 3)).tolist()
    assert r > g and r > b
    preview = previews.Previewer("latent", None).render(_Pipe(vae), latent)  # no family: the fit
    pr, pg, pb = _mean_rgb(preview)
    assert pr > pg + 40 and pr > pb + 40


# --- TAESD ------------------------------------------------------------------------------------------


def _taesd_state(tiny: AutoencoderTiny) -> dict[str, torch.Tensor]:
    """The decoder's weights under TAESD's own key names (layer 0 of its Sequential is the clamp)."""
    out = {}
    for key, tensor in tiny.decoder.state_dict().items():
        index, _, rest = key.removeprefix("layers.").partition(".")
        out[f"{int(index) + 1}.{rest}"] = tensor.clone()
    return out


@pytest.fixture(scope="module")
def taesd() -> AutoencoderTiny:
    torch.manual_seed(5)
    return AutoencoderTiny().eval()


def _write_taesd(taesd: AutoencoderTiny, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _taesd_state(taesd)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path


def test_taesd_keys_map_onto_autoencoder_tiny(taesd: AutoencoderTiny) -> None:
    state = _taesd_state(taesd)
    assert "1.weight" in state and "0.weight" not in state  # TAESD's clamp holds no weights
    assert previews.taesd_to_diffusers(state).keys() == taesd.decoder.state_dict().keys()
    prefixed = {f"decoder.{k}": v for k, v in taesd.decoder.state_dict().items()}
    assert previews.taesd_to_diffusers(prefixed).keys() == taesd.decoder.state_dict().keys()


@pytest.mark.parametrize("where", ["VAE-approx/taesd_decoder.safetensors", "vae_approx/taesd_decoder.pth"])
def test_taesd_decoder_from_the_models_folder(taesd: AutoencoderTiny, tmp_path: Path, where: str) -> None:
    _write_taesd(taesd, tmp_path / "models" / where)
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models", device="cpu")
    previewer = previews.choose(settings, "sd1")
    assert previewer.method == "taesd" and previewer.taesd == tmp_path / "models" / where
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    image = previewer.render(None, latent)
    assert image.size == (64, 64)  # full size: the tiny decoder upsamples 8x
    with torch.inference_mode():
        expected = previews.to_image(taesd.decode(latent).sample[0])
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_which_method_each_setting_picks(taesd: AutoencoderTiny, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _write_taesd(taesd, models / "VAE-approx" / "taesd_decoder.safetensors")

    def method(preview_method: str, family: str | None) -> str:
        settings = Settings(data_dir=tmp_path, models_dir=models, device="cpu", preview_method=preview_method)
        return previews.choose(settings, family).method

    assert method("auto", "sd1") == "taesd" and method("auto", "sd2") == "taesd"
    assert method("auto", "sdxl") == "latent"  # no taesdxl_decoder here
    assert method("taesd", "sdxl") == "latent"  # asked for, absent: projected (and logged)
    assert method("latent", "sd1") == "latent" and method("none", "sd1") == "none"
    _write_taesd(taesd, models / "VAE-approx" / "taesdxl_decoder.pth")
    assert method("auto", "sdxl") == "taesd"


def test_a_broken_taesd_file_falls_back_to_the_projection(tmp_path: Path) -> None:
    path = tmp_path / "models" / "VAE-approx" / "taesd_decoder.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"1.weight": torch.zeros(2, 2)}, str(path))
    previewer = previews.Previewer("taesd", "sd1", path)
    assert previewer.render(None, torch.zeros(1, 4, 8, 8)).size == (8, 8)
    assert previewer.method == "latent"


# --- through the engine -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preview_models(
    tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory, taesd: AutoencoderTiny
) -> Path:
    models = tmp_path_factory.mktemp("preview-models")
    (models / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    _write_taesd(taesd, models / "VAE-approx" / "taesd_decoder.safetensors")
    return models


@pytest.fixture
def engine_with(preview_models: Path, tmp_path: Path) -> Callable[[str], DiffusersEngine]:
    def make(preview_method: str) -> DiffusersEngine:
        settings = Settings(
            data_dir=tmp_path, models_dir=preview_models, device="cpu", preview_method=preview_method
        )
        return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))

    return make


def test_preview_method_none_reports_steps_without_previews(
    engine_with: Callable[[str], DiffusersEngine],
) -> None:
    script = Script()
    generate(engine_with("none"), script, steps=3)
    assert [r.step for r in script.reports] == [1, 2, 3]
    assert all(r.preview is None for r in script.reports)


def test_engine_previews_come_from_taesd_when_present(engine_with: Callable[[str], DiffusersEngine]) -> None:
    script = Script()
    generate(engine_with("auto"), script, width=64, height=48, steps=2)
    preview = script.reports[-1].preview
    assert preview is not None and preview().size == (64, 48)  # TAESD: image size, not latent size
    sdxl = Script()
    generate(engine_with("auto"), sdxl, model="tiny-sdxl", steps=2)
    assert sdxl.reports[-1].preview is not None and sdxl.reports[-1].preview().size == (8, 8)  # projected


def test_images_do_not_depend_on_the_preview_method(engine_with: Callable[[str], DiffusersEngine]) -> None:
    outputs = [generate(engine_with(method), Script(), steps=2) for method in ("none", "auto")]
    assert np.array_equal(np.asarray(outputs[0].images[0].image), np.asarray(outputs[1].images[0].image))
