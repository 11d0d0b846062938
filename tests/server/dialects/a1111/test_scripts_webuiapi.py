"""``webuiapi``'s own ``script_name``/``script_args`` against a live ``sdgate serve`` (tiny models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ProcessServer

pytestmark = pytest.mark.slow


@pytest.fixture
def live(tmp_path: Path, tiny_models_dir: Path) -> Iterator[ProcessServer]:
    args = ["--models-dir", str(tiny_models_dir), "--device", "cpu"]
    server = ProcessServer.sdgate(args, tmp_path / "data")
    yield server
    server.stop()


def test_webuiapi_xyz_plot_and_scripts_listing(live: ProcessServer) -> None:
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=2)
    assert "x/y/z plot" in api.get_scripts()["txt2img"]
    # the README's shape: X type 4 = Steps, the rest left to the script's defaults
    result = api.txt2img(
        prompt="a red circle", width=64, height=64, seed=3, script_name="X/Y/Z Plot",
        script_args=[4, "1,2", [], 0, "", [], 0, "", [], True, True],
    )  # fmt: skip
    assert len(result.images) == 1 + 2
    assert [img.size for img in result.images[1:]] == [(64, 64), (64, 64)]
    assert result.info["infotexts"][1].count("Steps: 1") == 1
    assert "Steps: 2" in result.info["infotexts"][2]
