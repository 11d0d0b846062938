"""Progress previews: the current latents as a small RGB image, built only when someone asks.

``settings.preview_method`` picks per model (``attach`` at load):

- ``latent``: a linear latent-to-RGB projection at latent resolution (A1111's "Approx cheap"): fixed
  factors for SD 1.x/2.x and SDXL latents; for any other latent space (the demo model, other channel
  counts) factors fitted once by least squares against the model's own VAE on a tiny random batch.
- ``taesd``: the tiny autoencoder's decoder (TAESD weights, ``taesd_decoder.*`` for SD 1.x/2.x,
  ``taesdxl_decoder.*`` for SDXL, in ``VAE-approx/`` (A1111) or ``vae_approx/`` (ComfyUI)) loaded into
  diffusers' ``AutoencoderTiny``: full-size previews for ~1/20 of the VAE's work.
- ``auto``: taesd where its weights are there, else latent; ``none``: no previews at all.

``for_step`` returns the lazy callable a ``StepReport`` carries: the step callback only snapshots the
first latent (done by the caller); the projection or the TAESD decode runs when the preview is read.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdgate.settings import Settings

log = logging.getLogger("sdgate.engine")

# Latent -> RGB projections (A1111's "Approx cheap" preview); rows are latent channels.
FACTORS_SD = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
FACTORS_SDXL = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)
KNOWN_FACTORS = {"sd1": FACTORS_SD, "sd2": FACTORS_SD, "sdxl": FACTORS_SDXL}
TAESD_DIRS = ("VAE-approx", "vae_approx")
TAESD_NAMES = {"sd1": "taesd_decoder", "sd2": "taesd_decoder", "sdxl": "taesdxl_decoder"}
TAESD_EXTENSIONS = (".safetensors", ".pth", ".pt")
FIT_LATENT_SIDE = 8  # the least-squares fit decodes 8 random 8x8 latents once per model


def to_image(rgb: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an RGB image."""
    array = ((rgb.float() + 1.0) / 2.0).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def project(latent: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor | None = None) -> Image.Image:
    """One latent (C, H, W) -> RGB at latent resolution through ``factors`` (C, 3) (+ ``bias`` (3,))."""
    x = latent.float()
    rgb = torch.einsum("chw,cr->rhw", x, factors.to(x.device))
    if bias is not None:
        rgb = rgb + bias.to(x.device).view(3, 1, 1)
    return to_image(rgb)


# --- a fitted projection for other latent spaces ---------------------------------------------------


def vae_input(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """Pipeline latents -> what ``vae.decode`` takes (its scaling, and shift or per-channel stats)."""
    cfg = vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        std_t, mean_t = torch.tensor(std).view(shape).to(z), torch.tensor(mean).view(shape).to(z)
        return z * std_t / cfg.scaling_factor + mean_t
    return z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)


def fit_projection(vae: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (factors (C, 3), bias (3,)) from latents to the VAE's colours, averaged over
    each latent pixel's patch: one decode of a tiny seeded batch."""
    gen = torch.Generator("cpu").manual_seed(0)
    z = torch.randn(8, channels, FIT_LATENT_SIDE, FIT_LATENT_SIDE, generator=gen)
    param = next(vae.parameters())
    with torch.inference_mode():
        image = vae.decode(vae_input(vae, z.to(param)), return_dict=False)[0].float().cpu()
    image = torch.nn.functional.adaptive_avg_pool2d(image, (FIT_LATENT_SIDE, FIT_LATENT_SIDE))
    x = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(z.numel() // channels, 1)], 1)
    y = image.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x, y).solution  # (C + 1, 3)
    return solution[:channels], solution[channels]


# --- TAESD -----------------------------------------------------------------------------------------


def find_taesd(models_dir: Path, family: str | None) -> Path | None:
    """The TAESD decoder file for ``family`` in the models folder, if there is one."""
    name = TAESD_NAMES.get(family or "")
    if name is None:
        return None
    for folder in TAESD_DIRS:
        for ext in TAESD_EXTENSIONS:
            path = models_dir / folder / f"{name}{ext}"
            if path.is_file():
                return path
    return None


def taesd_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TAESD's decoder keys (an ``nn.Sequential`` whose layer 0 is a parameter-free clamp: ``1.weight``,
    ``3.conv.0.weight``, ...) -> ``AutoencoderTiny.decoder``'s (``layers.0.weight``, ...), whose
    clamp is in ``forward``; files already in diffusers' layout pass through."""
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("decoder.")
        if not key.startswith("layers."):
            index, _, rest = key.partition(".")
            key = f"layers.{int(index) - 1}.{rest}"
        out[key] = tensor
    return out


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


