"""The graph's nodes on the diffusers engine's own components (torch).

Checkpoints come from the engine's catalog and model cache (``engine_model``), so a
graph and a plain generation share one loaded model; nothing here loads a second stack. Handles
(``values``) carry LoRA stacks: ``_patch`` puts a stack into the model's weights through
``engine.lora`` just before its text encoder or UNet runs, and the session restores every touched
model's base weights when the prompt ends, however it ends, so a LoRA never reaches the next job.

File names are ComfyUI's: ``ckpt_name`` relative to ``checkpoints/`` (or ``Stable-diffusion/``),
``lora_name`` to ``loras/``, ``vae_name`` to ``vae/``, ``model_name`` to ``upscale_models/``,
``control_net_name`` to ``controlnet/`` (the ControlNet nodes: ``controlnets``); a LoadImage
``image`` is a file uploaded with the prompt (``GraphRequest.images``).

Sizes use the model's own VAE factor, not 8 (``DESIGN.md``): a latent's pixel size is its size times
the factor of the VAE that made it, and an empty latent takes the size of the model that samples it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sdgate.core.errors import InvalidRequest, NotFound
from sdgate.engine import embeddings, lora, vae
from sdgate.engine.comfy import controlnets, ksampler
from sdgate.engine.comfy.executor import RunContext, image_token, run_node
from sdgate.engine.comfy.values import (
    ClipHandle,
    CondEntry,
    Latent,
    LoraUse,
    ModelHandle,
    Pixels,
    UpscaleModel,
    VaeHandle,
)
from sdgate.engine.prompts import encode_text

LATENT_MODES = {
    "nearest-exact": "nearest-exact",
    "bilinear": "bilinear",
    "area": "area",
    "bicubic": "bicubic",
}


class TorchBackend:
    """Runs nodes on a ``DiffusersEngine`` (one prompt at a time, under the engine's lock)."""

    def __init__(self) -> None:
        self.touched: dict[int, Any] = {}  # id -> LoadedModel whose weights a LoRA may have changed
        self.loaded: list[Any] = []  # the checkpoints this prompt loaded, in order

    @contextmanager
    def session(self, ctx: RunContext) -> Iterator[None]:
        with engine_lock(ctx.engine):
            try:
                yield
            finally:
                for model in self.touched.values():
                    if model.pipeline is not None:
                        lora.apply_loras(model.pipeline, [])  # the base weights again, bit for bit

    def token(self, ctx: RunContext, class_type: str, inputs: Mapping[str, Any]) -> str:
        try:
            catalog = ctx.engine.catalog
            if class_type == "CheckpointLoaderSimple":
                return _stat(catalog.resolve(str(inputs.get("ckpt_name"))).filename)
            if class_type in ("LoraLoader", "LoraLoaderModelOnly"):
                return _stat(_lora_file(catalog, str(inputs.get("lora_name"))).path)
            if class_type == "VAELoader":
                return _stat(_vae_file(catalog, str(inputs.get("vae_name"))).path)
            if class_type == "UpscaleModelLoader":
                return _stat(_upscaler_file(catalog, str(inputs.get("model_name"))).path)
            if class_type == "ControlNetLoader":
                return _stat(controlnets.controlnet_file(catalog, str(inputs.get("control_net_name"))).path)
        except (NotFound, OSError):
            return ""
        return image_token(ctx, class_type, inputs)

    def usable(self, value: tuple[Any, ...]) -> bool:
        return True

    def run(self, ctx: RunContext, class_type: str, args: dict[str, Any]) -> tuple[Any, ...]:
        return run_node(NODES, class_type, self, ctx, args)

    # --- helpers the nodes share ---------------------------------------------------------------

    def patch(self, model: Any, *, te: tuple[LoraUse, ...] = (), unet: tuple[LoraUse, ...] = ()) -> None:
        """``model``'s weights become base + these LoRAs (text encoder ``te``, UNet ``unet``); also
        with none, since a plain generation leaves its own LoRAs in (``lora.activate``)."""
        self.touched[id(model)] = model
        wanted = [lora.ActiveLora(u.name, Path(u.path), u.strength, 0.0, u.name) for u in te]
        wanted += [lora.ActiveLora(u.name, Path(u.path), 0.0, u.strength, u.name) for u in unet]
        lora.apply_loras(model.pipeline, wanted)

    def keys(self) -> list[str]:
        """The engine cache keys of the checkpoints this prompt loaded (never evicted for it)."""
        return [str(m.info.filename) for m in self.loaded]

    @contextmanager
    def unet_of(self, handle: ModelHandle) -> Iterator[None]:
        self.patch(handle.model, unet=handle.loras)
        yield

    def vae_module(self, ctx: RunContext, handle: VaeHandle) -> Any:
        if handle.file is None:
            return handle.model.pipeline.vae
        like = self.loaded[-1] if self.loaded else engine_model(ctx.engine, ctx.engine.catalog.default)
        external = vae.load_external(ctx.engine.catalog, ctx.engine.vaes, handle.file, like.pipeline.vae,
                                     ctx.engine.device)  # fmt: skip
        return external.module


# --- the engine's components (DiffusersEngine's model cache and lock, read here rather than
# widened on the engine class) -------------------------------------------------------------------


def engine_model(engine: Any, info: Any, *, keep: list[str] | None = None) -> Any:
    """The engine's ``LoadedModel`` for ``info``: from its model cache, or loaded into it now
    (``keep``: the models this prompt holds, never evicted for it). Call under ``engine_lock``."""
    return engine._get_model(info, keep=keep)


def engine_lock(engine: Any) -> threading.Lock:
    """The lock the engine runs one job at a time under: a prompt holds it from start to end."""
    return engine._lock  # type: ignore[no-any-return]


# --- files -----------------------------------------------------------------------------------------


def _stat(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _find(files: list[Any], name: str, what: str) -> Any:
    wanted = name.strip().replace("\\", "/")
    for key in (lambda f: f.relpath, lambda f: Path(f.relpath).name, lambda f: f.name):
        for f in files:
            if key(f) == wanted:
                return f
    stem = Path(wanted).stem
    for f in files:
        if f.name == stem or Path(f.relpath).stem == stem:
            return f
    raise NotFound(f"{what} '{name}' not found", field="prompt")


def _lora_file(catalog: Any, name: str) -> Any:
    return _find(catalog.list_files("lora"), name, "LoRA")


def _vae_file(catalog: Any, name: str) -> Any:
    return _find(catalog.vaes(), name, "VAE")


def _upscaler_file(catalog: Any, name: str) -> Any:
    return _find(catalog.list_files("esrgan"), name, "upscale model")


# --- pictures and tensors ----------------------------------------------------------------------


def to_pictures(pixels: Pixels) -> list[Image.Image]:
    array = (pixels.tensor.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a[..., :3], "RGB") for a in array]


def _from_picture(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)


def _pixels(tensor: torch.Tensor, info: Any = None) -> Pixels:
    return Pixels(tensor, int(tensor.shape[2]), int(tensor.shape[1]), int(tensor.shape[0]), info)


def _vae_factor(module: Any) -> int:
    return int(2 ** (len(module.config.block_out_channels) - 1))


def _scale(module: Any, z: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    """The VAE's raw latents <-> the model's (scaling, shift, or SDXL-style mean and std)."""
    cfg = module.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        m, s = torch.tensor(mean).view(shape).to(z), torch.tensor(std).view(shape).to(z)
        return z * s / cfg.scaling_factor + m if inverse else (z - m) * cfg.scaling_factor / s
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return z / cfg.scaling_factor + shift if inverse else (z - shift) * cfg.scaling_factor


@torch.inference_mode()
def _decode(module: Any, samples: torch.Tensor) -> torch.Tensor:
    z = _scale(module, samples.to(device=module.device, dtype=module.dtype), inverse=True)
    images = module.decode(z, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


@torch.inference_mode()
def _encode(module: Any, pixels: torch.Tensor) -> torch.Tensor:
    x = (pixels[..., :3].permute(0, 3, 1, 2) * 2 - 1).to(device=module.device, dtype=module.dtype)
    z = module.encode(x).latent_dist.mode()  # the mode, not a sample: the same image encodes the same
    return _scale(module, z.float(), inverse=False)


def _crop_to(pixels: torch.Tensor, factor: int, mask: torch.Tensor | None = None) -> Any:
    """ComfyUI's ``vae_encode_crop_pixels``: centre-crop to a multiple of the VAE factor."""
    h, w = pixels.shape[1] // factor * factor, pixels.shape[2] // factor * factor
    if h == 0 or w == 0:
        raise InvalidRequest(f"an image smaller than {factor} pixels cannot be encoded", field="prompt")
    dy, dx = (pixels.shape[1] % factor) // 2, (pixels.shape[2] % factor) // 2
    cropped = pixels[:, dy : dy + h, dx : dx + w]
    if mask is None:
        return cropped
    return cropped, mask[..., dy : dy + h, dx : dx + w]


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """ComfyUI's ``common_upscale`` on ``[B, C, H, W]``: an optional centre crop to the new aspect,
    then resize (lanczos through PIL; bislerp as bilinear)."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old, new = old_w / old_h, width / height
        x = y = 0
        if old > new:
            x = round((old_w - old_w * (new / old)) / 2)
        elif old < new:
            y = round((old_h - old_h * (old / new)) / 2)
        samples = samples[..., y : old_h - y, x : old_w - x]
    if method == "lanczos":
        out = []
        for row in samples:
            array = (row.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            picture = picture.resize((width, height), Image.Resampling.LANCZOS)
            back = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)
            out.append(back[..., None] if back.dim() == 2 else back)
        return torch.stack(out).permute(0, 3, 1, 2).to(samples)
    mode = LATENT_MODES.get(method, "bilinear")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(samples.float(), size=(height, width), mode=mode, **kwargs).to(samples.dtype)


def _target(width: int, height: int, new_w: int, new_h: int) -> tuple[int, int]:
    if new_w == 0:
        new_w = max(1, round(width * new_h / height))
    if new_h == 0:
        new_h = max(1, round(height * new_w / width))
    return new_w, new_h


# --- the nodes -----------------------------------------------------------------------------------


def checkpoint_loader(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    engine = ctx.engine
    info = engine.catalog.resolve(str(args["ckpt_name"]))
    model = engine_model(engine, info, keep=b.keys())
    if all(m is not model for m in b.loaded):
        b.loaded.append(model)
    if not ctx.model_name:
        ctx.model_name, ctx.model_hash = model.info.name, model.info.short_hash
    return (ModelHandle(model), ClipHandle(model), VaeHandle(model))


def clip_set_last_layer(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    clip: ClipHandle = args["clip"]
    layer = int(args.get("stop_at_clip_layer", -1))
    return (replace(clip, clip_skip=(-layer - 1) or None),)


def clip_text_encode(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    clip: ClipHandle = args["clip"]
    text = str(args.get("text", ""))
    model = clip.model
    pipe = model.pipeline
    b.patch(model, te=clip.loras)
    embeds = embeddings.for_pipeline(ctx.engine.catalog, pipe)
    encoded = encode_text(pipe, model.loaded.family, text, clip.clip_skip, embeds)
    return ((CondEntry(text, encoded.embeds, encoded.pooled),),)


def lora_loader(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    name = str(args["lora_name"])
    path = str(_lora_file(ctx.engine.catalog, name).path)
    model: ModelHandle = args["model"]
    out_model = model.with_lora(LoraUse(name, path, float(args.get("strength_model", 1.0))))
    if "clip" not in args:  # LoraLoaderModelOnly
        return (out_model,)
    clip: ClipHandle = args["clip"]
    return (out_model, clip.with_lora(LoraUse(name, path, float(args.get("strength_clip", 1.0)))))


def empty_latent(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    return (
        Latent(int(args.get("width", 512)), int(args.get("height", 512)), int(args.get("batch_size", 1))),
    )


def k_sampler(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent = ksampler.sample(
        ctx, args["model"], seed=int(args.get("seed", 0)), steps=int(args.get("steps", 20)),
        cfg=float(args.get("cfg", 8.0)), sampler_name=str(args.get("sampler_name", "euler")),
        scheduler=str(args.get("scheduler", "normal")), positive=args["positive"], negative=args["negative"],
        latent=args["latent_image"], denoise=float(args.get("denoise", 1.0)), apply_model=b.unet_of,
        keep=b.keys(),
    )  # fmt: skip
    return (latent,)


def k_sampler_advanced(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent = ksampler.sample(
        ctx, args["model"], seed=int(args.get("noise_seed", 0)), steps=int(args.get("steps", 20)),
        cfg=float(args.get("cfg", 8.0)), sampler_name=str(args.get("sampler_name", "euler")),
        scheduler=str(args.get("scheduler", "normal")), positive=args["positive"], negative=args["negative"],
        latent=args["latent_image"], start=int(args.get("start_at_step", 0)),
        end=int(args.get("end_at_step", 10000)), add_noise=args.get("add_noise", "enable") == "enable",
        force_full_denoise=args.get("return_with_leftover_noise", "disable") != "enable",
        apply_model=b.unet_of, keep=b.keys(),
    )  # fmt: skip
    return (latent,)


def vae_decode(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["samples"]
    module = b.vae_module(ctx, args["vae"])
    samples = latent.samples
    if samples is None:
        f = _vae_factor(module)
        shape = (latent.batch, module.config.latent_channels, latent.height // f, latent.width // f)
        samples = torch.zeros(shape)
    return (_pixels(_decode(module, samples), latent.info),)


def vae_encode(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    pixels: Pixels = args["pixels"]
    module = b.vae_module(ctx, args["vae"])
    f = _vae_factor(module)
    cropped = _crop_to(pixels.tensor, f)
    samples = _encode(module, cropped)
    return (Latent(int(cropped.shape[2]), int(cropped.shape[1]), int(cropped.shape[0]), samples, factor=f),)


def vae_encode_for_inpaint(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    pixels: Pixels = args["pixels"]
    module = b.vae_module(ctx, args["vae"])
    f = _vae_factor(module)
    grow = int(args.get("grow_mask_by", 6))
    image = pixels.tensor
    mask = args["mask"].float().reshape(-1, 1, *args["mask"].shape[-2:])
    mask = F.interpolate(mask, size=(image.shape[1], image.shape[2]), mode="bilinear")
    image, mask = _crop_to(image.clone(), f, mask)
    if grow > 0:
        kernel = torch.ones(1, 1, grow, grow)
        grown = F.conv2d(mask.round(), kernel, padding=math.ceil((grow - 1) / 2)).clamp(0, 1)
    else:
        grown = mask
    keep = (1.0 - mask.round()).squeeze(1)[..., None]
    if keep.shape[0] != image.shape[0]:
        keep = keep.expand(image.shape[0], -1, -1, -1)
    image = (image[..., :3] - 0.5) * keep + 0.5  # masked pixels grey
    samples = _encode(module, image)
    noise_mask = grown[..., : image.shape[1], : image.shape[2]].round()
    height, width = int(image.shape[1]), int(image.shape[2])
    return (Latent(width, height, int(image.shape[0]), samples, noise_mask, f),)


def set_latent_noise_mask(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["samples"]
    mask = args["mask"].float()
    return (replace(latent, noise_mask=mask.reshape(-1, 1, *mask.shape[-2:])),)


def _picture(ctx: RunContext, name: str) -> Image.Image:
    picture = ImageOps.exif_transpose(ctx.inputs.init_images[ctx.image_file(name)])
    if picture.mode == "I":
        picture = picture.point(lambda v: v * (1 / 255))
    return picture


def load_image(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    picture = _picture(ctx, str(args["image"]))
    image = _from_picture(picture)[None]
    if "A" in picture.getbands():
        alpha = np.asarray(picture.getchannel("A"), dtype=np.float32) / 255.0
        mask = 1.0 - torch.from_numpy(alpha)[None]
    else:
        mask = torch.zeros(1, 64, 64)
    return (_pixels(image), mask)


def load_image_mask(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    picture = _picture(ctx, str(args["image"]))
    if picture.getbands() != ("R", "G", "B", "A"):
        picture = picture.convert("RGBA")
    channel = str(args.get("channel", "alpha"))[0].upper()
    if channel not in picture.getbands():
        return (torch.zeros(1, 64, 64),)
    values = torch.from_numpy(np.asarray(picture.getchannel(channel), dtype=np.float32) / 255.0)[None]
    return (1.0 - values if channel == "A" else values,)


def image_scale(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    pixels: Pixels = args["image"]
    width, height = int(args.get("width", 512)), int(args.get("height", 512))
    if width == 0 and height == 0:
        return (pixels,)
    width, height = _target(pixels.width, pixels.height, width, height)
    method, crop = str(args.get("upscale_method", "nearest-exact")), str(args.get("crop", "disabled"))
    out = upscale(pixels.tensor.permute(0, 3, 1, 2), width, height, method, crop).permute(0, 2, 3, 1)
    return (_pixels(out.clamp(0, 1), pixels.info),)


def image_scale_by(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    pixels: Pixels = args["image"]
    s = float(args.get("scale_by", 1.0))
    width, height = max(1, round(pixels.width * s)), max(1, round(pixels.height * s))
    method = str(args.get("upscale_method", "nearest-exact"))
    out = upscale(pixels.tensor.permute(0, 3, 1, 2), width, height, method, "disabled").permute(0, 2, 3, 1)
    return (_pixels(out.clamp(0, 1), pixels.info),)


def _latent_resized(
    ctx: RunContext, latent: Latent, width: int, height: int, method: str, crop: str
) -> Latent:
    """``latent`` at ``width`` x ``height`` pixels (its own VAE factor)."""
    if method not in LATENT_MODES:
        ctx.note(f"latent upscale {method} ran as bilinear")
    if latent.samples is None:
        return replace(latent, width=width, height=height)
    f = latent.factor or 8
    w, h = max(1, width // f), max(1, height // f)
    samples = upscale(latent.samples, w, h, method, crop)
    return replace(latent, samples=samples, width=w * f, height=h * f)


def latent_upscale(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["samples"]
    width, height = int(args.get("width", 512)), int(args.get("height", 512))
    if width == 0 and height == 0:
        return (latent,)
    width, height = _target(latent.width, latent.height, width, height)
    method, crop = str(args.get("upscale_method", "nearest-exact")), str(args.get("crop", "disabled"))
    return (_latent_resized(ctx, latent, width, height, method, crop),)


def latent_upscale_by(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["samples"]
    s = float(args.get("scale_by", 1.5))
    f = latent.factor or 8
    width, height = round(latent.width / f * s) * f, round(latent.height / f * s) * f
    method = str(args.get("upscale_method", "nearest-exact"))
    return (_latent_resized(ctx, latent, max(f, width), max(f, height), method, "disabled"),)


def vae_loader(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    return (VaeHandle(None, _vae_file(ctx.engine.catalog, str(args["vae_name"]))),)


_UPSCALE_MODELS: dict[str, Any] = {}
_UPSCALE_LOCK = threading.Lock()


def upscale_model_loader(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    from sdgate.engine.spandrel_loader import load_image_model
    from sdgate.engine.upscalers import UPSCALER_PURPOSES

    name = str(args["model_name"])
    file = _upscaler_file(ctx.engine.catalog, name)
    key = f"{_stat(file.path)}@{ctx.engine.device}"
    with _UPSCALE_LOCK:
        model = _UPSCALE_MODELS.get(key)
        if model is None:
            model = load_image_model(file.path, purposes=UPSCALER_PURPOSES, field="prompt.model_name")
            model = model.to(ctx.engine.device)
            _UPSCALE_MODELS.clear()  # one upscale model in memory at a time
            _UPSCALE_MODELS[key] = model
    return (UpscaleModel(name, model),)


def image_upscale_with_model(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    from sdgate.engine.upscalers import run_model

    upscaler: UpscaleModel = args["upscale_model"]
    pixels: Pixels = args["image"]
    out = [
        _from_picture(run_model(upscaler.model, picture, ctx.engine.device))
        for picture in to_pictures(pixels)
    ]
    return (_pixels(torch.stack(out), pixels.info),)


def conditioning_combine(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    return ((*args["conditioning_1"], *args["conditioning_2"]),)


def conditioning_set_area(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    area = (
        int(args.get("width", 64)),
        int(args.get("height", 64)),
        int(args.get("x", 0)),
        int(args.get("y", 0)),
    )
    strength = float(args.get("strength", 1.0))
    return (tuple(replace(e, area=area, strength=strength) for e in args["conditioning"]),)


def _save(kind: str) -> Any:
    def save(b: TorchBackend, ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
        pixels: Pixels = args["images"]
        prefix = str(args.get("filename_prefix", "ComfyUI")) if kind == "output" else "ComfyUI_temp"
        ctx.save(to_pictures(pixels), pixels, kind=kind, prefix=prefix)
        return ()

    return save


NODES: dict[str, Any] = {
    "CheckpointLoaderSimple": checkpoint_loader,
    "CLIPSetLastLayer": clip_set_last_layer,
    "CLIPTextEncode": clip_text_encode,
    "LoraLoader": lora_loader,
    "LoraLoaderModelOnly": lora_loader,
    "EmptyLatentImage": empty_latent,
    "KSampler": k_sampler,
    "KSamplerAdvanced": k_sampler_advanced,
    "VAEDecode": vae_decode,
    "VAEEncode": vae_encode,
    "VAEEncodeForInpaint": vae_encode_for_inpaint,
    "SetLatentNoiseMask": set_latent_noise_mask,
    "LoadImage": load_image,
    "LoadImageMask": load_image_mask,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "LatentUpscale": latent_upscale,
    "LatentUpscaleBy": latent_upscale_by,
    "VAELoader": vae_loader,
    "UpscaleModelLoader": upscale_model_loader,
    "ImageUpscaleWithModel": image_upscale_with_model,
    "ConditioningCombine": conditioning_combine,
    "ConditioningSetArea": conditioning_set_area,
    "SaveImage": _save("output"),
    "PreviewImage": _save("temp"),
    **controlnets.NODES,
}
