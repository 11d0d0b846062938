"""GPU benchmark (issue 17): plain diffusers vs sdgate, in one run, against the compute floor.

    python benchmarks/gpu.py --arch sd15|sdxl|demo [--device cuda] [--steps 25] [--size 512] [--cfg 7]
                             [--clients 1,8,32] [--requests 8,32,64] [--repeats 5] [--warmup-calls 2]
                             [--batch-max N] [--batch-wait-ms MS] [--compile] [--warmup 512x512:1,8,32]
                             [--threads N] [--model-cache DIR] [--out results.json] [--markdown results.md]
                             [--check]
    python benchmarks/gpu.py --table-from results.json      # the table of an earlier (or cut-off) run

``sd15`` and ``sdxl`` build the full-size SD 1.5 / SDXL architectures from the configs shipped in
``sdgate/assets/configs`` with random weights (built on the device, fp16 on CUDA: speed does not
depend on weight values) and save them once as a diffusers folder in a temporary models dir (or
``--model-cache``), so every contender below runs exactly that model. ``demo`` runs the built-in
demo model (no build): the CPU/CI mode that checks the bookkeeping. Printed side by side in one table:

- **plain diffusers**: the pipeline as a user writes it, ``StableDiffusion[XL]Pipeline.from_pretrained
  (folder, torch_dtype=...).to(device)`` then ``pipe(prompt, num_inference_steps=..., guidance_scale=...,
  height=..., width=...).images``: Euler (the folder's scheduler), PIL images out. Batch 1, warm,
  median of ``--repeats`` calls.
- **sdgate engine**: ``DiffusersEngine.generate`` on the same request (sampler ``Euler``, same size,
  steps, CFG), in this process. The plain and engine calls alternate, so a noisy machine slows both.
- **sdgate over HTTP**: ``sdgate serve`` as a subprocess on a free loopback port with the flags asked
  (``--batch-max``, ``--compile``...). First one client, its requests alternating with plain
  diffusers calls in this process (the paired row). Then 1, 8, 32 (``--clients``) concurrent clients
  posting A1111 ``/sdapi/v1/txt2img`` requests with distinct prompts and seeds: each level first
  warms up (one request per client, not counted), then ``--requests`` requests (at least one per
  client) are timed from the first send to the last answer: images/s = images / seconds, and each
  request's latency (p50, p95). Every returned image is checked to be a PNG of the asked size, and
  the server's own ``sdgate_images_generated`` counter (``/metrics``) must have grown by the count.

The compute floor: the FLOPs of one image (steps x a CFG UNet pair + VAE decode + text encoders; for
sd15/sdxl the counted figures of ``shared/reference/performance.md`` scaled by steps and pixels, for
the demo model counted here with ``torch.utils.flop_counter.FlopCounterMode``) over the device's peak,
measured as the best rate of a large matmul in the run's dtype. Every figure is also printed as a
fraction of that floor (floor seconds per image / measured seconds per image).

``--check`` (the CPU demo mode's acceptance): exit 1 unless sdgate's time per image is within 10 % of
plain diffusers', call for call (the median of the pairs' ratios), both in process and over HTTP.
The JSON (``--out``) is rewritten after every stage, so a run cut off by a timeout keeps what it
measured; a SIGTERM stops the server child on the way out.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and benchmarks/queue.py would then
# shadow the standard library's queue module (torch imports it).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import base64  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOLERANCE = 0.10  # "sdgate within 10 % of plain diffusers"
MODEL_DIR_NAME = "bench-random"


@dataclass(frozen=True)
class Arch:
    config_key: str | None  # the shipped configs folder; None: the demo (or --models-dir) model
    size: int  # default image side
    pipeline: str
    # performance.md's counted GFLOP at ``ref_size`` (batch 1): UNet forward, VAE decode, text encoders
    unet_gflop: float = 0.0
    vae_gflop: float = 0.0
    text_gflop: float = 0.0
    ref_size: int = 512


ARCHS = {
    "sd15": Arch("sd1", 512, "StableDiffusionPipeline", 803.0, 2515.0, 13.0, 512),
    # SDXL: 6,761 UNet + 10,470 VAE per 1024 image; CLIP-L 13 + bigG ~107 per prompt (349 TFLOP at 25 steps)
    "sdxl": Arch("sdxl", 1024, "StableDiffusionXLPipeline", 6761.0, 10470.0, 120.0, 1024),
    "demo": Arch(None, 256, "StableDiffusionPipeline"),
}


# --- the model ------------------------------------------------------------------------------------


def build_random_pipeline(arch: Arch, device: torch.device, dtype: torch.dtype) -> Any:
    """The full-size architecture from the shipped configs, random weights initialised on the device."""
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdgate.engine.configs import CONFIGS_DIR, shipped_configs

    assert arch.config_key is not None
    configs = shipped_configs(arch.config_key)
    vocab = CONFIGS_DIR.parent / "tokenizer"

    def text(name: str, cls: Any) -> Any:
        conf = CLIPTextConfig(**{k: v for k, v in configs[name].items() if not k.startswith("_")})
        return cls(conf)

    def tokenizer(name: str) -> Any:
        kwargs = {k: v for k, v in configs[name].items() if k != "tokenizer_class" and not k.startswith("_")}
        return CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), **kwargs)

    torch.manual_seed(0)
    with torch.device(device):  # default init on the device: seconds on a GPU, not minutes on a CPU
        parts: dict[str, Any] = dict(
            unet=UNet2DConditionModel.from_config(configs["unet"]),
            vae=AutoencoderKL.from_config(configs["vae"]),
            text_encoder=text("text_encoder", CLIPTextModel),
        )
        if "text_encoder_2" in configs:
            parts["text_encoder_2"] = text("text_encoder_2", CLIPTextModelWithProjection)
    for name in list(parts):
        parts[name] = parts[name].to(dtype).eval()
    parts["scheduler"] = EulerDiscreteScheduler.from_config(configs["scheduler"])
    parts["tokenizer"] = tokenizer("tokenizer")
    if "tokenizer_2" in configs:
        parts["tokenizer_2"] = tokenizer("tokenizer_2")
    cls = getattr(diffusers, arch.pipeline)
    if arch.pipeline == "StableDiffusionXLPipeline":
        return cls(**parts, add_watermarker=False)
    return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def prepare_model(args: argparse.Namespace, arch: Arch, models: Path, device: torch.device) -> Path:
    """The models dir the run uses: a fresh random model saved once (or found in ``--model-cache``
    from an earlier run), or the demo / --models-dir one."""
    if arch.config_key is None:
        return args.models_dir or models  # an empty models dir: the built-in demo is the default
    if args.model_cache is not None:
        models = args.model_cache / args.arch
    folder = models / "Stable-diffusion" / MODEL_DIR_NAME
    if (folder / "model_index.json").is_file():
        log(f"reusing the random {args.arch} model in {folder}")
        return models
    started = time.perf_counter()
    pipe = build_random_pipeline(arch, device, torch.float16 if device.type == "cuda" else torch.float32)
    pipe.save_pretrained(str(folder))
    del pipe
    free(device)
    log(f"built and saved the random {args.arch} model in {time.perf_counter() - started:.1f} s")
    return models


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the floor ------------------------------------------------------------------------------------


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's dense matmul rate in FLOP/s: the best of a few timed large matmuls."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    best = 0.0
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def counted_flops(pipe: Any, size: int, steps: int) -> dict[str, float]:
    """FLOPs of one image on ``pipe``, counted: a CFG UNet pair per step, one VAE decode, the text
    encoder on the prompt and the negative prompt."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae = pipe.unet, pipe.vae
    param = next(unet.parameters())
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = torch.zeros(2, unet.config.in_channels, size // factor, size // factor, dtype=param.dtype)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, dtype=param.dtype)
    ids = torch.zeros(2, 77, dtype=torch.long)

    def count(fn: Callable[[], Any]) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    dev = param.device
    unet_pair = count(lambda: unet(latent.to(dev), torch.tensor([500], device=dev), context.to(dev)))
    decode = count(lambda: vae.decode(latent[:1].to(dev, vae.dtype)))
    text = count(lambda: pipe.text_encoder(ids.to(dev)))
    return {"unet_cfg_pair": unet_pair, "vae_decode": decode, "text": text}


def table_flops(arch: Arch, size: int) -> dict[str, float]:
    """performance.md's counted figures, scaled by pixels (close enough: attention is a small part)."""
    scale = (size / arch.ref_size) ** 2
    return {
        "unet_cfg_pair": 2 * arch.unet_gflop * 1e9 * scale,
        "vae_decode": arch.vae_gflop * 1e9 * scale,
        "text": 2 * arch.text_gflop * 1e9,
    }


# --- plain diffusers and the engine ---------------------------------------------------------------


def plain_pipeline(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """As a user writes it (the class the folder names: StableDiffusionPipeline, ...XLPipeline)."""
    import diffusers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    cls = getattr(diffusers, index["_class_name"])
    pipe = cls.from_pretrained(str(folder), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_call(plain: Any, args: argparse.Namespace, i: int) -> None:
    images = plain(
        f"a benchmark prompt number {i}", num_inference_steps=args.steps, guidance_scale=args.cfg,
        height=args.size, width=args.size,
    ).images  # fmt: skip
    assert len(images) == 1 and images[0].size == (args.size, args.size)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def measure_in_process(
    args: argparse.Namespace, plain: Any, engine: Any, model: str, device: torch.device
) -> tuple[list[float], list[float]]:
    """Batch-1 latencies of plain diffusers and of the engine, warm, alternating call by call."""
    from sdgate.core.engine import EngineInputs, NoControl
    from sdgate.core.requests import GenerationRequest

    def run_engine(i: int) -> None:
        request = GenerationRequest(
            prompt=f"a benchmark prompt number {i}", width=args.size, height=args.size, steps=args.steps,
            cfg_scale=args.cfg, sampler="Euler", seed=1000 + i, model=model,
        )  # fmt: skip
        out = engine.generate(request, EngineInputs(), NoControl())
        assert len(out.images) == 1 and out.steps == args.steps

    for i in range(args.warmup_calls):
        plain_call(plain, args, -1 - i)
        run_engine(-1 - i)
    plain_s, engine_s = [], []
    for i in range(args.repeats):
        plain_s.append(timed(lambda i=i: plain_call(plain, args, i), device)[0])
        engine_s.append(timed(lambda i=i: run_engine(i), device)[0])
    return plain_s, engine_s


# --- over HTTP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``sdgate serve`` in a child process on a free loopback port, its output in ``log``."""

    def __init__(self, args: argparse.Namespace, models: Path, data: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.flags = server_flags(args)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SDGATE_COMPILE_CACHE_DIR": str(args.compile_cache)}
        if args.threads is not None:  # the server computes with as many CPU threads as this process
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        command = [
            sys.executable, "-m", "sdgate", "serve", "--port", str(self.port), "--data-dir", str(data),
            "--models-dir", str(models), "--log-level", "warning", *self.flags,
        ]  # fmt: skip
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{self.tail()}")

    def images_generated(self) -> float:
        """The server's ``sdgate_images_generated`` counter, all models together."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        pattern = r"^sdgate_images_generated_total(?:\{[^}]*\})? ([0-9.e+]+)$"
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device]
    if args.batch_max is not None:
        flags += ["--batch-max", str(args.batch_max)]
    if args.batch_wait_ms is not None:
        flags += ["--batch-wait-ms", str(args.batch_wait_ms)]
    if args.compile:
        flags.append("--compile")
    if args.warmup:
        flags += ["--warmup", args.warmup]
    return flags


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR (no decoding); ValueError if it is not a PNG."""
    if data[:8] != PNG_MAGIC or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def txt2img(client: httpx.Client, args: argparse.Namespace, i: int) -> int:
    """One A1111 request; the number of images of the asked size it returned."""
    body = {
        "prompt": f"a benchmark prompt number {i}", "negative_prompt": "", "steps": args.steps,
        "cfg_scale": args.cfg, "width": args.size, "height": args.size, "seed": 1_000_000 + i,
        "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
    }  # fmt: skip
    response = client.post("/sdapi/v1/txt2img", json=body)
    response.raise_for_status()
    images = response.json()["images"]
    for image in images:
        if png_size(base64.b64decode(image)) != (args.size, args.size):
            raise ValueError(f"request {i}: an image of the wrong size")
    return len(images)


def run_clients(
    url: str, args: argparse.Namespace, clients: int, ids: list[int]
) -> tuple[float, list[float], int]:
    """``ids`` requests from ``clients`` threads (each takes the next id when free): wall seconds from
    the first send to the last answer, each request's latency, images returned."""
    todo = list(reversed(ids))
    lock = threading.Lock()
    latencies: list[float] = []
    images = [0]
    errors: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)

    def client_thread() -> None:
        with httpx.Client(base_url=url, timeout=args.request_timeout) as client:
            start_line.wait()
            while True:
                with lock:
                    if not todo or errors:
                        return
                    i = todo.pop()
                start = time.perf_counter()
                try:
                    got = txt2img(client, args, i)
                except BaseException as exc:  # reported after the join
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    latencies.append(time.perf_counter() - start)
                    images[0] += got

    threads = [threading.Thread(target=client_thread, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()  # before the release: the wall clock spans every request
    start_line.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return wall, latencies, images[0]


def measure_paired(
    server: Server, args: argparse.Namespace, plain: Any, device: torch.device
) -> dict[str, Any]:
    """One client over HTTP against plain diffusers in this process, one call of each in turn (a busy
    machine then slows both alike): the server's warm-up calls first, then ``--repeats`` pairs."""
    with httpx.Client(base_url=server.url, timeout=args.request_timeout) as client:
        for i in range(max(1, args.warmup_calls)):  # the first also loads the model
            txt2img(client, args, 900_000 + i)
        plain_s, http_s = [], []
        for i in range(args.repeats):
            plain_s.append(timed(lambda i=i: plain_call(plain, args, i), device)[0])
            start = time.perf_counter()
            if txt2img(client, args, 950_000 + i) != 1:
                raise ValueError("a one-image request did not return one image")
            http_s.append(time.perf_counter() - start)
    return {"plain_s": plain_s, "http_s": http_s, "median_ratio": median_ratio(http_s, plain_s)}


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of pairwise ratios: how much slower the first contender was, call for call."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_http(
    server: Server, args: argparse.Namespace, clients: int, requests: int, first_id: int
) -> dict[str, Any]:
    """One concurrency level: warm-up (one request per client), then the timed requests."""
    warm_ids = list(range(first_id, first_id + clients))
    run_clients(server.url, args, clients, warm_ids)
    count = max(requests, clients)
    ids = list(range(first_id + clients, first_id + clients + count))
    before = server.images_generated()
    wall, latencies, images = run_clients(server.url, args, clients, ids)
    server_images = server.images_generated() - before
    return {
        "clients": clients,
        "requests": count,
        "images": images,
        "server_images": server_images,
        "seconds": wall,
        "images_per_s": images / wall,
        "p50_s": percentile(latencies, 0.50),
        "p95_s": percentile(latencies, 0.95),
        "latencies_s": latencies,
    }


# --- the run --------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Results:
    """The JSON written after every stage (``--out``), so a cut-off run keeps what it measured."""

    def __init__(self, path: Path | None, head: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = dict(head)

    def set(self, **values: Any) -> None:
        self.data.update(values)
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def floor_figures(flops: dict[str, float], steps: int, peak: float, source: str) -> dict[str, Any]:
    per_image = steps * flops["unet_cfg_pair"] + flops["vae_decode"] + flops["text"]
    return {
        "source": source,
        "flop_per_image": per_image,
        "parts_flop": flops,
        "peak_flops": peak,
        "floor_s_per_image": per_image / peak,
        "floor_images_per_s": peak / per_image,
    }


def latency_figures(seconds: list[float], floor_s: float) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "latencies_s": seconds,
        "median_s": median,
        "images_per_s": 1 / median,
        "of_floor": floor_s / median,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers

    import sdgate
    from sdgate.core.models import ModelCatalog
    from sdgate.engine.devices import resolve_device, resolve_dtype
    from sdgate.engine.diffusers_engine import DiffusersEngine
    from sdgate.settings import Settings

    arch = ARCHS[args.arch]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(device, "auto")
    args.size = args.size or arch.size
    with tempfile.TemporaryDirectory(prefix="sdgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        results = Results(args.out, {
            "arch": args.arch, "device": str(device), "device_name": device_name(device),
            "dtype": str(dtype).removeprefix("torch."), "steps": args.steps, "size": args.size,
            "cfg": args.cfg, "sampler": "Euler", "repeats": args.repeats,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "sdgate": sdgate.__version__, "python": platform.python_version()},
        })  # fmt: skip
        # 1. The model, saved once; the device's peak.
        models = prepare_model(args, arch, models, device)
        peak = peak_flops(device, dtype)
        args.compile_cache = args.compile_cache or tmp / "compile-cache"
        settings = Settings(
            data_dir=tmp / "engine-data", models_dir=models, device=args.device, compile=args.compile,
            warmup=engine_warmup(args), compile_cache_dir=args.compile_cache,
        )  # fmt: skip
        info = ModelCatalog(settings).resolve(None)
        log(f"model {info.name} ({info.filename}); peak {peak / 1e12:.2f} TFLOP/s measured")
        # 2. The floor.
        plain = plain_pipeline(info.filename, device, dtype)
        if arch.config_key is None:
            floor = floor_figures(counted_flops(plain, args.size, args.steps), args.steps, peak, "counted")
        else:
            floor = floor_figures(table_flops(arch, args.size), args.steps, peak, "performance.md")
        results.set(model=info.name, floor=floor)
        floor_s = floor["floor_s_per_image"]
        # 3. Batch 1 in this process: plain diffusers and the engine, alternating.
        engine = DiffusersEngine(settings, ModelCatalog(settings))
        plain_s, engine_s = measure_in_process(args, plain, engine, info.name, device)
        results.set(plain=latency_figures(plain_s, floor_s), engine=latency_figures(engine_s, floor_s))
        log(f"batch 1: plain {statistics.median(plain_s):.3f} s, engine {statistics.median(engine_s):.3f} s")
        engine.unload()
        del engine
        free(device)
        # 4. Over HTTP: one client paired with plain diffusers, then level by level.
        server = Server(args, models, tmp / "server-data", tmp / "server.log")
        http: list[dict[str, Any]] = []
        try:
            results.set(server_flags=server.flags, server_pid=server.proc.pid)
            ready_s = server.wait_ready(args.server_timeout)
            paired = measure_paired(server, args, plain, device)
            del plain
            free(device)
            results.set(server_ready_s=ready_s, http_paired=paired, http=http)
            log(f"1 client over HTTP, paired: x{paired['median_ratio']:.3f} plain diffusers' time")
            for n, (clients, requests) in enumerate(zip(args.clients, args.requests, strict=True)):
                level = measure_http(server, args, clients, requests, first_id=n * 100_000)
                level["of_floor"] = level["images_per_s"] * floor_s
                http.append(level)
                results.set(http=http)
                log(f"{clients} client(s): {level['images_per_s']:.3f} images/s, p50 {level['p50_s']:.3f} s")
        except Exception:
            log(f"server log (tail):\n{server.tail()}")
            raise
        finally:
            server.stop()
        results.set(check=check_figures(results.data))
    return results.data


def engine_warmup(args: argparse.Namespace) -> str:
    """The in-process engine's compiled buckets: batch 1 at the run's size (all it runs)."""
    if not args.compile:
        return ""
    return args.engine_warmup or f"{args.size}x{args.size}:1"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def check_figures(data: dict[str, Any]) -> dict[str, Any]:
    """sdgate against plain diffusers, call for call (> 1: sdgate slower): the engine at batch 1, and
    one request over HTTP (queue, PNG and round trip included)."""
    engine_ratio = median_ratio(data["engine"]["latencies_s"], data["plain"]["latencies_s"])
    paired = data.get("http_paired")
    http_ratio = None if paired is None else paired["median_ratio"]
    ratios = [r for r in (engine_ratio, http_ratio) if r is not None]
    return {
        "engine_time_vs_plain": engine_ratio,
        "http_time_vs_plain": http_ratio,
        "within_10pct": all(r <= 1 + TOLERANCE for r in ratios),
    }


# --- the table ------------------------------------------------------------------------------------


def table(data: dict[str, Any]) -> str:
    """The side-by-side table; a run cut off part-way gives the rows it measured."""
    floor, plain, engine = data.get("floor"), data.get("plain"), data.get("engine")
    if floor is None:
        return f"{data['arch']} on {data['device_name']}: no figures (the run stopped before the floor)"
    floor_s = floor["floor_s_per_image"]
    head = (
        f"{data['arch']} on {data['device_name']} ({data['dtype']}), {data['size']}x{data['size']}, "
        f"{data['steps']} steps, Euler, CFG {data['cfg']}; floor {floor_s * 1000:.1f} ms/image = "
        f"{floor['flop_per_image'] / 1e12:.3f} TFLOP ({floor['source']}) at {floor['peak_flops'] / 1e12:.2f} "
        f"TFLOP/s (measured matmul); server flags: {' '.join(data.get('server_flags', []))}"
    )
    rows = [
        "| figure | plain diffusers | sdgate | sdgate speed / diffusers | floor: diffusers | floor: sdgate |",
        "|---|---|---|---|---|---|",
    ]
    if plain is not None and engine is not None:
        speed = 1 / median_ratio(engine["latencies_s"], plain["latencies_s"])
        rows.append(
            f"| batch 1, in process (median s) | {plain['median_s']:.3f} | {engine['median_s']:.3f} "
            f"| {speed:.2f}x | {plain['of_floor']:.1%} | {engine['of_floor']:.1%} |"
        )
    paired = data.get("http_paired")
    if paired is not None:
        p_s, h_s = statistics.median(paired["plain_s"]), statistics.median(paired["http_s"])
        rows.append(
            f"| batch 1, HTTP, 1 client, paired with plain (median s) | {p_s:.3f} | {h_s:.3f} "
            f"| {1 / paired['median_ratio']:.2f}x | {floor_s / p_s:.1%} | {floor_s / h_s:.1%} |"
        )
    for h in data.get("http", []):
        serial = f"{plain['images_per_s']:.3f} (batch 1, serial)" if plain else "-"
        vs = f"{h['images_per_s'] / plain['images_per_s']:.2f}x" if plain else "-"
        plain_floor = f"{plain['of_floor']:.1%}" if plain else "-"
        rows.append(
            f"| HTTP, {h['clients']} client(s): images/s (p50 / p95 s) | {serial} | {h['images_per_s']:.3f} "
            f"({h['p50_s']:.3f} / {h['p95_s']:.3f}) | {vs} | {plain_floor} | {h['of_floor']:.1%} |"
        )
    lines = [head, "", *rows]
    check = data.get("check")
    if check is not None:
        verdict = "yes" if check["within_10pct"] else "no"
        lines += [
            "",
            f"sdgate within 10 % of plain diffusers: {verdict} (time per image, median of call-for-call "
            f"ratios: engine x{check['engine_time_vs_plain']:.3f}, "
            f"HTTP x{check['http_time_vs_plain'] or 0:.3f})",
        ]
    else:
        lines += ["", "(the run stopped early: the rows above are all it measured)"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="demo")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--size", type=int, default=None, help="image side [default: 512 sd15, 1024 sdxl, 256 demo]"
    )
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument(
        "--requests", default="64", help="timed requests per level (at least one per client): one number, "
        "or one per level (8,32,64)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed batch-1 calls of each in-process contender"
    )
    parser.add_argument("--warmup-calls", type=int, default=2, help="untimed batch-1 calls of each first")
    parser.add_argument("--batch-max", type=int, default=None)
    parser.add_argument("--batch-wait-ms", type=float, default=None)
    parser.add_argument(
        "--compile", action="store_true", help="the server (and the in-process engine) compile"
    )
    parser.add_argument(
        "--warmup", default=None, help="the server's buckets compiled at start, e.g. 512x512:1,8"
    )
    parser.add_argument("--engine-warmup", default=None, help="the in-process engine's [default: SIZE:1]")
    parser.add_argument(
        "--compile-cache", type=Path, default=None, help="shared by the engine and the server"
    )
    parser.add_argument(
        "--model-cache", type=Path, default=None, help="keep (and reuse) the random models here"
    )
    parser.add_argument(
        "--server-timeout", type=float, default=900, help="seconds for the server to be ready"
    )
    parser.add_argument("--request-timeout", type=float, default=900)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch, here and in the server"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON results")
    parser.add_argument("--markdown", type=Path, default=None, help="the table, as markdown")
    parser.add_argument("--table-from", type=Path, default=None, help="print the table of a results JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless sdgate is within 10 %% of diffusers"
    )
    # Hidden, for tests: a models dir holding a (tiny) model that --arch demo runs instead of the demo.
    parser.add_argument("--models-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients: positive integers, e.g. 1,8,32")
    args.requests = [int(r) for r in args.requests.split(",") if r.strip()]
    if len(args.requests) == 1:
        args.requests *= len(args.clients)
    if len(args.requests) != len(args.clients) or min(args.requests) < 1:
        parser.error("--requests: one positive number, or one per --clients level")
    if args.models_dir is not None and args.arch != "demo":
        parser.error("--models-dir is for --arch demo")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from is not None:  # a run's JSON, e.g. one cut off by a timeout
        print(table(json.loads(args.table_from.read_text(encoding="utf-8"))))
        return 0
    # A stage's timeout (SIGTERM) unwinds like an error: the server child is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = run(args)
    text = table(data)
    print(text, flush=True)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    if args.check and not data["check"]["within_10pct"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
