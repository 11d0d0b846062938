"""Run every README example on a bare install, as a new user would (CI's first job).

    python scripts/readme_check.py [--venv DIR] [--keep]

1. Makes a fresh virtualenv (or reuses ``--venv``) and runs the README's first set-up command in it,
   without its final ``sdgate serve``: exactly what the README installs (the ``[server]`` extra,
   never the test extras, which would hide a missing run-time dependency).
2. Starts ``sdgate serve`` from that virtualenv in an empty folder, on the built-in demo model, and
   checks that the URL it prints accepts a connection at once.
3. Runs every example against it: each ``python`` block with the virtualenv's Python, each line of
   the ``console`` block through bash (``JOB_ID`` becomes the first job id the block printed),
   and each ``sdgate`` line of the other ``bash`` blocks (servers are started and stopped; a
   ``./models`` folder of tiny random-weight models stands in for the reader's own).

Standard library only: it runs before anything else is installed. Exit 0 when every example ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:7860"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def setup_commands() -> list[str]:
    return [ln for ln in blocks("bash")[0].splitlines() if ln.strip() and not ln.startswith("#")]


def console_lines() -> list[str]:
    lines: list[str] = []
    for block in blocks("console"):
        lines += [ln[2:].strip() for ln in block.splitlines() if ln.startswith("$ ")]
    return lines


def usage_lines() -> list[str]:
    """``sdgate`` lines of the bash blocks after the set-up block (comments after two spaces)."""
    out = []
    for block in blocks("bash")[1:]:
        out += [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.startswith("sdgate ")]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Step:
    """Prints what runs and how long it took; a failure ends the run with the output."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> Step:
        self.start = time.monotonic()
        print(f"- {self.what}", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"  ok ({time.monotonic() - self.start:.1f} s)" if exc[0] is None else "  FAILED", flush=True)


