"""External VAE files (A1111's ``sd_vae``): made here in both key layouts, swapped in per job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdgate.core.errors import InvalidRequest
from sdgate.core.infotext import parse_infotext
from sdgate.core.models import ModelCatalog, compute_sha256
from sdgate.core.requests import HiresSettings
from sdgate.engine import vae as vae_mod
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.settings import Settings
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels


def vae_state(seed: int, layout: str, *, vae_levels: int = 4) -> dict[str, torch.Tensor]:
    """The VAE of a tiny SD 1.5 built from ``seed``: other weights than the model's (seed 0)."""
    vae = tm.tiny_sd(seed, vae_levels=vae_levels).vae
    state = {k: v.detach().contiguous().clone() for k, v in vae.state_dict().items()}
    if layout == "diffusers":
        return state
    ldm = tm.vae_to_ldm(state, vae.config)  # keys under first_stage_model.
    if layout == "ldm":  # what a standalone A1111 VAE file holds: no prefix
        return {k.removeprefix("first_stage_model."): v for k, v in ldm.items()}
    return ldm


def write_vae(path: Path, state: dict[str, torch.Tensor], *, nested: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if nested else state, path)
    return path


@pytest.fixture(scope="module")
def vae_models(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vae-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    write_vae(root / "VAE" / "blue.safetensors", vae_state(7, "ldm"))
    write_vae(root / "VAE" / "sub" / "blue-diffusers.pt", vae_state(7, "diffusers"))
    write_vae(root / "vae" / "blue-prefixed.ckpt", vae_state(7, "ldm-prefixed"), nested=True)
    write_vae(root / "VAE" / "tiny-sd15.vae.safetensors", vae_state(8, "ldm"))
    write_vae(root / "VAE" / "narrow.safetensors", vae_state(9, "ldm", vae_levels=3))
    return root


@pytest.fixture(scope="module")
def vae_engine(vae_models: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=vae_models, device="cpu")
    return DiffusersEngine(settings, ModelCatalog(settings, builtin_dir=None))


def test_a_vae_file_changes_the_image_and_the_model_gets_its_own_back(vae_engine: DiffusersEngine) -> None:
    before = pixels(generate(vae_engine, batch_size=2))
    swapped = generate(vae_engine, batch_size=2, vae="blue.safetensors")
    assert all(not np.array_equal(a, b) for a, b in zip(before, pixels(swapped), strict=True))
    after = pixels(generate(vae_engine, batch_size=2))
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    # The infotext names the file and its hash, in A1111's order; the model's own VAE is not named.
    path = vae_engine.catalog.find_vae("blue.safetensors")
    assert path is not None
    params = parse_infotext(swapped.images[0].infotext)
    assert params["VAE"] == "blue.safetensors" and params["VAE hash"] == compute_sha256(path.path)[:10]
    text = swapped.images[0].infotext
    assert text.index("Model: tiny-sd15, VAE hash: ") < text.index("VAE: blue.safetensors")
    assert "VAE" not in generate(vae_engine).images[0].infotext


def test_both_layouts_and_every_container_load_the_same_weights(vae_engine: DiffusersEngine) -> None:
    reference = pixels(generate(vae_engine, vae="blue.safetensors"))[0]
    for name in ("blue-diffusers.pt", "sub/blue-diffusers.pt", "blue-prefixed", "BLUE-PREFIXED.ckpt"):
        assert np.array_equal(reference, pixels(generate(vae_engine, vae=name))[0]), name


def test_loaded_vaes_are_cached_by_path(vae_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    generate(vae_engine, vae="blue.safetensors")
    reads: list[Path] = []
    real = vae_mod.read_state_dict
    monkeypatch.setattr(vae_mod, "read_state_dict", lambda p: reads.append(p) or real(p))
    generate(vae_engine, vae="blue.safetensors")
    assert reads == []
    for name in ("blue-diffusers.pt", "blue-prefixed.ckpt", "blue.safetensors"):
        generate(vae_engine, vae=name)
    assert len(reads) == 3  # the LRU holds two: the first one had to be read again
    assert len(vae_engine.vaes._entries) == vae_mod.CACHE_SIZE


def test_automatic_means_the_vae_named_like_the_checkpoint(vae_engine: DiffusersEngine) -> None:
    own = pixels(generate(vae_engine))[0]
    auto = generate(vae_engine, vae="Automatic")
    assert parse_infotext(auto.images[0].infotext)["VAE"] == "tiny-sd15.vae.safetensors"
    assert np.array_equal(pixels(auto)[0], pixels(generate(vae_engine, vae="tiny-sd15.vae.safetensors"))[0])
    assert not np.array_equal(own, pixels(auto)[0])
    # No such file for the other checkpoint: its own VAE, and "None" is always the model's own.
    other = generate(vae_engine, model="tiny-sd15-diffusers", vae="Automatic")
    assert "VAE" not in other.images[0].infotext
    assert np.array_equal(own, pixels(generate(vae_engine, vae="None"))[0])


@pytest.mark.parametrize(
    ("name", "message"), [("missing.safetensors", "not found"), ("narrow.safetensors", "cannot be used")]
)
def test_unknown_or_unfitting_vaes_are_bad_requests(
    vae_engine: DiffusersEngine, name: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as err:
        generate(vae_engine, vae=name)
    assert err.value.field == "vae"
    before = pixels(generate(vae_engine))[0]  # a failed swap leaves nothing behind
    assert np.array_equal(before, pixels(generate(vae_engine, vae="None"))[0])


def test_a_file_that_is_no_vae_is_refused(tmp_path: Path) -> None:
    like = tm.tiny_sd(0).vae
    with pytest.raises(vae_mod.UnsupportedModel, match="no VAE"):
        vae_mod.build_vae({"something.weight": torch.zeros(2)}, like, torch.device("cpu"))


def test_the_catalog_lists_vaes_as_a1111_names_them(vae_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "Stable-diffusion" / "m.safetensors").symlink_to(vae_models / "VAE" / "blue.safetensors")
    (root / "Stable-diffusion" / "m.vae.pt").write_bytes(b"x")
    for name in ("vae10.safetensors", "vae2.safetensors", "sub/a.ckpt", "notes.txt"):
        (root / "VAE" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "VAE" / name).write_bytes(b"x")
    catalog = ModelCatalog(Settings(data_dir=tmp_path / "data", models_dir=root), builtin_dir=None)
    assert [v.name for v in catalog.vaes()] == ["a.ckpt", "m.vae.pt", "vae2.safetensors", "vae10.safetensors"]
    assert [m.name for m in catalog.list()] == ["m"]  # a VAE beside a checkpoint is not a checkpoint
    beside = catalog.vae_beside(catalog.resolve("m"))
    assert beside is not None and beside.name == "m.vae.pt"
    assert catalog.find_vae("sub/a.ckpt") == catalog.find_vae("a") == catalog.vaes()[0]


@pytest.mark.slow
def test_img2img_and_hires_use_the_vae_and_give_it_back(vae_engine: DiffusersEngine) -> None:
    from tests.engine.test_img2img import _noise_image, run

    init = _noise_image(64, 64)
    plain, hires = (
        run(vae_engine, init),
        generate(vae_engine, hires=HiresSettings(scale=1.5, second_pass_steps=2)),
    )
    assert not np.array_equal(pixels(plain)[0], pixels(run(vae_engine, init, vae="blue.safetensors"))[0])
    swapped = generate(
        vae_engine, hires=HiresSettings(scale=1.5, second_pass_steps=2), vae="blue.safetensors"
    )
    assert not np.array_equal(pixels(hires)[0], pixels(swapped)[0])
    assert np.array_equal(pixels(plain)[0], pixels(run(vae_engine, init))[0])
    again = generate(vae_engine, hires=HiresSettings(scale=1.5, second_pass_steps=2))
    assert np.array_equal(pixels(hires)[0], pixels(again)[0])


def test_tiling_pads_the_external_vae_and_both_are_put_back(vae_engine: DiffusersEngine) -> None:
    from sdgate.core.engine import StepAction, StepReport

    seen: list[tuple[bool, str]] = []
    own = vae_engine._get_model(vae_engine.catalog.resolve("tiny-sd15")).pipeline.vae
    own_decoder = own.decoder

    class Spy:
        def on_step(self, report: StepReport) -> StepAction:
            seen.append((own.decoder is not own_decoder, own.decoder.conv_in.padding_mode))
            return StepAction.CONTINUE

    generate(vae_engine, Spy(), tiling=True, vae="blue.safetensors")
    assert seen and all(step == (True, "circular") for step in seen)
    assert own.decoder is own_decoder and own_decoder.conv_in.padding_mode == "zeros"
    for external in vae_engine.vaes._entries.values():
        assert all(m.padding_mode == "zeros" for m in external.modules() if isinstance(m, torch.nn.Conv2d))
