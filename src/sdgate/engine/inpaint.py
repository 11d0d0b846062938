"""A1111's inpainting image work, without torch: masks, "only masked" crops, fills and paste-back.

Masks are white where the image is repainted. The functions follow A1111 1.10's ``processing.py``
and ``masking.py`` so that the same request crops, fills and composites the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive)

FILL = 0  # inpainting_fill: blurred surrounding colours
ORIGINAL = 1
LATENT_NOISE = 2
LATENT_NOTHING = 3


def resize_image(image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """A1111's ``images.resize_image``: 0 just resize, 1 crop and resize, 2 resize and fill.

    Mode 3 ("just resize (latent upscale)") resizes like 0 here; the engine upscales the latents.
    """
    if image.size == (width, height):
        return image
    if resize_mode not in (1, 2):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    ratio = width / height
    src_ratio = image.width / image.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    else:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((max(1, src_w), max(1, src_h)), Image.Resampling.LANCZOS)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if resize_mode == 2:
        if ratio < src_ratio:
            fill = height // 2 - src_h // 2
            if fill > 0:
                out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(
                    resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                    box=(0, fill + src_h),
                )
        elif ratio > src_ratio:
            fill = width // 2 - src_w // 2
            if fill > 0:
                out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(
                    resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                    box=(fill + src_w, 0),
                )
    return out


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's separable Gaussian mask blur (kernel 2.5 * sigma * 2 + 1, as its cv2 call)."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    arr = np.asarray(mask, dtype=np.float32)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma > 0:
            arr = _gauss_1d(arr, sigma, axis)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")


def _gauss_1d(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = int(2.5 * sigma + 0.5)
    xs = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(xs**2) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(arr, pad, mode="reflect" if arr.shape[axis] > radius else "edge")
    out = np.zeros_like(arr)
    n = arr.shape[axis]
    for i, k in enumerate(kernel):
        out += k * (padded[:, i : i + n] if axis == 1 else padded[i : i + n, :])
    return out


def crop_region(mask: Image.Image, padding: int) -> Box:
    """The box around the mask's nonzero pixels, grown by ``padding`` (the whole image if empty)."""
    arr = np.asarray(mask)
    ys, xs = np.nonzero(arr)
    w, h = mask.size
    if len(xs) == 0:
        return 0, 0, w, h
    return (
        max(int(xs.min()) - padding, 0),
        max(int(ys.min()) - padding, 0),
        min(int(xs.max()) + 1 + padding, w),
        min(int(ys.max()) + 1 + padding, h),
    )


def expand_crop_region(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """A1111's ``expand_crop_region``: grow the box to the processing aspect ratio, inside the image."""
    x1, y1, x2, y2 = box
    if (x2 - x1) / (y2 - y1) > width / height:
        diff = int((x2 - x1) / (width / height) - (y2 - y1))
        y1, y2 = _grow(y1 - diff // 2, y2 + diff - diff // 2, image_h)
    else:
        diff = int((y2 - y1) * (width / height) - (x2 - x1))
        x1, x2 = _grow(x1 - diff // 2, x2 + diff - diff // 2, image_w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, limit: int) -> tuple[int, int]:
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        hi, lo = hi - lo, 0
    return lo, min(hi, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's ``masking.fill`` (inpainting_fill 0): the masked area in blurred surrounding colours."""
    out = Image.new("RGBA", image.size)
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


@dataclass
class InpaintPlan:
    """How one inpainting job's images are prepared and put back together.

    ``mask`` is what the sampler sees (processing size); ``overlay_mask`` (the source's size, blurred)
    decides which output pixels come from the original; ``crop`` is the "only masked" box.
    """

    mask: Image.Image
    overlay_mask: Image.Image
    crop: Box | None
    fill: int

    def source(self, image: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
        """The original as the final composite uses it: processing size, or its own for "only masked"."""
        return image if self.crop is not None else resize_image(image, width, height, resize_mode)

    def init_image(self, original: Image.Image, width: int, height: int) -> Image.Image:
        """What gets encoded: the (cropped) source at processing size, filled where asked."""
        image = original
        if self.crop is not None:
            image = resize_image(image.crop(self.crop), width, height, 2)
        if self.fill == FILL:
            image = fill(image, self.mask)
        return image

    def composite(self, generated: Image.Image, original: Image.Image) -> Image.Image:
        """A1111's ``apply_overlay``: paste the result (back into the crop) over the original,
        keeping the original wherever the overlay mask is black."""
        if self.crop is not None:
            x1, y1, x2, y2 = self.crop
            base = original.copy()
            base.paste(generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
            generated = base
        return Image.composite(generated, original, self.overlay_mask)


def plan_inpaint(
    mask: Image.Image,
    *,
    source_size: tuple[int, int],
    width: int,
    height: int,
    resize_mode: int,
    invert: bool,
    blur_x: int,
    blur_y: int,
    full_res: bool,
    padding: int,
    fill_mode: int,
) -> InpaintPlan:
    """A1111's mask preparation (``StableDiffusionProcessingImg2Img.init``)."""
    mask = mask.convert("L")
    if full_res and mask.size != source_size:  # a mask of another size is resized, as A1111 does
        mask = mask.resize(source_size, Image.Resampling.LANCZOS)
    if invert:
        mask = ImageOps.invert(mask)
    mask = blur_mask(mask, blur_x, blur_y)
    if full_res:
        box = expand_crop_region(crop_region(mask, padding), width, height, *mask.size)
        return InpaintPlan(resize_image(mask.crop(box), width, height, 2), mask, box, fill_mode)
    mask = resize_image(mask, width, height, resize_mode)
    overlay = Image.fromarray(np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8), "L")
    return InpaintPlan(mask, overlay, None, fill_mode)
