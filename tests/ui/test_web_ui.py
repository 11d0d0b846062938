"""The web UI at /ui, end to end in headless Chromium against ``sdgate serve`` on the demo model:
generate with live progress, interrupt, inpaint with a painted mask, reuse a seed, read parameters
from a PNG, history and queue, an API key login, a phone-width screen, a server restart mid-job.
Images are 256x256 with few steps: the demo model makes one in about a second on one CPU core."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.ui.conftest import Server, make_driver

WAIT_S = 60.0
SIZE = 256
STEPPING = "return /^step [1-9]/.test(document.getElementById('progress-step').textContent)"


def wait_for(check: Callable[[], Any], timeout: float = WAIT_S, what: str = "the page") -> Any:
    """Polls ``check`` until it is true. An element the page re-rendered between finding and reading
    it (Selenium's stale element) is a "not yet": the next look finds the new one."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def open_ui(driver: Any, url: str) -> None:
    driver.get(url + "/")  # the redirect to /ui is part of what is tested
    assert driver.current_url.rstrip("/").endswith("/ui")
    wait_for(lambda: js(driver, "return document.body.dataset.ready === '1'"), what="the listings")


def fill(driver: Any, values: dict[str, Any]) -> None:
    for field, value in values.items():
        element = driver.find_element("id", field)
        element.clear()
        element.send_keys(str(value))


def setup_form(driver: Any, prompt: str, *, steps: int = 6, seed: int = -1, n_iter: int = 1) -> None:
    fill(driver, {"prompt": prompt, "width": SIZE, "height": SIZE, "steps": steps, "seed": seed,
                  "n_iter": n_iter})


def cards(driver: Any) -> list[dict[str, str]]:
    return js(driver, """return [...document.querySelectorAll('#gallery .card')].map(c => (
        {seed: c.dataset.seed, id: c.dataset.imageId}))""")


def record_progress(driver: Any) -> None:
    """Keep every progress text and preview the page shows (a short job's steps fly by)."""
    js(driver, """window.__seen = {steps: [], previews: 0, etas: []};
        new MutationObserver(() => {
          const s = document.getElementById('progress-step').textContent;
          const e = document.getElementById('progress-eta').textContent;
          if (s && window.__seen.steps.at(-1) !== s) window.__seen.steps.push(s);
          if (e) window.__seen.etas.push(e);
        }).observe(document.getElementById('progress'),
                   {subtree: true, childList: true, characterData: true});
        new MutationObserver(() => {
          if (document.getElementById('preview').src.startsWith('data:image/')) window.__seen.previews++;
        }).observe(document.getElementById('preview'), {attributes: true});""")


def generate(driver: Any, *, count: int = 1) -> list[dict[str, str]]:
    before = len(cards(driver))
    driver.find_element("id", "generate-btn").click()
    return wait_for(lambda: (c := cards(driver)) and len(c) >= before + count and c, what="the image")


def progress_state(driver: Any) -> str:
    return js(driver, "return document.getElementById('progress').dataset.state || ''")


def image(server: Server, image_id: str, headers: dict[str, str] | None = None) -> np.ndarray:
    data = httpx.get(f"{server.url}/api/v1/images/{image_id}", headers=headers or {}, timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def shot(driver: Any, artifacts: Path, name: str) -> None:
    driver.save_screenshot(str(artifacts / f"{name}.png"))


def no_page_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


# -- the tests ---------------------------------------------------------------------------------------


def test_generate_shows_progress_preview_and_the_image(server: Server, driver: Any, artifacts: Path) -> None:
    open_ui(driver, server.url)
    setup_form(driver, "a red circle on a blue background", steps=8, seed=7)
    record_progress(driver)
    found = generate(driver)
    seen = js(driver, "return window.__seen")
    assert any(s.startswith("step ") and s.endswith("/8") for s in seen["steps"]), seen
    assert seen["previews"] >= 1, seen
    assert found[0]["seed"] == "7"
    assert progress_state(driver) == "succeeded"
    # The image is shown, and its download link is the same PNG the API serves.
    assert js(driver, "return document.querySelector('#gallery .card img').naturalWidth") == SIZE
    href = js(driver, "return document.querySelector('#gallery .card a[download]').getAttribute('download')")
    assert href.endswith("-0.png")
    shot(driver, artifacts, "txt2img")
    no_page_errors(driver)


def test_reusing_a_seed_gives_the_same_image(server: Server, driver: Any) -> None:
    open_ui(driver, server.url)
    setup_form(driver, "a yellow star on a black background", steps=5, seed=-1)
    first = generate(driver)[0]
    assert int(first["seed"]) >= 0
    driver.find_element("id", "seed-reuse").click()
    assert driver.find_element("id", "seed").get_attribute("value") == first["seed"]
    again = generate(driver)[0]
    assert again["seed"] == first["seed"] and again["id"] == first["id"]  # ids are content hashes
    driver.find_element("id", "seed-random").click()
    assert driver.find_element("id", "seed").get_attribute("value") == "-1"
    assert generate(driver)[0]["id"] != first["id"]


def test_interrupting_a_long_job(server: Server, driver: Any, artifacts: Path) -> None:
    open_ui(driver, server.url)
    setup_form(driver, "a white triangle on a green background", steps=150, seed=3)
    driver.find_element("id", "generate-btn").click()
    wait_for(lambda: js(driver, STEPPING), what="the first steps")
    wait_for(lambda: driver.find_element("id", "progress-eta").text.startswith("ETA "), what="an ETA")
    started = time.monotonic()
    driver.find_element("id", "interrupt-btn").click()
    wait_for(lambda: progress_state(driver) == "cancelled", timeout=30, what="the job to stop")
    assert time.monotonic() - started < 30
    step = js(driver, "return document.getElementById('progress-step').textContent")
    assert not step.endswith("150/150"), step
    assert driver.find_element("id", "generate-btn").is_enabled()
    job = js(driver, "return document.getElementById('progress').dataset.job")
    assert httpx.get(f"{server.url}/api/v1/jobs/{job}").json()["state"] == "cancelled"


def test_inpainting_changes_only_the_painted_region(server: Server, driver: Any, artifacts: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    open_ui(driver, server.url)
    setup_form(driver, "a red circle on a blue background", steps=6, seed=21)
    source = generate(driver)[0]
    driver.find_element("css selector", "#gallery .card figcaption button").click()  # Send to img2img
    wait_for(lambda: driver.find_element("id", "canvas-wrap").is_displayed(), what="the image in img2img")
    fill(driver, {"prompt": "a yellow star on a black background", "seed": 99})
    js(driver, "const d = document.getElementById('denoising_strength'); d.value = 1;"
               "d.dispatchEvent(new Event('input'))")
    js(driver, "const b = document.getElementById('brush'); b.value = 128;"
               "b.dispatchEvent(new Event('input'))")
    # Paint the left half of the picture: strokes down its left quarter-line, with a wide brush.
    canvas = driver.find_element("id", "mask-canvas")
    js(driver, "arguments[0].scrollIntoView({block: 'center'})", canvas)  # offsets: from its visible centre
    box = canvas.rect
    chain = ActionChains(driver)
    for x in (box["width"] * -0.4, box["width"] * -0.25, box["width"] * -0.1):
        chain.move_to_element_with_offset(canvas, int(x), int(-box["height"] * 0.48)).click_and_hold()
        chain.move_to_element_with_offset(canvas, int(x), int(box["height"] * 0.48)).release()
    chain.perform()
    assert js(driver, "return document.getElementById('mask-canvas').getContext('2d')"
                      ".getImageData(10, 128, 1, 1).data[3]") > 0
    assert js(driver, "return document.getElementById('mask-canvas').getContext('2d')"
                      ".getImageData(245, 128, 1, 1).data[3]") == 0
    shot(driver, artifacts, "img2img")
    result = generate(driver)[0]
    before, after = image(server, source["id"]), image(server, result["id"])
    assert before.shape == after.shape == (SIZE, SIZE, 3)
    diff = np.abs(before - after).mean(axis=2)
    painted, kept = diff[:, :100].mean(), diff[:, 156:].mean()
    assert painted > 20 and kept < 4 and painted > 5 * kept, (painted, kept)
    # Invert turns the mask over; the eraser takes paint away.
    driver.find_element("id", "mask-invert").click()
    assert js(driver, "return document.getElementById('mask-canvas').getContext('2d')"
                      ".getImageData(245, 128, 1, 1).data[3]") > 0
    driver.find_element("id", "eraser").click()
    js(driver, "arguments[0].scrollIntoView({block: 'center'})", canvas)  # offsets: from its visible centre
    ActionChains(driver).move_to_element_with_offset(canvas, int(box["width"] * 0.4), -20).click_and_hold() \
        .move_to_element_with_offset(canvas, int(box["width"] * 0.4), 20).release().perform()
    assert js(driver, "return document.getElementById('mask-canvas').getContext('2d')"
                      ".getImageData(230, 128, 1, 1).data[3]") == 0


def test_parameters_load_from_a_png(server: Server, driver: Any, tmp_path: Path) -> None:
    body = {"prompt": "a purple circle on a yellow background", "negative_prompt": "blurry",
            "width": SIZE, "height": 192, "steps": 7, "cfg_scale": 5.5, "seed": 4242, "sampler": "DPM++ 2M",
            "scheduler": "karras"}
    job = httpx.post(f"{server.url}/api/v1/jobs?wait=60", json=body, timeout=90).json()
    assert job["state"] == "succeeded", job
    png = tmp_path / "made.png"
    url = httpx.URL(server.url).join(job["result"]["images"][0]["url"])
    png.write_bytes(httpx.get(url, timeout=30).content)
    open_ui(driver, server.url)
    js(driver, "document.getElementById('png-file').hidden = false")
    driver.find_element("id", "png-file").send_keys(str(png))
    wait_for(lambda: driver.find_element("id", "prompt").get_attribute("value") == body["prompt"],
             what="the prompt from the PNG")
    value = lambda field: driver.find_element("id", field).get_attribute("value")  # noqa: E731
    assert value("negative_prompt") == "blurry"
    assert (value("steps"), value("cfg_scale"), value("seed")) == ("7", "5.5", "4242")
    assert (value("width"), value("height")) == (str(SIZE), "192")
    assert (value("sampler"), value("scheduler")) == ("DPM++ 2M", "karras")
    # Those parameters make the same image again.
    assert generate(driver)[0]["id"] == job["result"]["images"][0]["id"]


def test_controlnet_panel_shows_the_map_and_guides_the_job(
    server: Server, driver: Any, artifacts: Path, tmp_path: Path
) -> None:
    """A fresh install lists the demo ControlNet: the panel shows, a dropped image gets its canny map
    from the server, and Generate sends the unit (ticked) or none (unticked)."""
    import base64

    from PIL import ImageDraw
    from selenium.webdriver.support.select import Select

    outline = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(outline).ellipse((64, 64, 192, 192), outline="white", width=3)
    png = tmp_path / "outline.png"
    outline.save(png)
    open_ui(driver, server.url)
    assert driver.find_element("id", "controlnet").is_displayed()
    driver.find_element("css selector", "#controlnet summary").click()
    assert driver.find_element("id", "control-model").get_attribute("value") == "control_sdgate_demo_canny"
    js(driver, "document.getElementById('control-file').hidden = false")
    driver.find_element("id", "control-file").send_keys(str(png))
    wait_for(lambda: js(driver, "return document.getElementById('control-map').dataset.module") == "canny",
             what="the canny map")
    src = driver.find_element("id", "control-map").get_attribute("src")
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"))
    assert edges.max() == 255 and edges[SIZE // 2, SIZE // 2] == 0  # the ring's edges, not its inside
    # Another preprocessor: the map follows the choice.
    Select(driver.find_element("id", "control-module")).select_by_value("invert")
    wait_for(lambda: js(driver, "return document.getElementById('control-map').dataset.module") == "invert",
             what="the inverted map")
    Select(driver.find_element("id", "control-module")).select_by_value("canny")
    wait_for(lambda: js(driver, "return document.getElementById('control-map').dataset.module") == "canny",
             what="the canny map again")
    fill(driver, {"control-weight": 0.8})
    setup_form(driver, "a red circle on a blue background", steps=4, seed=31)
    shot(driver, artifacts, "controlnet")
    generate(driver)
    job_id = js(driver, "return document.getElementById('progress').dataset.job")
    job = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=30).json()
    assert job["state"] == "succeeded", job
    (unit,) = job["request"]["controlnets"]
    assert (unit["model"], unit["module"], unit["weight"]) == ("control_sdgate_demo_canny", "canny", 0.8)
    assert unit["image"].startswith("img_")
    # Unticked: the next job goes without it.
    driver.find_element("id", "control-enabled").click()
    wait_for(lambda: not driver.find_element("id", "generate-btn").get_attribute("disabled"), what="idle")
    generate(driver)
    job_id = js(driver, "return document.getElementById('progress').dataset.job")
    assert httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=30).json()["request"]["controlnets"] == []
    no_page_errors(driver)


def test_history_and_queue(server: Server, driver: Any, artifacts: Path) -> None:
    for prompt in ("a blue square for history", "a green ring for history"):
        httpx.post(f"{server.url}/api/v1/jobs?wait=60", json={"prompt": prompt, "width": SIZE, "height": SIZE,
                                                               "steps": 3}, timeout=90)
    open_ui(driver, server.url)
    driver.find_element("css selector", "[data-tab=history]").click()
    wait_for(lambda: driver.find_elements("css selector", "#history-rows tr[data-job]"), what="history rows")
    fill(driver, {"history-text": "GREEN RING"})
    driver.find_element("css selector", "#history-form button").click()
    rows = lambda: driver.find_elements("css selector", "#history-rows tr")  # noqa: E731
    wait_for(lambda: rows() and all("green ring" in r.text for r in rows()), what="the filtered history")
    shot(driver, artifacts, "history")
    # Load parameters from a past job fills the form.
    driver.find_element("xpath", "//tr[@data-job]//button[text()='Load parameters']").click()
    assert "green ring" in driver.find_element("id", "prompt").get_attribute("value")

    # The queue: one long job running, one waiting behind it; cancel the waiting one from the page.
    long = {"prompt": "a long job", "width": SIZE, "height": SIZE, "steps": 150}
    running = httpx.post(f"{server.url}/api/v1/jobs", json=long).json()
    waiting = httpx.post(f"{server.url}/api/v1/jobs", json={**long, "prompt": "a waiting job"}).json()
    try:
        driver.find_element("css selector", "[data-tab=queue]").click()
        row = f"#queue-rows tr[data-job='{waiting['id']}']"
        wait_for(lambda: driver.find_elements("css selector", row), what="the queued job")
        wait_for(lambda: driver.find_elements("css selector", f"#queue-rows tr[data-job='{running['id']}']"
                                                              "[data-state=running]"), what="the running job")
        assert driver.find_element("css selector", f"{row} td").text == "1"  # first in line
        shot(driver, artifacts, "queue")
        driver.find_element("css selector", f"{row} td.actions button:last-child").click()
        state = lambda: httpx.get(f"{server.url}/api/v1/jobs/{waiting['id']}").json()["state"]  # noqa: E731
        wait_for(lambda: state() == "cancelled", what="the cancel")
        wait_for(lambda: not driver.find_elements("css selector", row), what="the row to go")
    finally:
        for job in (running, waiting):
            httpx.post(f"{server.url}/api/v1/jobs/{job['id']}/cancel")


def test_phone_width(server: Server, artifacts: Path) -> None:
    driver = make_driver(390, 844)
    try:
        open_ui(driver, server.url)
        assert js(driver, "return document.documentElement.scrollWidth <= innerWidth")
        setup_form(driver, "a red circle on a blue background", steps=4, seed=5)
        button = driver.find_element("id", "generate-btn")
        assert button.rect["width"] > 100 and button.rect["x"] >= 0
        generate(driver)
        card = driver.find_element("css selector", "#gallery .card")
        assert card.rect["x"] >= 0 and card.rect["x"] + card.rect["width"] <= 391
        shot(driver, artifacts, "phone")
        for tab in ("img2img", "history", "queue"):
            driver.find_element("css selector", f"[data-tab={tab}]").click()
            assert js(driver, "return document.documentElement.scrollWidth") <= 391 or tab != "img2img"
    finally:
        driver.quit()


# -- servers of their own ----------------------------------------------------------------------------


@pytest.fixture
def keyed_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    data = tmp_path / "keyed"
    made = subprocess.run([sys.executable, "-m", "sdgate", "keys", "create", "--name", "ui", "--data-dir",
                           str(data), "--json"], capture_output=True, text=True, check=True)
    key = json.loads(made.stdout)["key"]
    s = Server(data, extra=["--auth", "keys"])
    s.start()
    try:
        yield s, key
    finally:
        s.stop()


def test_api_key_login(keyed_server: tuple[Server, str], driver: Any, artifacts: Path) -> None:
    server, key = keyed_server
    assert httpx.get(f"{server.url}/api/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/ui").status_code == 200  # the page itself holds no data
    driver.get(server.url + "/ui")
    dialog = wait_for(lambda: (d := driver.find_element("id", "login")) and d.is_displayed() and d,
                      what="the login prompt")
    shot(driver, artifacts, "login")
    fill(driver, {"login-key": "sdg_not_a_real_key_000000000000"})
    driver.find_element("id", "login-submit").click()
    wait_for(lambda: driver.find_element("id", "login-error").text, what="the refusal")
    assert dialog.is_displayed()
    fill(driver, {"login-key": key})
    driver.find_element("id", "login-submit").click()
    wait_for(lambda: js(driver, "return document.body.dataset.ready === '1'"), what="the listings")
    assert driver.find_element("id", "model").get_attribute("value") == "sdgate-demo-shapes"
    setup_form(driver, "a red circle on a blue background", steps=4, seed=8)
    found = generate(driver)
    assert found[0]["seed"] == "8"
    assert js(driver, "return localStorage.getItem('sdgate.key')") == key
    # A reload keeps the key: no prompt.
    driver.refresh()
    wait_for(lambda: js(driver, "return document.body.dataset.ready === '1'"), what="the listings")
    assert not driver.find_element("id", "login").is_displayed()


def test_the_page_resumes_the_job_after_a_server_restart(tmp_path: Path, driver: Any) -> None:
    server = Server(tmp_path / "restarting")
    server.start()
    try:
        open_ui(driver, server.url)
        setup_form(driver, "a white triangle on a green background", steps=150, seed=13)
        driver.find_element("id", "generate-btn").click()
        wait_for(lambda: js(driver, STEPPING), what="the first steps")
        job = js(driver, "return document.getElementById('progress').dataset.job")
        server.restart()
        wait_for(lambda: progress_state(driver) == "succeeded", timeout=180, what="the job after the restart")
        assert js(driver, "return document.getElementById('progress').dataset.job") == job
        # The images are fetched after the terminal event (retried while the server comes back).
        wait_for(lambda: len(cards(driver)) > 0, timeout=60, what="the gallery after the restart")
        assert cards(driver)[0]["seed"] == "13"
        # A reload while a job runs shows that job again.
        driver.find_element("id", "generate-btn").click()
        wait_for(lambda: js(driver, "return document.getElementById('progress').dataset.job") != job,
                 what="the next job")
        second = js(driver, "return document.getElementById('progress').dataset.job")
        driver.refresh()
        wait_for(lambda: js(driver, "return document.getElementById('progress').dataset.job") == second,
                 what="the job after a reload")
        wait_for(lambda: progress_state(driver) == "succeeded", timeout=120, what="the reloaded job")
    finally:
        server.stop()


def test_no_ui_flag(tmp_path: Path) -> None:
    server = Server(tmp_path / "no-ui", extra=["--no-ui"])
    server.start()
    try:
        assert httpx.get(f"{server.url}/").status_code == 404
        assert httpx.get(f"{server.url}/ui").status_code == 404
    finally:
        server.stop()
