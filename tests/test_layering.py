"""The SDK, CLI, core and server API import without torch (DESIGN: torch lives below the engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TORCH_FREE = [
    "sdgate",
    "sdgate.core.requests",
    "sdgate.core.models",
    "sdgate.core.images",
    "sdgate.core.infotext",
    "sdgate.core.samplers",
    "sdgate.core.batching",
    "sdgate.core.comfy.validate",
    "sdgate.core.controlnet",
    "sdgate.engine.comfy.executor",
    "sdgate.settings",
    "sdgate.jobs.store",
    "sdgate.worker.runner",
    "sdgate.engine",
    "sdgate.server.app",
    "sdgate.cli.main",
]


def test_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    __import__(name)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


def test_core_imports_neither_fastapi_nor_torch() -> None:
    code = (
        "import sys\n"
        "import sdgate.core.requests, sdgate.core.models, sdgate.core.images, sdgate.core.infotext\n"
        "import sdgate.core.samplers, sdgate.core.jobs, sdgate.core.engine, sdgate.core.errors\n"
        "import sdgate.core.batching, sdgate.core.comfy.validate, sdgate.core.controlnet\n"
        "print(','.join(m for m in ('fastapi', 'torch', 'starlette') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# Routes that must answer without torch in the API process (the null engine in embedded mode: its
# workers are torch-free too, and so are the built-in upscalers an extras job runs there).
def _tiny_png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_PNG = _tiny_png_b64()
REQUEST_TIME_ROUTES = [
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/sdapi/v1/options", None),
    ("POST", "/sdapi/v1/options", {"samples_format": "png"}),
    ("GET", "/sdapi/v1/sd-models", None),
    ("GET", "/sdapi/v1/samplers", None),
    ("GET", "/sdapi/v1/progress", None),
    ("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64}),
    ("GET", "/api/v1/jobs", None),
    ("POST", "/api/v1/jobs?wait=20", {"prompt": "x", "steps": 2, "width": 64, "height": 64}),
    ("GET", "/api/v1/models", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/engines/list", None),
    ("GET", "/sdapi/v1/upscalers", None),
    ("POST", "/sdapi/v1/extra-single-image", {"image": _PNG, "upscaler_1": "Lanczos", "upscaling_resize": 2}),
    ("POST", "/sdapi/v1/extra-batch-images", {"imageList": [{"data": _PNG}], "upscaler_1": "Nearest"}),
]


def test_api_requests_do_not_import_torch(tmp_path: Path) -> None:
    """The app over the null engine, with an import hook that refuses torch, diffusers and
    transformers from before the app is built: every route above answers below 500, and neither
    the requests nor the jobs they ran imported them."""
    code = (
        "import asyncio, importlib.abc, json, sys\n"
        "HEAVY = ('torch', 'diffusers', 'transformers')\n"
        "tried = []\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in HEAVY:\n"
        "            tried.append(name)\n"
        "            raise ImportError(f'{name} imported by the API')\n"
        "        return None\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import httpx\n"
        "from sdgate.server.app import create_app\n"
        "from sdgate.settings import Settings\n"
        f"settings = Settings(data_dir={str(tmp_path)!r}, engine='null', device='cpu', worker_poll_s=0.02)\n"
        f"routes = {REQUEST_TIME_ROUTES!r}\n"
        "async def main():\n"
        "    app = create_app(settings)\n"
        "    async with app.router.lifespan_context(app):\n"
        "        transport = httpx.ASGITransport(app=app)\n"
        "        async with httpx.AsyncClient(transport=transport, base_url='http://t', timeout=60) as c:\n"
        "            out = []\n"
        "            for method, path, body in routes:\n"
        "                r = await c.request(method, path, json=body)\n"
        "                out.append((method, path, r.status_code, r.text[:200]))\n"
        "            return out\n"
        "results = asyncio.run(main())\n"
        "print(json.dumps({'results': results, 'tried': tried,\n"
        "                  'loaded': [m for m in HEAVY if m in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["tried"] == [] and report["loaded"] == [], report
    failed = [r for r in report["results"] if r[2] >= 500]
    assert failed == [], failed
    native = next(r for r in report["results"] if r[1].startswith("/api/v1/jobs?"))
    assert '"succeeded"' in native[3], native
    extras = [r for r in report["results"] if "/extra-" in r[1]]
    assert [r[2] for r in extras] == [200, 200], extras  # the extras jobs ran on the worker
