"""Typed settings for every sdgate process. Every default lives here.

Built by ``load_settings`` (CLI flags override ``SDGATE_*`` environment variables, which override
these defaults), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 7860


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SDGATE_", extra="ignore")

    # Where things live.
    data_dir: Path = Path("./sdgate-data")
    models_dir: Path | None = None  # None: <data_dir>/models
    model: Path | None = None  # one checkpoint (file or diffusers folder) instead of / besides models_dir
    default_model: str | None = None  # name of the default model; None: the first found, else the demo
    # The job database: sqlite:///path or postgresql://user:pass@host/db; None: <data_dir>/sdgate.db.
    database: str | None = None
    # Where images live: a folder (or file:///path), or s3://bucket/prefix; None: <data_dir>/images.
    storage: str | None = None
    storage_endpoint: str | None = None  # s3:// storage on an S3-compatible server: its URL (else boto3's)

    # Serving.
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_auth: str | None = None  # "user:pass,user2:pass2": HTTP Basic on every route
    # Who may call: auto (API keys once one exists in the database, else Basic with --api-auth, else
    # none), or keys | basic | none explicitly.
    auth: Literal["auto", "keys", "basic", "none"] = "auto"
    # Endpoints answered without credentials whatever --auth says: any of healthz, readyz, metrics.
    public_endpoints: list[Literal["healthz", "readyz", "metrics"]] = Field(
        default_factory=lambda: ["healthz", "readyz"]
    )
    audit_prompts: bool = False  # the audit log keeps each call's prompt (off: never)
    audit_retention_s: float | None = 90 * 24 * 3600  # audit records older than this are deleted; None: never
    # The content filter: a file of blocked words and /regexes/ checked against every prompt before
    # a job exists; an image safety checker (diffusers' format) in <models>/safety_checker when on.
    content_blocklist: Path | None = None
    safety_checker: Literal["auto", "on", "off"] = "auto"  # auto: when its weights are there
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    cors_allow_origins: list[str] = Field(default_factory=list)  # none: CORS off (no browser origin)
    enable_server_stop: bool = False
    ui: bool = True  # the web UI at /ui, and / redirects there (--no-ui: neither)
    allow_image_urls: bool = False  # img2img init images / masks may be http(s) URLs (public hosts only)
    cancel_on_disconnect: bool = False  # blocking routes: cancel the job when the client goes away
    strict_models: bool = False  # unknown model names: 404 instead of the default model
    url_signing_secret: str | None = None  # HMAC key for signed image URLs; None: <data_dir>/url-signing.key
    signed_url_ttl_s: int = 3600  # signed image URLs expire after this long (OpenAI: 60 minutes)

    # The engine.
    engine: Literal["diffusers", "null"] = "diffusers"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    model_cache_bytes: int | None = None  # memory budget for loaded models; None: derived from the device
    workers: int = 1  # worker threads (one per device)
    vram_mode: Literal["auto", "off", "medvram", "lowvram"] = "auto"  # CUDA offloading; auto: by free memory

    # GPU throughput (docs/performance.md). Cross-request batching: a worker claims up to
    # ``batch_max`` compatible jobs (``core.batching``) and runs their images as rows of one batch,
    # waiting at most ``batch_wait_ms`` for mates so a lone job is not delayed; None: automatic (from
    # the free memory and the shape on a GPU, off on a CPU, where batching gains nothing); 1: off.
    batch_max: int | None = Field(default=None, ge=1, le=64)
    batch_wait_ms: float = Field(15.0, ge=0.0, le=1000.0)
    # torch.compile (CUDA graphs on a GPU) for the UNet and the VAE decoder over the ``warmup`` shape
    # buckets ("512x512:1,4,8;768x768:1": size, then batch sizes), compiled at start and cached on
    # disk under ``compile_cache_dir`` (None: <data_dir>/compile-cache); other shapes run eager.
    compile: bool = False
    warmup: str = ""
    compile_cache_dir: Path | None = None
    # Progress previews: latent (a linear latent-to-RGB projection), taesd (a tiny decoder, when its
    # weights are in the models folder), none; auto: taesd when present, else latent.
    preview_method: Literal["auto", "latent", "taesd", "none"] = "auto"

    # Limits on what one request may ask for. Each dialect checks its own fields early (naming them
    # as its clients spell them); ``server.validation.check_request`` checks the translated request
    # and every value derived from it (the size after hires fix, total steps, memory) last, before a
    # job exists, whichever dialect, script or retry submitted it. Over a limit: 400, or 413 for sizes
    # in bytes, naming the field and the setting.
    max_pixels: int = 2048 * 2048  # width * height of every pass: the first, the hires upscale, the final
    max_side: int = 4096  # either side of every pass, and of a seed resize
    max_steps: int = 1000  # steps of one pass (the first; the hires second pass)
    max_total_steps: int = 1500  # steps of one image over all passes (first + hires; a refiner adds none)
    max_batch_images: int = 64  # batch_size * n_iter
    max_loras: int = 32  # LoRAs of one job: the request's list plus the prompt's <lora:...> tags
    max_controlnets: int = 4  # ControlNet units of one job (multi-ControlNet)
    max_prompt_bytes: int = 64 * 1024  # each prompt (UTF-8), negative and hires ones too: refused first
    max_prompt_tokens: int = 75 * 40  # each prompt in CLIP tokens (A1111 encodes them in chunks of 75)
    max_script_images: int = 100  # all the jobs one A1111 script request (X/Y/Z plot, ...) expands to
    max_body_bytes: int = 64 * 1024 * 1024
    max_job_memory_bytes: int | None = None  # estimated peak per job; None: the engine's device budget
    max_queue: int = 1000  # queued jobs before 429
    # Jobs one caller (a Basic user; without --api-auth, everyone together as the one anonymous
    # caller) may have queued or running at once, before 429 too_many_jobs; None: no such limit.
    max_queued_per_principal: int | None = Field(default=None, ge=1)

    # Jobs.
    job_max_attempts: int = 2  # starts of a job whose process died mid-run before it fails (not retried)
    job_lease_s: float = 30.0  # a claim holds a running job this long without its worker's heartbeat
    worker_poll_s: float = 0.5
    # A queued job may be passed over this long for a worker that has another job's model loaded.
    model_affinity_s: float = Field(10.0, ge=0)
    drain_timeout_s: float = 30.0  # at shutdown: how long workers may finish the jobs in hand

    # The native job API (/api/v1).
    public_url: str | None = None  # e.g. https://sd.example.com: links become absolute
    idempotency_ttl_s: float = 24 * 3600  # how long an Idempotency-Key is remembered
    retention_ttl_s: float | None = None  # finished jobs, their images and uploads; None: keep forever
    retention_interval_s: float = 300.0  # how often the cleanup task runs
    webhook_secret: str | None = None  # HMAC-SHA256 key; None: one is made and kept in the data dir
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 2.0  # first retry delay; doubles per attempt
    webhook_timeout_s: float = 10.0
    allow_private_callbacks: bool = False  # callback_url may point at loopback / private networks
    preview_every_n_steps: int = 0  # SSE progress events carry a small preview every N steps; 0: never
    max_metadata_bytes: int = 16 * 1024  # a job's metadata as JSON (UTF-8)
    max_metadata_depth: int = 8  # nesting of a job's metadata (a flat object is depth 1)

    log_level: str = "INFO"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda", "mps") or (
            value.startswith("cuda:") and value[5:].isdigit()
        )
        if not ok:
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def database_url(self) -> str:
        if self.database:
            return self.database
        return f"sqlite:///{(self.data_dir / 'sdgate.db').resolve()}"

    @property
    def storage_location(self) -> str | Path:
        return self.storage or self.images_dir

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def auth_pairs(self) -> dict[str, str]:
        """``--api-auth`` parsed as A1111 does: split on "," then on ":"."""
        if not self.api_auth:
            return {}
        pairs: dict[str, str] = {}
        for item in self.api_auth.split(","):
            user, sep, password = item.strip().partition(":")
            if not sep or not user:
                raise ValueError("api_auth must look like user:pass[,user2:pass2]")
            pairs[user] = password
        return pairs


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then explicit overrides (CLI flags); ``None`` overrides are ignored."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
