"""``benchmarks/gpu.py``'s bookkeeping, on the CPU with a tiny random model (issue 17).

The slow test runs the whole benchmark as a user does (a subprocess, a real ``sdgate serve`` child,
real HTTP clients) and then checks that every figure in its JSON is what it says: medians of the
listed calls, images/s = images / seconds, fractions of the floor from the same floor, and that the
server really generated every image the HTTP levels counted. Speed itself is not judged here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
CLIENTS, REQUESTS, REPEATS, STEPS, SIZE = [1, 2], [3, 4], 2, 2, 64


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_png_size_reads_the_header_and_refuses_what_is_not_a_png() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32)).save(buf, format="PNG")
    gpu = bench()
    assert gpu.png_size(buf.getvalue()) == (48, 32)
    with pytest.raises(ValueError):
        gpu.png_size(b"GIF89a" + bytes(40))


def test_check_compares_sdgate_with_plain_diffusers_call_for_call() -> None:
    gpu = bench()
    # The machine slowed down half-way: the medians alone would not say which is slower.
    data: dict[str, Any] = {
        "plain": {"latencies_s": [1.0, 1.0, 3.0, 3.0]},
        "engine": {"latencies_s": [1.05, 1.05, 3.15, 3.15]},
        "http_paired": {"median_ratio": 1.2},
    }
    check = gpu.check_figures(data)
    assert close(check["engine_time_vs_plain"], 1.05)
    assert close(check["http_time_vs_plain"], 1.2)
    assert check["within_10pct"] is False  # HTTP is 20 % slower
    data["http_paired"]["median_ratio"] = 1.1
    assert gpu.check_figures(data)["within_10pct"] is True
    data["engine"]["latencies_s"] = [1.2, 1.2, 3.6, 3.6]
    assert gpu.check_figures(data)["within_10pct"] is False


def check_latency(block: dict[str, Any], floor_s: float) -> None:
    assert len(block["latencies_s"]) == REPEATS
    assert all(s > 0 for s in block["latencies_s"])
    assert close(block["median_s"], statistics.median(block["latencies_s"]))
    assert close(block["images_per_s"], 1 / block["median_s"])
    assert close(block["of_floor"], floor_s / block["median_s"])


@pytest.mark.slow
def test_the_benchmark_counts_what_it_ran(tmp_path: Path) -> None:
    from tests.tinymodels import save_diffusers, tiny_sd

    models = tmp_path / "models"
    save_diffusers(tiny_sd(), models / "Stable-diffusion" / "tiny")
    out, markdown = tmp_path / "results.json", tmp_path / "results.md"
    command = [
        sys.executable, str(SCRIPT), "--arch", "demo", "--device", "cpu", "--models-dir", str(models),
        "--size", str(SIZE), "--steps", str(STEPS), "--clients", ",".join(map(str, CLIENTS)),
        "--requests", ",".join(map(str, REQUESTS)), "--repeats", str(REPEATS), "--warmup-calls", "1",
        "--threads", "1", "--out", str(out), "--markdown", str(markdown),
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    # 1. It ran the model it was given, with the settings asked.
    assert data["model"] == "tiny"
    assert (data["arch"], data["steps"], data["size"], data["device"]) == ("demo", STEPS, SIZE, "cpu")
    # 2. The floor: counted FLOPs over a measured peak.
    floor = data["floor"]
    parts = floor["parts_flop"]
    assert floor["source"] == "counted" and all(parts[k] > 0 for k in ("unet_cfg_pair", "vae_decode", "text"))
    assert close(
        floor["flop_per_image"], STEPS * parts["unet_cfg_pair"] + parts["vae_decode"] + parts["text"]
    )
    assert floor["peak_flops"] > 1e8
    assert close(floor["floor_s_per_image"], floor["flop_per_image"] / floor["peak_flops"])
    assert close(floor["floor_s_per_image"] * floor["floor_images_per_s"], 1.0)
    floor_s = floor["floor_s_per_image"]
    # 3. Batch 1 in process: medians of the listed calls.
    check_latency(data["plain"], floor_s)
    check_latency(data["engine"], floor_s)
    # 4. Over HTTP: one client paired with plain diffusers; then every counted image came back and
    # the server generated it.
    paired = data["http_paired"]
    assert len(paired["plain_s"]) == len(paired["http_s"]) == REPEATS
    ratios = [h / p for h, p in zip(paired["http_s"], paired["plain_s"], strict=True)]
    assert close(paired["median_ratio"], statistics.median(ratios))
    levels = data["http"]
    assert [h["clients"] for h in levels] == CLIENTS
    for level, requests in zip(levels, REQUESTS, strict=True):
        assert level["requests"] == requests == level["images"] == len(level["latencies_s"])
        assert level["server_images"] == level["images"]
        assert close(level["images_per_s"], level["images"] / level["seconds"])
        assert close(level["of_floor"], level["images_per_s"] * floor_s)
        latencies = sorted(level["latencies_s"])
        assert latencies[0] <= level["p50_s"] <= level["p95_s"] <= latencies[-1]
        assert level["seconds"] >= latencies[-1]  # the wall clock spans every timed request
    one = levels[0]
    assert sum(one["latencies_s"]) <= one["seconds"]  # one client: requests one after another
    assert one["seconds"] <= sum(one["latencies_s"]) + 1.0
    # 5. The verdict follows from the figures, and the table says it.
    check = data["check"]
    pairs = zip(data["engine"]["latencies_s"], data["plain"]["latencies_s"], strict=True)
    engine_ratio = statistics.median(e / p for e, p in pairs)
    assert close(check["engine_time_vs_plain"], engine_ratio)
    assert close(check["http_time_vs_plain"], paired["median_ratio"])
    assert check["within_10pct"] == (max(engine_ratio, paired["median_ratio"]) <= 1.1)
    verdict = "yes" if check["within_10pct"] else "no"
    assert f"sdgate within 10 % of plain diffusers: {verdict}" in markdown.read_text()
    assert f"sdgate within 10 % of plain diffusers: {verdict}" in proc.stdout
