"""An unknown hires upscaler is refused before a job exists, in every dialect that can name one."""

from __future__ import annotations

import httpx

from sdgate.core.upscalers import LATENT_UPSCALE_MODES


async def job_count(client: httpx.AsyncClient) -> int:
    return len((await client.get("/api/v1/jobs", params={"limit": 100})).json()["jobs"])


async def test_a1111_unknown_hr_upscaler_is_a_400_and_no_job(client: httpx.AsyncClient) -> None:
    before = await job_count(client)
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "enable_hr": True, "hr_scale": 2,
            "hr_upscaler": "No-such-ESRGAN"}
    r = await client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("hr_upscaler: unknown upscaler 'No-such-ESRGAN'")
    assert "Lanczos" in r.json()["detail"]
    assert await job_count(client) == before


async def test_native_unknown_hires_upscaler_is_a_400_and_no_job(client: httpx.AsyncClient) -> None:
    before = await job_count(client)
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2,
            "hires": {"scale": 2, "upscaler": "No-such-ESRGAN"}}
    r = await client.post("/api/v1/jobs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "hr_upscaler"
    assert await job_count(client) == before


async def test_known_upscalers_still_run(client: httpx.AsyncClient) -> None:
    for name in ("Lanczos", "None", LATENT_UPSCALE_MODES[-1]):
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "enable_hr": True, "hr_scale": 2,
                "hr_upscaler": name}
        r = await client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, (name, r.text)


def test_the_engine_knows_every_latent_mode() -> None:
    from sdgate.engine.hires import LATENT_MODES

    assert tuple(LATENT_MODES) == LATENT_UPSCALE_MODES


async def test_a_refused_native_img2img_stores_no_image(client: httpx.AsyncClient, settings) -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "init_images": [base64.b64encode(
        buf.getvalue()).decode()], "hires": {"scale": 2, "upscaler": "No-such-ESRGAN"}}
    images_dir = settings.images_dir
    before = sorted(p.name for p in images_dir.rglob("*") if p.is_file()) if images_dir.exists() else []
    r = await client.post("/api/v1/jobs", json=body)
    assert r.status_code == 400, r.text
    after = sorted(p.name for p in images_dir.rglob("*") if p.is_file()) if images_dir.exists() else []
    assert after == before