_TAESD: dict[tuple[str, float, str, torch.dtype], Any] = {}
_TAESD_LOCK = threading.Lock()


def load_taesd(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """An ``AutoencoderTiny`` with the file's decoder weights, on ``device`` (cached per file)."""
    key = (str(path), path.stat().st_mtime, str(device), dtype)
    with _TAESD_LOCK:
        if key not in _TAESD:
            from diffusers import AutoencoderTiny

            state = taesd_to_diffusers(_read(path))
            channels = state["layers.0.weight"].shape[1]
            tiny = AutoencoderTiny(latent_channels=channels)
            tiny.decoder.load_state_dict(state, strict=True)
            tiny.encoder = None  # previews only decode
            _TAESD[key] = tiny.to(device=device, dtype=dtype).eval()
        return _TAESD[key]


# --- one model's previewer --------------------------------------------------------------------------


@dataclass
class Previewer:
    """How one model's previews are drawn (``method`` "latent", "taesd" or "none")."""

    method: str
    family: str | None
    taesd: Path | None = None
    _fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def render(self, pipe: Any, latent: torch.Tensor) -> Image.Image:
        """One latent (1, C, H, W) as a picture."""
        if self.method == "taesd" and self.taesd is not None:
            try:
                return self._taesd(latent)
            except Exception:  # a damaged or foreign file: say so once, then project
                log.warning("TAESD previews from %s failed; projecting instead", self.taesd, exc_info=True)
                self.method = "latent"
        return self._project(pipe, latent)

    def _taesd(self, latent: torch.Tensor) -> Image.Image:
        dtype = torch.float16 if latent.device.type == "cuda" else torch.float32
        tiny = load_taesd(self.taesd, latent.device, dtype)  # type: ignore[arg-type]
        with torch.inference_mode():
            image = tiny.decode(latent.to(dtype), return_dict=False)[0]
        return to_image(image[0])

    def _project(self, pipe: Any, latent: torch.Tensor) -> Image.Image:
        channels = latent.shape[1]
        if channels == 4 and self.family in KNOWN_FACTORS:
            return project(latent[0], torch.tensor(KNOWN_FACTORS[self.family]))
        with self._lock:
            if channels not in self._fitted:
                self._fitted[channels] = fit_projection(pipe.vae, channels)
        return project(latent[0], *self._fitted[channels])


_PREVIEWERS: weakref.WeakKeyDictionary[Any, Previewer] = weakref.WeakKeyDictionary()  # by UNet module


def choose(settings: Settings, family: str | None) -> Previewer:
    """The previewer ``settings.preview_method`` asks for, given what the models folder holds."""
    method = settings.preview_method
    if method == "none":
        return Previewer("none", family)
    taesd = find_taesd(settings.resolved_models_dir, family) if method in ("auto", "taesd") else None
    if method == "taesd" and taesd is None:
        log.warning(
            "--preview-method taesd: no %s in %s of the models folder; using the latent projection",
            TAESD_NAMES.get(family or "", "TAESD decoder"), " or ".join(TAESD_DIRS),
        )  # fmt: skip
    return Previewer("taesd" if taesd is not None else "latent", family, taesd)


def attach(loaded: Any, settings: Settings) -> Previewer:
    """Choose ``loaded``'s previewer (a ``LoadedPipeline``); its pipelines' steps use it."""
    previewer = choose(settings, loaded.family)
    _PREVIEWERS[loaded.pipeline.unet] = previewer
    return previewer


def for_step(pipe: Any, latents: torch.Tensor, family: str | None) -> Callable[[], Image.Image] | None:
    """The lazy preview of ``latents`` (a (1, C, H, W) snapshot) for a step of ``pipe``; None when
    the model's previews are off. A pipeline nobody attached gets the latent projection."""
    unet = getattr(pipe, "unet", None)
    previewer = None if unet is None else _PREVIEWERS.get(unet)
    if previewer is None:
        previewer = Previewer("latent", family)
        if unet is not None:  # kept, so a fitted projection is fitted once per model
            _PREVIEWERS[unet] = previewer
    if previewer.method == "none":
        return None
    chosen = previewer
    return lambda: chosen.render(pipe, latents)
