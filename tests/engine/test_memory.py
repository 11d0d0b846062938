"""Small-GPU policy choice and installation (CPU-testable parts: no CUDA here)."""

from __future__ import annotations

from typing import Any

import pytest

from sdgate.engine import memory

GIB = 2**30


@pytest.mark.parametrize(
    ("setting", "device", "free", "mode"),
    [
        ("auto", "cpu", None, "off"),
        ("lowvram", "mps", None, "off"),
        ("auto", "cuda", 24 * GIB, "off"),
        ("auto", "cuda", 6 * GIB, "medvram"),
        ("auto", "cuda", 3 * GIB, "lowvram"),
        ("auto", "cuda", None, "off"),
        ("medvram", "cuda", 80 * GIB, "medvram"),
        ("off", "cuda", 1 * GIB, "off"),
    ],
)
def test_choose(setting: str, device: str, free: int | None, mode: str) -> None:
    plan = memory.choose(setting, device_type=device, free_bytes=free, model_bytes=7 * GIB)
    assert plan.mode == mode


class _Vae:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def enable_slicing(self) -> None:
        self.calls.append("slicing")

    def enable_tiling(self) -> None:
        self.calls.append("tiling")


class _Pipe:
    def __init__(self) -> None:
        self.vae = _Vae()
        self.calls: list[str] = []

    def enable_model_cpu_offload(self, device: Any) -> None:
        self.calls.append("model")

    def enable_sequential_cpu_offload(self, device: Any) -> None:
        self.calls.append("sequential")

    def enable_attention_slicing(self) -> None:
        self.calls.append("attention")


@pytest.mark.parametrize(
    ("mode", "calls"),
    [("off", []), ("medvram", ["model", "attention"]), ("lowvram", ["sequential", "attention"])],
)
def test_apply(mode: str, calls: list[str]) -> None:
    pipe = _Pipe()
    memory.apply(pipe, memory.MemoryPlan(mode, "test"), "cuda")
    assert pipe.calls == calls
    assert pipe.vae.calls == ([] if mode == "off" else ["slicing", "tiling"])


def test_oom_advice_names_what_to_lower() -> None:
    text = memory.oom_advice("auto", batch_size=4, width=1024, height=1024)
    assert "batch_size" in text and "width/height" in text and "--medvram" in text
    assert "--lowvram" in memory.oom_advice("medvram", batch_size=1, width=512, height=512)
    assert "--" not in memory.oom_advice("lowvram", batch_size=1, width=512, height=512)
