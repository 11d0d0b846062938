"""The null engine's graph nodes: sizes only, blank pictures, no torch.

Each node computes the size of what it would produce (a latent's pixel size, an image's), so a
graph gives blank pictures of the sizes the diffusers engine would give; samplers still report
every step, so progress, interrupt and cancel behave as with a real model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from PIL import Image

from sdgate.core.comfy.nodes import sampler_for
from sdgate.core.errors import ModelNotFound
from sdgate.engine.comfy.executor import RunContext, image_token, run_node
from sdgate.engine.comfy.values import Latent, Pixels, SampleInfo

_HANDLE = ("null",)


class ShapeBackend:
    def session(self, ctx: RunContext) -> AbstractContextManager[None]:
        return _nothing()

    def token(self, ctx: RunContext, class_type: str, inputs: Mapping[str, Any]) -> str:
        return image_token(ctx, class_type, inputs)

    def usable(self, value: tuple[Any, ...]) -> bool:
        return True

    def run(self, ctx: RunContext, class_type: str, args: dict[str, Any]) -> tuple[Any, ...]:
        return run_node(_NODES, class_type, ctx, args)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _factor(ctx: RunContext) -> int:
    try:
        return int(ctx.engine.model_defaults(None).vae_scale_factor)
    except Exception:
        return 8


def _checkpoint(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    name = str(args.get("ckpt_name", ""))
    try:
        defaults = ctx.engine.model_defaults(name)
    except ModelNotFound:
        defaults = ctx.engine.model_defaults(None)
    if not ctx.model_name:
        ctx.model_name = defaults.name
    return (_HANDLE, _HANDLE, _HANDLE)


def _empty(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    f = _factor(ctx)
    w, h = int(args.get("width", 512)) // f * f, int(args.get("height", 512)) // f * f
    return (Latent(w, h, int(args.get("batch_size", 1))),)


def _load_image(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    picture = ctx.inputs.init_images[ctx.image_file(str(args.get("image")))]
    return (Pixels(None, picture.width, picture.height, 1), ("mask", picture.width, picture.height))


def _sampler(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["latent_image"]
    steps = int(args.get("steps", 20))
    for step in range(1, steps + 1):
        ctx.report(step, steps)
    comfy_sampler, comfy_scheduler = (
        str(args.get("sampler_name", "euler")),
        str(args.get("scheduler", "normal")),
    )
    try:
        sampler, schedule = sampler_for(comfy_sampler, comfy_scheduler)
    except KeyError:
        sampler, schedule = comfy_sampler, comfy_scheduler
    info = SampleInfo(
        prompt=_text(args.get("positive")), negative_prompt=_text(args.get("negative")),
        seed=int(args.get("seed", args.get("noise_seed", 0))), steps=steps, cfg=float(args.get("cfg", 8.0)),
        sampler=sampler, schedule=schedule, comfy_sampler=comfy_sampler, comfy_scheduler=comfy_scheduler,
        width=latent.width, height=latent.height, model_name=ctx.model_name, model_stem=ctx.model_name,
        model_hash=None,
    )  # fmt: skip
    ctx.last = info
    return (Latent(latent.width, latent.height, latent.batch, info=info),)


def _text(cond: Any) -> str:
    return str(cond[1]) if isinstance(cond, tuple) and len(cond) == 2 and cond[0] == "cond" else ""


def _combine(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    texts = [t for t in (_text(args.get("conditioning_1")), _text(args.get("conditioning_2"))) if t]
    return (("cond", " AND ".join(texts)),)


def _decode(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    latent: Latent = args["samples"]
    return (Pixels(None, latent.width, latent.height, latent.batch, latent.info),)


def _encode(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    pixels: Pixels = args["pixels"]
    f = _factor(ctx)
    return (Latent(pixels.width // f * f, pixels.height // f * f, pixels.batch),)


def _scaled(width: int, height: int, new_w: int, new_h: int) -> tuple[int, int]:
    if new_w == 0 and new_h == 0:
        return width, height
    if new_w == 0:
        new_w = max(1, round(width * new_h / height))
    if new_h == 0:
        new_h = max(1, round(height * new_w / width))
    return new_w, new_h


def _image_scale(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    p: Pixels = args["image"]
    w, h = _scaled(p.width, p.height, int(args.get("width", 512)), int(args.get("height", 512)))
    return (Pixels(None, w, h, p.batch, p.info),)


def _image_scale_by(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    p: Pixels = args["image"]
    s = float(args.get("scale_by", 1.0))
    return (Pixels(None, max(1, round(p.width * s)), max(1, round(p.height * s)), p.batch, p.info),)


def _latent_scale(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    lat: Latent = args["samples"]
    f = _factor(ctx)
    w, h = _scaled(lat.width, lat.height, int(args.get("width", 512)), int(args.get("height", 512)))
    return (Latent(max(f, w // f * f), max(f, h // f * f), lat.batch, info=lat.info),)


def _latent_scale_by(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    lat: Latent = args["samples"]
    f, s = _factor(ctx), float(args.get("scale_by", 1.5))
    w, h = round(lat.width / f * s) * f, round(lat.height / f * s) * f
    return (Latent(max(f, w), max(f, h), lat.batch, info=lat.info),)


def _upscale_model(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    from sdgate.core.upscaler_files import scale_hint

    return (("upscaler", scale_hint(str(args.get("model_name", "")))),)  # the scale its name says


def _upscale_with_model(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    p: Pixels = args["image"]
    scale = int(args["upscale_model"][1])
    return (Pixels(None, p.width * scale, p.height * scale, p.batch, p.info),)


def _save(kind: str) -> Any:
    def save(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
        p: Pixels = args["images"]
        pictures = [Image.new("RGB", (p.width, p.height)) for _ in range(p.batch)]
        prefix = str(args.get("filename_prefix", "ComfyUI")) if kind == "output" else "ComfyUI_temp"
        ctx.save(pictures, p, kind=kind, prefix=prefix)
        return ()

    return save


def _first(name: str) -> Any:
    return lambda ctx, args: (args[name],)


def _same(*names: str) -> Any:
    return lambda ctx, args: tuple(args[n] for n in names)


def _handle(ctx: RunContext, args: dict[str, Any]) -> tuple[Any, ...]:
    return (_HANDLE,)


_NODES: dict[str, Any] = {
    "CheckpointLoaderSimple": _checkpoint,
    "CLIPTextEncode": lambda ctx, args: (("cond", str(args.get("text", ""))),),
    "CLIPSetLastLayer": _first("clip"),
    "EmptyLatentImage": _empty,
    "KSampler": _sampler,
    "KSamplerAdvanced": _sampler,
    "VAEDecode": _decode,
    "VAEEncode": _encode,
    "VAEEncodeForInpaint": _encode,
    "SetLatentNoiseMask": _first("samples"),
    "LoadImage": _load_image,
    "LoadImageMask": lambda ctx, args: (_load_image(ctx, args)[1],),
    "ImageScale": _image_scale,
    "ImageScaleBy": _image_scale_by,
    "LatentUpscale": _latent_scale,
    "LatentUpscaleBy": _latent_scale_by,
    "LoraLoader": _same("model", "clip"),
    "LoraLoaderModelOnly": _first("model"),
    "VAELoader": _handle,
    "UpscaleModelLoader": _upscale_model,
    "ImageUpscaleWithModel": _upscale_with_model,
    "ConditioningCombine": _combine,
    "ConditioningSetArea": _first("conditioning"),
    "ControlNetLoader": lambda ctx, args: (("controlnet", str(args.get("control_net_name", ""))),),
    "ControlNetApply": _first("conditioning"),  # a ControlNet guides; it changes no size
    "ControlNetApplyAdvanced": _same("positive", "negative"),
    "SaveImage": _save("output"),
    "PreviewImage": _save("temp"),
}
