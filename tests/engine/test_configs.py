"""Shapes -> component configs, checked on full-size SD 1.5 / 2.x / XL key layouts (meta tensors).

The full-size layouts come from the shipped configs through the test fixture's own diffusers->LDM
converter; three independent anchors keep that from being circular: diffusers' own model-type
detection recognises them, diffusers' own LDM->diffusers conversion maps them back onto exactly the
diffusers modules, and the parameter counts are the published ones.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)

from sdgate.core.models import Family, detect_family, vae_factor_from_shapes
from sdgate.engine import configs as cfgs
from tests import tinymodels as tm

FAMILIES = ("sd1", "sd2", "sdxl")
# Published parameter counts: (UNet, VAE, text encoder[, text encoder 2]).
PARAMS = {
    "sd1": (859_520_964, 83_653_863, 123_060_480),
    "sd2": (865_910_724, 83_653_863, 340_387_840),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
}


@pytest.fixture(scope="module", params=FAMILIES)
def real(request: pytest.FixtureRequest) -> tuple[Family, dict[str, torch.Tensor]]:
    return request.param, tm.real_ldm_meta(request.param)


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_real_layouts_are_what_diffusers_recognises(real: tuple[Family, dict[str, torch.Tensor]]) -> None:
    family, state = real
    assert infer_diffusers_model_type(state) == {"sd1": "v1", "sd2": "v2", "sdxl": "xl_base"}[family]
    assert detect_family(_shapes(state)) == family
    assert vae_factor_from_shapes(_shapes(state)) == 8


def test_configs_from_real_shapes_are_the_shipped_ones(real: tuple[Family, dict[str, torch.Tensor]]) -> None:
    family, state = real
    derived = cfgs.component_configs(_shapes(state), family)
    assert derived == cfgs.shipped_configs(family)


def test_shipped_configs_have_the_published_parameter_counts() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    for family, expected in PARAMS.items():
        shipped = cfgs.shipped_configs(family)
        with init_empty_weights():
            modules = [
                UNet2DConditionModel.from_config(shipped["unet"]),
                AutoencoderKL.from_config(shipped["vae"]),
                CLIPTextModel(CLIPTextConfig(**shipped["text_encoder"])),
            ]
            if "text_encoder_2" in shipped:
                modules.append(CLIPTextModelWithProjection(CLIPTextConfig(**shipped["text_encoder_2"])))
        assert tuple(sum(p.numel() for p in m.parameters()) for m in modules) == expected, family


def test_diffusers_conversion_maps_real_layouts_onto_the_modules(
    real: tuple[Family, dict[str, torch.Tensor]],
) -> None:
    family, state = real
    derived = cfgs.component_configs(_shapes(state), family)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(derived["unet"])
        vae = AutoencoderKL.from_config(derived["vae"])
    for module, converted in (
        (unet, convert_ldm_unet_checkpoint(state, derived["unet"])),
        (vae, convert_ldm_vae_checkpoint(state, derived["vae"])),
    ):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_known_keys_of_real_checkpoints() -> None:
    sd1, sd2, xl = (tm.real_ldm_shapes(f) for f in FAMILIES)
    assert sd1["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)  # conv
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd1  # no attention in up block 0
    assert "model.diffusion_model.output_blocks.2.2.conv.weight" in xl
    assert sd2["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert xl["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert xl["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert xl["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def test_tiny_shapes_give_the_tiny_configs() -> None:
    pipe = tm.tiny_sdxl(0)
    derived = cfgs.component_configs(_shapes(tm.pipeline_to_ldm(pipe, "sdxl")), "sdxl")
    for key in (
        "block_out_channels",
        "layers_per_block",
        "down_block_types",
        "up_block_types",
        "cross_attention_dim",
        "attention_head_dim",
        "transformer_layers_per_block",
        "projection_class_embeddings_input_dim",
        "addition_time_embed_dim",
        "use_linear_projection",
    ):
        assert _plain(derived["unet"][key]) == _plain(pipe.unet.config[key]), key
    assert derived["vae"]["block_out_channels"] == [32] * 4 and derived["vae"]["layers_per_block"] == 1
    assert derived["text_encoder"]["num_hidden_layers"] == 2
    assert derived["text_encoder_2"]["projection_dim"] == 32


def test_sd2_text_encoder_drops_the_last_layer_and_f4_vae_is_seen() -> None:
    sd2 = _shapes(tm.pipeline_to_ldm(tm.tiny_sd(0, family="sd2"), "sd2"))
    derived = cfgs.component_configs(sd2, "sd2")
    assert derived["text_encoder"]["num_hidden_layers"] == 2  # the file holds 3 resblocks
    assert derived["unet"]["use_linear_projection"] is True
    f4 = _shapes(tm.pipeline_to_ldm(tm.tiny_sd(0, vae_levels=3), "sd1"))
    assert cfgs.component_configs(f4, "sd1")["vae"]["block_out_channels"] == [32, 32, 32]
    assert vae_factor_from_shapes(f4) == 4


def test_sd2_v_configs_and_native_sizes() -> None:
    assert cfgs.native_size_of(cfgs.shipped_configs("sd1")) == 512
    assert cfgs.native_size_of(cfgs.shipped_configs("sd2")) == 512
    v = cfgs.shipped_configs(cfgs.config_key("sd2", True))
    assert cfgs.native_size_of(v) == 768 and v["scheduler"]["prediction_type"] == "v_prediction"
    assert cfgs.native_size_of(cfgs.shipped_configs("sdxl")) == 1024


def test_a_checkpoint_without_a_vae_is_unsupported() -> None:
    shapes = {k: v for k, v in tm.real_ldm_shapes("sd1").items() if not k.startswith("first_stage_model.")}
    with pytest.raises(cfgs.UnsupportedCheckpoint):
        cfgs.component_configs(shapes, "sd1")