def run(cmd: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    proc = subprocess.run(["bash", "-c", cmd], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class Server:
    """``sdgate COMMAND ARGS`` (``serve``, or ``api``) in ``cwd``; ready when it prints its URL,
    which must then answer."""

    def __init__(self, args: str, env: dict[str, str], cwd: Path, log: Path, command: str = "serve") -> None:
        self.log = log
        self.command = command
        self.proc = subprocess.Popen(["bash", "-c", f"exec sdgate {command} {args}"], env=env, cwd=cwd,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://\S+)", self.log.read_text())
            if found:
                url = found.group(1)
                # The line is printed once the port accepts connections: no retry here on purpose.
                with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
                    assert r.status == 200
                return url
            if self.proc.poll() is not None:
                raise SystemExit(f"sdgate {self.command} exited:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise SystemExit(f"sdgate {self.command} printed no URL in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


class Feeder:
    """Submits small jobs while ``sdgate jobs events`` waits for some."""

    def __init__(self, url: str) -> None:
        self.url, self.done = url, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        body = json.dumps({"prompt": "a red circle on a blue background", "steps": 1,
                           "width": 64, "height": 64}).encode()
        while not self.done.wait(0.3):
            req = urllib.request.Request(self.url + "/api/v1/jobs", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30):
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)


def install(venv: Path, env: dict[str, str]) -> None:
    first = setup_commands()[0]
    command = re.sub(r"\s*&&\s*sdgate serve\s*$", "", first)
    assert command != first, f"the first set-up command must end with `sdgate serve`: {first}"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with Step(f"install: {command}"):
        run(command, env, ROOT, timeout=1800)


DRAWN = """
import sys
from PIL import Image
from sdgate.demo.analyser import analyse
from sdgate.demo.dataset import parse_caption
asked = parse_caption(sys.argv[1])
for path in sys.argv[2:]:
    found = analyse(Image.open(path))
    drawn = {(r.color, r.kind) for r in found.regions}
    wanted = {(s.color, s.kind) for s in asked.shapes}
    if (asked.background and found.background != asked.background) or not wanted <= drawn:
        sys.exit(f"{path}: asked for {asked}, the demo analyser sees {found}")
"""


def check_drawn(prompt: str, paths: list[str], env: dict[str, str], work: Path) -> None:
    """The README's seeded demo prompts must draw what they say (background, colour and shape)."""
    assert paths, f"no image saved for {prompt!r}"
    run(f"python -c {shlex.quote(DRAWN)} {shlex.quote(prompt)} {shlex.join(paths)}", env, work)


def check_sdk_alone(env: dict[str, str], work: Path) -> dict[str, str]:
    """The README's SDK-only install: a wheel, in a virtualenv with no torch, drives the server."""
    wheel = re.search(r"`(dist/sdgate-[^`]+\.whl)`", README.read_text(encoding="utf-8"))
    assert wheel, "the README names the wheel it builds"
    with Step(f"SDK alone: pip wheel --no-deps -w dist . && pip install {wheel.group(1)}"):
        run(f"pip wheel -q --no-deps -w {shlex.quote(str(work / 'dist'))} .", env, ROOT)
        sdk = work / "sdk-venv"
        subprocess.run([sys.executable, "-m", "venv", str(sdk)], check=True)
        sdk_env = {**env, "PATH": f"{sdk / 'bin'}:{env['PATH'].split(':', 1)[1]}", "VIRTUAL_ENV": str(sdk)}
        run(f"pip install -q {wheel.group(1)}", sdk_env, work)
        run("python -c 'import importlib.util as u, sdgate; assert u.find_spec(\"torch\") is None; "
            "sdgate.Client'", sdk_env, work)
        run('sdgate generate "a red circle on a blue background" --steps 4 -o sdk-out', sdk_env, work)
    return sdk_env


def check_api_node(sdk_env: dict[str, str], work: Path) -> None:
    """The README's API node: the wheel with the ``api`` extra, still without torch, serves every
    dialect from the running ``sdgate serve``'s data dir while that process's worker runs the jobs."""
    found = re.search(r'pip install "(dist/sdgate-[^"]+\.whl\[api\])"', README.read_text(encoding="utf-8"))
    assert found, "the README shows the API node's install"
    with Step(f'API node without torch: pip install "{found.group(1)}" && sdgate api'):
        run(f"pip install -q {shlex.quote(found.group(1))}", sdk_env, work)
        run("python -c 'import importlib.util as u; assert u.find_spec(\"torch\") is None'", sdk_env, work)
        node = Server(f"--data-dir sdgate-data --port {free_port()}", sdk_env, work, work / "api-node.log",
                      command="api")
        try:
            api_env = {**sdk_env, "SDGATE_BASE_URL": node.url}
            run('sdgate generate "a blue square on a white background" --steps 4 -o api-out', api_env, work)
        finally:
            node.stop()


def make_models(env: dict[str, str], work: Path) -> None:
    """A ``./models`` folder for the usage lines that name one: tiny random-weight models."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from tests import tinymodels as tm; "
        "sd = Path('models/Stable-diffusion'); "
        "tm.save_single_file(tm.tiny_sd(0), 'sd1', sd / 'my-model.safetensors')"
    )
    run(f"python -c {shlex.quote(code)} {shlex.quote(str(ROOT))}", env, work)


def check_examples(env: dict[str, str], work: Path) -> None:
    port = 7860 if port_is_free(7860) else free_port()
    env = {**env, "SDGATE_PORT": str(port)}  # the README's own port when this machine has it free
    with Step("sdgate serve (the README's first command, in an empty folder)"):
        server = Server("", env, work, work / "serve.log")
    env["SDGATE_BASE_URL"] = server.url
    try:
        for i, code in enumerate(blocks("python")):
            with Step(f"python example {i + 1}"):
                (work / f"example{i}.py").write_text(code.replace(DEFAULT_URL, server.url))
                run(f"python example{i}.py", env, work)
        job_id = ""
        for line in console_lines():
            line = line.split("  #")[0].strip().replace("JOB_ID", job_id)
            with Step(f"$ {line}"):
                feeder = Feeder(server.url) if line.startswith("sdgate jobs events") else None
                try:
                    out = run(line, env, work)
                finally:
                    if feeder is not None:
                        feeder.stop()
                if not job_id and (found := re.search(r"(job_\w+?)-\d+\.png", out)):
                    job_id = found.group(1)
                if line.startswith("sdgate generate") and "--seed" in line:
                    check_drawn(shlex.split(line)[2], re.findall(r"\S+\.png", out), env, work)
        check_api_node(check_sdk_alone(env, work), work)
    finally:
        server.stop()
    make_models(env, work)
    for line in usage_lines():
        argv = shlex.split(line)
        with Step(line):
            if argv[1] == "serve":
                data = work / f"data-{free_port()}"
                extra = f"--port {free_port()} --data-dir {data}"
                other = Server(f"{shlex.join(argv[2:])} {extra}", env, work, data.with_suffix(".log"))
                other.stop()
            else:
                run(line, env, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="virtualenv to create or reuse (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and virtualenv")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sdgate-readme-"))
    venv = args.venv or tmp / "venv"
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDGATE_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), HF_HUB_OFFLINE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    start = time.monotonic()
    try:
        install(venv, env)
        check_examples(env, work)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"README examples: all ran on a bare install ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
