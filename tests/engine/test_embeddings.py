"""Textual-inversion embeddings: every file format, safe loading, prompt use, infotext hashes."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdgate.core.infotext import parse_infotext
from sdgate.core.models import ModelCatalog
from sdgate.core.requests import GenerationRequest
from sdgate.engine import embeddings as te
from sdgate.engine.diffusers_engine import DiffusersEngine
from sdgate.engine.prompts import CHUNK, chunk_tokens, encode_text, encode_weighted, prompt_plan
from sdgate.settings import Settings
from tests import tinymodels as tm
from tests.engine.conftest import generate, pixels

WIDTH = tm.TINY


class _Evil:
    """Unpickling this would run a shell command: a safe loader must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _vectors(seed: int, count: int, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def write_embeddings(folder: Path, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # A1111 .pt, as its trainer saves it (a Parameter inside string_to_param).
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(_vectors(1, 2))},
            "name": "mystyle",
            "step": 500,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "tiny-sd15",
        },
        folder / "mystyle.pt",
    )
    save_file({"emb_params": _vectors(2, 1)}, str(folder / "shiny.safetensors"))  # A1111 safetensors
    torch.save({"<learned>": _vectors(3, 1)[0]}, folder / "learned.bin")  # diffusers learned_embeds
    save_file({"<tok>": _vectors(4, 3)}, str(folder / "three.safetensors"))  # any single tensor
    save_file({"clip_l": _vectors(5, 2), "clip_g": _vectors(6, 2)}, str(folder / "xlthing.safetensors"))
    torch.save({"string_to_param": {"*": _vectors(7, 1, width=16)}}, folder / "narrow.pt")  # wrong width
    (folder / "garbage.pt").write_bytes(os.urandom(300))
    (folder / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    save_file({"a": _vectors(8, 1), "b": _vectors(9, 1)}, str(folder / "twotensors.safetensors"))
    torch.save(_Evil(marker), folder / "evil.pt")
    (folder / "evil-raw.bin").write_bytes(pickle.dumps(_Evil(marker), protocol=2))


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ti-models")
    (root / "Stable-diffusion").symlink_to(tiny_models_dir / "Stable-diffusion")
    write_embeddings(root / "embeddings", root / "PWNED")
    return root


@pytest.fixture(scope="module")
def catalog(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelCatalog:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models_dir, device="cpu")
    return ModelCatalog(settings, builtin_dir=None)


@pytest.fixture(scope="module")
def ti_engine(catalog: ModelCatalog) -> Iterator[DiffusersEngine]:
    yield DiffusersEngine(catalog.settings, catalog)


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tm.tiny_sd(0)


@pytest.fixture(scope="module")
def found(catalog: ModelCatalog, pipe: Any) -> te.EmbeddingSet:
    return te.for_pipeline(catalog, pipe)


def test_every_format_loads_and_bad_files_are_skipped(found: te.EmbeddingSet, models_dir: Path) -> None:
    assert set(found.loaded) == {"mystyle", "shiny", "learned", "three"}
    assert {name: e.count for name, e in found.loaded.items()} == {
        "mystyle": 2,
        "shiny": 1,
        "learned": 1,
        "three": 3,
    }
    assert found.loaded["mystyle"].step == 500
    assert set(found.skipped) == {
        "xlthing",
        "narrow",
        "garbage",
        "truncated",
        "twotensors",
        "evil",
        "evil-raw",
    }
    assert "width" in found.skipped["narrow"] and "width" in found.skipped["xlthing"]
    assert not (models_dir / "PWNED").exists()  # the hostile pickles ran nothing


def test_the_name_becomes_the_vectors(pipe: Any, found: te.EmbeddingSet) -> None:
    """Encoding "a mystyle circle" equals encoding token ids whose embedding rows hold the vectors."""
    text = "a mystyle circle"
    with_ti = encode_weighted(pipe, text, None, found)
    assert not torch.equal(with_ti, encode_weighted(pipe, text, None))  # the plain word differs
    vectors = found.loaded["mystyle"].vectors[0]
    tok = pipe.tokenizer
    a, circle = (tok(w, add_special_tokens=False).input_ids[0] for w in ("a", "circle"))
    spare = [1000, 1001]  # two ordinary token ids whose rows we overwrite in a copy of the encoder
    ids = [tok.bos_token_id, a, *spare, circle, tok.eos_token_id]
    ids += [tok.eos_token_id] * (77 - len(ids))
    encoder = tm.tiny_sd(0).text_encoder
    with torch.no_grad():
        encoder.get_input_embeddings().weight[spare] = vectors
        direct = encoder(torch.tensor([ids]))[0]
    assert torch.allclose(with_ti, direct, atol=1e-5)


def test_embeddings_take_slots_in_the_chunk_and_emphasis(pipe: Any, found: te.EmbeddingSet) -> None:
    (chunk,) = chunk_tokens(pipe.tokenizer, "a (mystyle:1.5) circle", found)
    assert chunk.tokens[1:3] == [0, 0] and chunk.weights[:4] == [1.0, 1.5, 1.5, 1.0]
    assert [(offset, e.name) for offset, e in chunk.fixes] == [(1, "mystyle")]
    # 74 plain tokens leave one slot: the 2-vector embedding moves whole to the next chunk.
    chunks = chunk_tokens(pipe.tokenizer, "red " * 74 + "mystyle", found)
    assert len(chunks) == 2 and [(o, e.name) for o, e in chunks[1].fixes] == [(0, "mystyle")]
    assert chunks[0].tokens.count(0) == 0 and len(chunks[1].tokens) == CHUNK
    # Emphasis on the embedding changes the encoding; weight 1 does not.
    plain = encode_weighted(pipe, "a mystyle circle", None, found)
    assert torch.equal(plain, encode_weighted(pipe, "a (mystyle:1) circle", None, found))
    assert not torch.equal(plain, encode_weighted(pipe, "a (mystyle:1.5) circle", None, found))


def test_plan_reports_ti_hashes(pipe: Any, found: te.EmbeddingSet, models_dir: Path) -> None:
    request = GenerationRequest(prompt="shiny a mystyle circle, shiny", negative_prompt="three learned")
    plan = prompt_plan(pipe, "sd1", request, 3, embeddings=found)
    sha = {
        p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (models_dir / "embeddings").iterdir()
    }
    expected = (
        f"shiny: {sha['shiny']}, mystyle: {sha['mystyle']}, three: {sha['three']}, learned: {sha['learned']}"
    )
    assert plan.infotext_params() == {"TI hashes": expected}
    assert (
        prompt_plan(pipe, "sd1", GenerationRequest(prompt="a circle"), 3, embeddings=found).infotext_params()
        == {}
    )


def test_engine_uses_embeddings_and_writes_their_hashes(ti_engine: DiffusersEngine, models_dir: Path) -> None:
    with_ti = generate(ti_engine, prompt="a mystyle circle")
    assert not np.array_equal(pixels(with_ti)[0], pixels(generate(ti_engine, prompt="a circle"))[0])
    params = parse_infotext(with_ti.images[0].infotext)
    sha = hashlib.sha256((models_dir / "embeddings" / "mystyle.pt").read_bytes()).hexdigest()[:12]
    assert params["TI hashes"] == f"mystyle: {sha}"
    assert f'TI hashes: "mystyle: {sha}"' in with_ti.images[0].infotext
    # No embedding in the prompt: no hashes.
    assert "TI hashes" not in parse_infotext(generate(ti_engine, prompt="a circle").images[0].infotext)
    assert not (models_dir / "PWNED").exists()


def test_sdxl_takes_clip_l_and_clip_g(catalog: ModelCatalog) -> None:
    pipe = tm.tiny_sdxl(0)
    found = te.for_pipeline(catalog, pipe)
    assert set(found.loaded) == {"xlthing"}
    assert "mystyle" in found.skipped  # one tensor: an SD 1.x embedding
    plain = encode_text(pipe, "sdxl", "a xlthing circle", None)
    with_ti = encode_text(pipe, "sdxl", "a xlthing circle", None, found)
    assert not torch.equal(plain.embeds, with_ti.embeds)
    assert not torch.equal(plain.pooled, with_ti.pooled)
    # Each encoder got its own vectors: feed them through te1 / te2 rows directly.
    tok = pipe.tokenizer
    a, circle = (tok(w, add_special_tokens=False).input_ids[0] for w in ("a", "circle"))
    spare = [1000, 1001]
    ids = [tok.bos_token_id, a, *spare, circle, tok.eos_token_id]
    fresh = tm.tiny_sdxl(0)
    with torch.no_grad():
        fresh.text_encoder.get_input_embeddings().weight[spare] = found.loaded["xlthing"].vectors[0]
        fresh.text_encoder_2.get_input_embeddings().weight[spare] = found.loaded["xlthing"].vectors[1]
        z1 = fresh.text_encoder(
            torch.tensor([ids + [tok.eos_token_id] * (77 - len(ids))]), output_hidden_states=True
        )
        out2 = fresh.text_encoder_2(torch.tensor([ids + [0] * (77 - len(ids))]), output_hidden_states=True)
    direct = torch.cat([z1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    assert torch.allclose(with_ti.embeds, direct, atol=1e-5)
    assert with_ti.pooled is not None and torch.allclose(with_ti.pooled, out2.text_embeds, atol=1e-5)


def test_a_changed_file_is_read_again(catalog: ModelCatalog, pipe: Any, models_dir: Path) -> None:
    path = models_dir / "embeddings" / "later.safetensors"
    save_file({"emb_params": _vectors(10, 1)}, str(path))
    first = te.for_pipeline(catalog, pipe).loaded["later"]
    save_file({"emb_params": _vectors(11, 4)}, str(path))
    os.utime(path, (1, 1))  # a different mtime even on a coarse clock
    assert te.for_pipeline(catalog, pipe).loaded["later"].count == 4 != first.count
    path.unlink()
