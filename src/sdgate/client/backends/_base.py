"""What every backend shares: its address, its auth, its rate limit, and a helper or two.

A backend is I/O-free: its methods are generators of ``_ops`` (see that module), written once for
the sync and async clients. Each one names the request fields it cannot honour
(``ignored_fields``) and the modes it cannot run (``modes``).
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from sdgate.client._constants import IDEMPOTENCY_HEADER, POLL_FACTOR, POLL_INITIAL_S, POLL_MAX_S
from sdgate.client._exceptions import APIResponseError, UnsupportedFeatureError
from sdgate.client._ops import Op
from sdgate.client._ratelimit import TokenBucket
from sdgate.client._types import GenerationResult, ImageRequest, Job

Gen = Generator[Op, Any, Any]


@dataclass(slots=True)
class Context:
    """Per-call settings a backend reads: whether anyone listens to progress, and the deadline."""

    progress: bool = False
    timeout: float = 600.0
    poll_initial: float = POLL_INITIAL_S
    poll_max: float = POLL_MAX_S


# The A1111-style request fields (``ImageRequest`` after ``denoising_strength``), in words.
A1111_EXTRAS: dict[str, str] = {
    "n_iter": "n_iter (repeat the call, or raise batch_size)",
    "subseed": "variation seeds",
    "subseed_strength": "variation seeds",
    "seed_resize_from_w": "seed resize",
    "seed_resize_from_h": "seed resize",
    "clip_skip": "CLIP skip",
    "tiling": "tiling",
    "eta": "sampler eta",
    "s_churn": "sampler noise settings",
    "s_tmin": "sampler noise settings",
    "s_tmax": "sampler noise settings",
    "s_noise": "sampler noise settings",
    "eta_noise_seed_delta": "eta noise seed delta",
    "resize_mode": "resize modes",
    "image_cfg_scale": "image CFG scale",
    "mask_blur": "mask blur",
    "inpainting_fill": "masked-content fill choice",
    "inpaint_full_res": "'only masked' inpainting",
    "inpaint_full_res_padding": "'only masked' inpainting",
    "inpainting_mask_invert": "mask inversion",
    "initial_noise_multiplier": "initial noise multiplier",
    "hires": "hires fix",
    "loras": "LoRAs",
    "vae": "VAE choice",
    "styles": "A1111 styles",
}


def without_a1111_extras(service: str) -> dict[str, str]:
    """``unsupported`` entries for a service that takes none of the A1111-style fields."""
    return {name: f"{service} has no {what}" for name, what in A1111_EXTRAS.items()}


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(data: bytes, *, where: str) -> tuple[Image.Image, str]:
    """PIL image and its A1111 infotext ("" when none) from encoded bytes. Only the header is read
    here: pixels are decoded on first use, so a caller who only saves ``data`` never pays for it."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to the caller
        raise APIResponseError(f"{where}: not an image ({exc})") from None
    info = image.info.get("parameters", "")
    return image, info if isinstance(info, str) else ""


def poll_delays(initial: float, maximum: float) -> Generator[float, None, None]:
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * POLL_FACTOR)


