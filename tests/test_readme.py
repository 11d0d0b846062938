"""Every example in the README runs (the two set-up commands are what CI itself runs)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ProcessServer, free_port

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.slow


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def all_usage_commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash")[1:]:  # the first block is the two set-up commands
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("sdgate "):
                commands.append(shlex.split(line))
    return commands


ACCESS_COMMANDS = ("keys", "audit")  # one walkthrough, run in order (a revoke needs its create)


def usage_commands() -> list[list[str]]:
    return [argv for argv in all_usage_commands() if argv[1] not in ACCESS_COMMANDS]


def access_commands() -> list[list[str]]:
    return [argv for argv in all_usage_commands() if argv[1] in ACCESS_COMMANDS]


def test_setup_block_has_exactly_two_commands() -> None:
    setup = [ln for ln in blocks("bash")[0].splitlines() if ln and not ln.startswith("#")]
    assert len(setup) == 2
    assert setup[0].endswith("sdgate serve")
    ci = (README.parent / ".ci" / "run").read_text()
    assert setup[1] in ci


@pytest.fixture
def workdir(tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    src = next((models / "Stable-diffusion").glob("*sd15*.safetensors"))
    shutil.copy(src, models / "Stable-diffusion" / "my-model.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv", usage_commands(), ids=lambda a: " ".join(a[1:3]))
def test_usage_command_runs(argv: list[str], workdir: Path) -> None:
    if argv[1] == "serve":
        server = ProcessServer.sdgate(argv[2:], workdir / f"data-{free_port()}")
        server.stop()
        assert server.proc.returncode in (0, -15), server.log.read_text()
        output = server.log.read_text()
        assert "listening on http://" in output and "model:" in output
    else:
        out = subprocess.run([sys.executable, "-m", "sdgate", *argv[1:]], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "my-model" in out.stdout


def test_python_examples_run_against_a_live_server(workdir: Path) -> None:
    server = ProcessServer.sdgate(["--models-dir", "./models", "--device", "cpu"], workdir / "data")
    try:
        examples = blocks("python")
        assert len(examples) == 2
        for code in examples:
            code = code.replace("http://127.0.0.1:7860", server.url)
            subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=workdir)
        assert (workdir / "out.png").stat().st_size > 0
        assert list((workdir / "out").glob("*.png"))
    finally:
        server.stop()


def test_the_keys_walkthrough_runs_in_order_and_its_key_works(workdir: Path) -> None:
    """The README's keys lines, in order, on one data dir; the key the first prints is the one a
    server on that data dir takes (and no key is refused), and the revoke at the end takes it away."""
    commands = access_commands()
    assert [argv[1:3] for argv in commands][:2] == [["keys", "create"], ["keys", "create"]]
    assert commands[-1][1:3] == ["keys", "revoke"]
    outputs = []
    for argv in commands[:-1]:
        out = subprocess.run([sys.executable, "-m", "sdgate", *argv[1:]], capture_output=True, text=True,
                             timeout=120, cwd=workdir)
        assert out.returncode == 0, out.stderr
        outputs.append(out.stdout)
    key = outputs[0].strip().splitlines()[-1]
    assert key.startswith("sdg_") and "app1" in outputs[2] and key not in outputs[2]
    data_dir = workdir / commands[0][commands[0].index("--data-dir") + 1]
    server = ProcessServer.sdgate(["--models-dir", "./models", "--device", "cpu"], data_dir)
    try:
        import httpx

        assert httpx.get(f"{server.url}/sdapi/v1/sd-models").status_code == 401
        ok = httpx.get(f"{server.url}/sdapi/v1/sd-models", auth=("anyone", key))
        assert ok.status_code == 200 and "my-model" in ok.text
        revoke = subprocess.run([sys.executable, "-m", "sdgate", *commands[-1][1:]], capture_output=True,
                                text=True, timeout=120, cwd=workdir)
        assert revoke.returncode == 0, revoke.stderr
        deadline = time.monotonic() + 15  # every node drops a cached key within 5 s
        while time.monotonic() < deadline:
            refused = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
            if refused.status_code == 401:
                break
            time.sleep(0.5)
        assert refused.status_code == 401 and "revoked" in refused.text
    finally:
        server.stop()
