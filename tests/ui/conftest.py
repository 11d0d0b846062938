"""The web UI in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
``scripts/browser.sh``; Selenium drives it) against a real ``sdgate serve`` subprocess on the
built-in demo model. Without a browser these tests are skipped, and fail in CI (``CI`` set) or with
``SDGATE_REQUIRE_BROWSER=1``. Screenshots go to ``$SDGATE_ARTIFACTS/ui`` (else a temporary folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import free_port

CHROMIUM = os.environ.get("SDGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("SDGATE_CHROMEDRIVER") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")
START_S = 90.0


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/browser.sh)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (scripts/browser.sh installs Debian's chromium and chromium-driver)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent / "test_web_ui.py"
    mine = [item for item in items if Path(str(item.fspath)) == here]
    for item in mine:
        item.add_marker(pytest.mark.browser)
    reason = _missing() if mine else None
    if reason is None:
        return
    if os.environ.get("CI") or os.environ.get("SDGATE_REQUIRE_BROWSER") == "1":
        return  # they run, and fail saying what is missing
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=reason))


class Server:
    """``sdgate serve`` in a subprocess on one port and data dir; ``restart()`` keeps both."""

    def __init__(self, data_dir: Path, *, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.extra = extra or []
        self.log = data_dir / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SDGATE_WORKER_POLL_S": "0.05",
               "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sdgate", "serve", "--port", str(self.port), "--data-dir", str(data),
                 "--device", "cpu", *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdgate serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"sdgate serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("SDGATE_ARTIFACTS")
    folder = Path(root) / "ui" if root else tmp_path_factory.mktemp("ui-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("ui-server"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def make_driver(width: int = 1280, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    return driver


@pytest.fixture
def driver() -> Iterator[Any]:
    d = make_driver()
    try:
        yield d
    finally:
        d.quit()