class Backend:
    """Base class. Subclasses set ``kind``, ``modes``, ``unsupported`` and write the generators."""

    kind: ClassVar[str] = "base"
    modes: ClassVar[frozenset[str]] = frozenset({"txt2img"})
    # Request fields this backend drops, and why (shown to the caller).
    unsupported: ClassVar[dict[str, str]] = {}
    strip_suffixes: ClassVar[tuple[str, ...]] = ()
    supports_jobs: ClassVar[bool] = False

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        auth: tuple[str, str] | None = None,
        rate_limit: float | TokenBucket | None = None,
        headers: dict[str, str] | None = None,
        model: str | None = None,
    ) -> None:
        parts = urlsplit(base_url.strip())
        if not parts.scheme or not parts.netloc:
            from sdgate.client._exceptions import ConfigurationError

            raise ConfigurationError(f"not an absolute http(s) URL: {base_url!r}")
        if parts.username is not None and auth is None:
            auth = (parts.username, parts.password or "")
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path.rstrip("/")
        for suffix in self.strip_suffixes:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        self.base_url = urlunsplit((parts.scheme, netloc, path, "", ""))
        self.api_key = api_key
        self.auth = auth
        self.limiter = TokenBucket(rate_limit) if isinstance(rate_limit, int | float) else rate_limit
        self.headers = dict(headers or {})
        self.model = model

    # -- addressing and auth --------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return f"{self.kind}+{self.base_url}"

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def auth_headers(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.auth:
            token = b64encode(f"{self.auth[0]}:{self.auth[1]}".encode())
            return {"Authorization": f"Basic {token}"}
        return {}

    def idempotency(self) -> dict[str, str]:
        """One key per logical submission: made here, reused by every retry of that Call."""
        return {IDEMPOTENCY_HEADER: new_idempotency_key()}

    # -- what can be honoured -------------------------------------------------------------------

    def ignored_fields(self, request: ImageRequest) -> tuple[str, ...]:
        """Fields set on ``request`` that this backend cannot honour (they are left out)."""
        defaults = ImageRequest(prompt="")
        return tuple(name for name in self.unsupported if getattr(request, name) != getattr(defaults, name))

    def check(self, request: ImageRequest, *, strict: bool = False) -> tuple[str, ...]:
        if request.mode not in self.modes:
            can = ", ".join(sorted(self.modes))
            raise UnsupportedFeatureError(
                f"the {self.kind} backend cannot do {request.mode} (it does: {can})", backend=self.kind
            )
        ignored = self.ignored_fields(request)
        if ignored and strict:
            reasons = "; ".join(f"{name}: {self.unsupported[name]}" for name in ignored)
            raise UnsupportedFeatureError(
                f"the {self.kind} backend cannot honour {reasons}", backend=self.kind, fields=ignored
            )
        return ignored

    # -- the protocol (generators of ops) -------------------------------------------------------

    def generate(self, request: ImageRequest, ctx: Context) -> Gen:
        raise NotImplementedError

    def list_models(self) -> Gen:
        raise UnsupportedFeatureError(f"the {self.kind} backend cannot list models", backend=self.kind)
        yield  # pragma: no cover - makes this a generator

    def _no_jobs(self) -> UnsupportedFeatureError:
        return UnsupportedFeatureError(
            f"the {self.kind} backend has no job API (jobs need an sdgate server)", backend=self.kind
        )

    def submit(self, request: ImageRequest) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def get_job(self, job_id: str) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def cluster_status(self) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def list_jobs(self, **filters: Any) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def cancel_job(self, job_id: str) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def delete_job(self, job_id: str) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def retry_job(self, job_id: str) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def job_events(self) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def wait_job(self, job_id: str, ctx: Context, *, include_images: bool = False) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def job_result(self, job: Job) -> Gen:
        raise self._no_jobs()
        yield  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def result_from_images(
    blobs: list[bytes],
    seeds: list[int | None],
    *,
    backend: str,
    where: str,
    job_id: str | None = None,
    timings: dict[str, float] | None = None,
    infotexts: list[str] | None = None,
    filtered: list[bool] | None = None,
) -> GenerationResult:
    images, texts = [], []
    for i, blob in enumerate(blobs):
        image, info = decode_image(blob, where=f"{where} image {i}")
        images.append(image)
        texts.append(infotexts[i] if infotexts and i < len(infotexts) and infotexts[i] else info)
    return GenerationResult(
        images=images,
        seeds=seeds,
        infotexts=texts,
        data=blobs,
        timings=timings or {},
        job_id=job_id,
        backend=backend,
        filtered=list(filtered or []),
    )


__all__ = [
    "A1111_EXTRAS",
    "Backend",
    "Context",
    "Gen",
    "decode_image",
    "poll_delays",
    "result_from_images",
    "without_a1111_extras",
]
