from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdgate.core.errors import InvalidRequest, PayloadTooLarge
from sdgate.core.images import (
    ImageLimits,
    decode_base64_bytes,
    decode_base64_image,
    decode_image_bytes,
    decode_user_comment,
    encode_image,
    encode_png,
    image_to_base64_png,
    read_image_info,
    read_png_info,
)

LIMITS = ImageLimits()
INFOTEXT = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler, Seed: 1, Size: 8x8"


# -- helpers ----------------------------------------------------------------------------------------


def save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR (and its CRC) is patched to claim another size."""
    png = save(Image.new("RGB", (1, 1)), "PNG")
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


def gif_with_frames(count: int) -> bytes:
    """A GIF of ``count`` 1x1 frames, built by hand (Pillow would merge identical frames)."""
    header = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    frame = b",\x00\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x02\x02\x44\x01\x00"
    return header + frame * count + b";"


def decode_error(
    value: str, *, field: str = "init_images[0]", limits: ImageLimits = LIMITS
) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_base64_image(value, field=field, limits=limits)
    err = info.value
    assert err.field == field
    assert field in err.message
    return err


# -- decoding: what must work --------------------------------------------------------------------------


def test_decodes_raw_base64_png() -> None:
    image = decode_base64_image(
        b64(save(Image.new("RGB", (8, 6), (10, 20, 30)), "PNG")), field="f", limits=LIMITS
    )
    assert (image.mode, image.size, image.getpixel((0, 0))) == ("RGB", (8, 6), (10, 20, 30))
    image.getpixel((7, 5))  # loaded and independent of the source bytes


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: "data:image/png;base64," + s,
        lambda s: "DATA:image/png;name=x.png;base64," + s,
        lambda s: "data:application/octet-stream;base64," + s,
        lambda s: "  " + s + "\n",
        lambda s: "\n".join(s[i : i + 76] for i in range(0, len(s), 76)),  # MIME line breaks
        lambda s: s.rstrip("="),  # missing padding
        lambda s: s.replace("+", "-").replace("/", "_"),  # URL-safe alphabet
    ],
    ids=[
        "data-uri",
        "data-uri-params",
        "data-uri-other-type",
        "whitespace",
        "mime-lines",
        "no-padding",
        "urlsafe",
    ],
)
def test_accepted_encodings(wrap) -> None:  # type: ignore[no-untyped-def]
    image = Image.effect_noise((33, 17), 64).convert("RGB")  # noise: base64 with + and / and padding
    raw = b64(save(image, "PNG"))
    decoded = decode_base64_image(wrap(raw), field="f", limits=LIMITS)
    assert decoded.size == (33, 17)
    assert decoded.tobytes() == image.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_default_format_decodes(fmt: str) -> None:
    image = decode_base64_image(b64(save(Image.new("RGB", (5, 4), "red"), fmt)), field="f", limits=LIMITS)
    assert image.size == (5, 4) and image.mode == "RGB"


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1)])
def test_one_pixel_wide_images_are_fine(size: tuple[int, int]) -> None:
    image = decode_base64_image(b64(save(Image.new("RGB", size), "PNG")), field="f", limits=LIMITS)
    assert image.size == size


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    image = decode_base64_image(b64(save(rgba, "PNG")), field="f", limits=LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (255, 0, 0)


def test_palette_transparency_is_flattened() -> None:
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 0, 255, 0])
    p.putpixel((1, 0), 1)
    image = decode_base64_image(b64(save(p, "PNG", transparency=0)), field="f", limits=LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 255, 0)


def test_mask_mode_uses_alpha_when_not_opaque() -> None:
    strokes = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    strokes.putpixel((1, 0), (0, 0, 0, 255))  # an opaque black stroke on a transparent canvas
    mask = decode_base64_image(b64(save(strokes, "PNG")), field="mask", limits=LIMITS, mode="L")
    assert mask.mode == "L"
    assert (mask.getpixel((0, 0)), mask.getpixel((1, 0))) == (0, 255)


def test_mask_mode_uses_luminance_when_opaque() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 255, 255, 255))
    mask = decode_base64_image(b64(save(rgba, "PNG")), field="mask", limits=LIMITS, mode="L")
    assert (mask.getpixel((0, 0)), mask.getpixel((1, 0))) == (0, 255)
    rgb_mask = decode_base64_image(
        b64(save(Image.new("RGB", (1, 1), "white"), "PNG")), field="m", limits=LIMITS, mode="L"
    )
    assert rgb_mask.getpixel((0, 0)) == 255


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (4, 2), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_base64_image(b64(save(image, "JPEG", exif=exif)), field="f", limits=LIMITS)
    assert decoded.size == (2, 4)


def test_sixteen_bit_grayscale_keeps_its_brightness() -> None:
    data = save(Image.new("I;16", (2, 2), 0x8000), "PNG")
    rgb = decode_base64_image(b64(data), field="f", limits=LIMITS)
    assert rgb.getpixel((0, 0)) == (128, 128, 128)
    assert decode_base64_image(b64(data), field="m", limits=LIMITS, mode="L").getpixel((0, 0)) == 128


def test_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (3, 3), c) for c in ("red", "green", "blue")]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert decode_base64_image(b64(data), field="f", limits=LIMITS).getpixel((1, 1)) == (255, 0, 0)
    apng = save(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert decode_base64_image(b64(apng), field="f", limits=LIMITS).getpixel((1, 1)) == (255, 0, 0)


def test_frame_limit_is_inclusive() -> None:
    data = gif_with_frames(10)
    assert (
        getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 10
    )  # the hand-built GIF is what Pillow sees too
    decode_image_bytes(data, field="f", limits=ImageLimits(max_frames=10))
    with pytest.raises(InvalidRequest, match="more than 9 frames"):
        decode_image_bytes(data, field="f", limits=ImageLimits(max_frames=9))


def test_gif_frame_count_matches_pillow_with_extensions_and_local_palettes() -> None:
    frames = [Image.new("P", (4, 4), i % 3) for i in range(7)]
    for i, frame in enumerate(frames):
        frame.putpalette([i * 30, 0, 0] * 3 + [0, 255, 0])
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"x" * 600, duration=50)
    expected = getattr(Image.open(io.BytesIO(data)), "n_frames", 1)
    decode_image_bytes(data, field="f", limits=ImageLimits(max_frames=expected))
    with pytest.raises(InvalidRequest):
        decode_image_bytes(data, field="f", limits=ImageLimits(max_frames=expected - 1))


def test_url_seam() -> None:
    png = save(Image.new("RGB", (3, 2)), "PNG")
    calls: list[tuple[str, int]] = []

    def fetch(url: str, max_bytes: int) -> bytes:
        calls.append((url, max_bytes))
        return png

    image = decode_base64_image("https://example.com/cat.png", field="f", limits=LIMITS, fetch_url=fetch)
    assert image.size == (3, 2)
    assert calls == [("https://example.com/cat.png", LIMITS.max_bytes)]
    with pytest.raises(PayloadTooLarge):
        decode_base64_image("http://x/y", field="f", limits=ImageLimits(max_bytes=10), fetch_url=fetch)


def test_allowed_formats_are_configurable() -> None:
    bmp = b64(save(Image.new("RGB", (2, 2)), "BMP"))
    err = decode_error(bmp, limits=ImageLimits(formats=frozenset({"PNG"})))
    assert "PNG" in err.message


# -- decoding: what must be refused ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_claiming(20000, 20000), "too large"),  # Pillow's own bomb check, translated
        (png_claiming(5000, 5000), "pixels"),  # under Pillow's limit, over ours
        (png_claiming(9000, 1), "8192"),
        (png_claiming(1, 9000), "8192"),
        (png_claiming(0, 10), "valid image"),  # Pillow refuses these itself
        (png_claiming(10, 0), "valid image"),
        (gif_with_frames(1001), "frames"),
        (gif_with_frames(200_000), "frames"),  # millions would fit in max_bytes; we stop counting early
        (random.Random(0).randbytes(2000), "accepted format"),
        (b"GIF89a", "image"),
        (b"\x89PNG\r\n\x1a\n", "image"),
    ],
    ids=[
        "20000x20000",
        "5000x5000",
        "too-wide",
        "too-tall",
        "zero-width",
        "zero-height",
        "1001-frames",
        "200k-frames",
        "random-bytes",
        "gif-header-only",
        "png-signature-only",
    ],
)
def test_hostile_images(data: bytes, message: str) -> None:
    before = Image.MAX_IMAGE_PIXELS
    err = decode_error(b64(data), field="init_images[0]")
    assert type(err) is InvalidRequest
    assert message in err.message
    assert before == Image.MAX_IMAGE_PIXELS  # nothing global was changed


def test_animated_png_and_webp_frame_limits() -> None:
    frames = [Image.new("RGB", (2, 2), (i * 40, 0, 0)) for i in range(4)]
    limits = ImageLimits(max_frames=3)
    for fmt in ("PNG", "WEBP"):
        data = save(frames[0], fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(InvalidRequest, match="4 frames"):
            decode_image_bytes(data, field="f", limits=limits)


def test_truncated_jpeg() -> None:
    data = save(Image.effect_noise((128, 128), 80).convert("RGB"), "JPEG", quality=95)
    err = decode_error(b64(data[: len(data) * 2 // 3]), field="image")
    assert "truncated" in err.message or "corrupt" in err.message


def test_truncated_png() -> None:
    data = save(Image.effect_noise((64, 64), 80).convert("RGB"), "PNG")
    decode_error(b64(data[: len(data) // 2]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("====", "empty"),
        ("not base64 at all!", "base64"),
        ("QUJD\x00REVG", "base64"),
        ("A", "truncated"),
        ("QUJD=REVG", "base64"),  # padding in the middle
        ("ab+c-d__", "alphabets"),  # mixed standard and URL-safe
        ("QUJDREVG€", "non-ASCII"),
        ("data:image/png,iVBORw0KGgo=", "data URI"),  # not base64-encoded
        ("data:image/png;base64", "data URI"),  # no comma
        ("http://example.com/x.png", "URLs are not enabled"),
        ("HTTPS://example.com/x.png", "URLs are not enabled"),
        ("QUJDREVG", "accepted format"),  # valid base64, not an image
    ],
)
def test_bad_strings(value: str, message: str) -> None:
    err = decode_error(value, field="mask")
    assert type(err) is InvalidRequest
    assert message in err.message


def test_non_string_value() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_base64_image(123, field="mask", limits=LIMITS)  # type: ignore[arg-type]
    assert info.value.field == "mask"


def test_huge_base64_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded a payload that was too large")

    monkeypatch.setattr(base64, "b64decode", boom)
    huge = "A" * (45 * 1024 * 1024)  # ~34 MiB decoded, over the 32 MiB default
    with pytest.raises(PayloadTooLarge) as info:
        decode_base64_image(huge, field="init_images[0]", limits=LIMITS)
    assert info.value.field == "init_images[0]"
    assert info.value.status_code == 413
    # just over a small limit, past the cheap bound: the exact check catches it
    with pytest.raises(PayloadTooLarge):
        decode_base64_bytes("A" * 1368, field="f", limits=ImageLimits(max_bytes=1024))


def test_byte_limit_is_exact() -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    assert decode_base64_bytes(b64(data), field="f", limits=ImageLimits(max_bytes=1024)) == data
    with pytest.raises(PayloadTooLarge):
        decode_base64_bytes(b64(data), field="f", limits=ImageLimits(max_bytes=1023))
    with pytest.raises(PayloadTooLarge):
        decode_image_bytes(data, field="f", limits=ImageLimits(max_bytes=1023))


# -- encoding and reading metadata back ---------------------------------------------------------------


def test_encode_png_round_trip() -> None:
    data = encode_png(Image.new("RGB", (8, 8)), INFOTEXT)
    assert data.startswith(b"\x89PNG")
    assert read_png_info(data) == (INFOTEXT, {})
    assert Image.open(io.BytesIO(data)).info["parameters"] == INFOTEXT


def test_encode_png_non_latin1_uses_itxt() -> None:
    text = "猫 🐱, ünïcödé\nSteps: 1, Seed: 2, Sampler: Euler"
    data = encode_png(Image.new("RGB", (2, 2)), text)
    assert b"iTXt" in data
    info, items = read_png_info(data)
    assert info == text and items == {}


def test_encode_png_without_infotext_and_with_extra_info() -> None:
    assert read_png_info(encode_png(Image.new("L", (2, 2)))) == ("", {})
    data = encode_png(Image.new("RGB", (2, 2)), "x", extra_info={"Software": "sdgate"})
    assert read_png_info(data) == ("x", {"Software": "sdgate"})


def test_image_to_base64_png() -> None:
    value = image_to_base64_png(Image.new("RGB", (4, 4)), INFOTEXT)
    assert not value.startswith("data:")
    data = base64.b64decode(value, validate=True)
    assert read_png_info(data)[0] == INFOTEXT
    assert image_to_base64_png(Image.new("RGB", (1, 1)))  # no infotext is fine


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_jpeg_and_webp_carry_infotext_in_exif(fmt: str) -> None:
    text = "ünïcödé cat\nSteps: 20, Sampler: Euler, Seed: 1"
    data = encode_image(Image.new("RGBA", (4, 4)), text, format=fmt)  # type: ignore[arg-type]
    assert Image.open(io.BytesIO(data)).format == fmt
    info, items = read_png_info(data)
    assert info == text
    assert "exif" not in items and "jfif" not in items


def test_encode_image_png_and_unknown_format() -> None:
    assert read_png_info(encode_image(Image.new("RGB", (2, 2)), "p"))[0] == "p"
    with pytest.raises(ValueError):
        encode_image(Image.new("RGB", (2, 2)), format="TIFF")  # type: ignore[arg-type]


def test_exif_user_comment_wins_over_parameters() -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + "from exif".encode("utf-16-be")
    pnginfo = PngInfo()
    pnginfo.add_text("parameters", "from text chunk")
    data = save(Image.new("RGB", (2, 2)), "PNG", pnginfo=pnginfo, exif=exif.tobytes())
    assert b"eXIf" in data
    assert read_png_info(data)[0] == "from exif"


def test_empty_exif_comment_keeps_parameters() -> None:
    exif = Image.Exif()
    exif[0x010F] = "camera maker"
    pnginfo = PngInfo()
    pnginfo.add_text("parameters", "from text chunk")
    data = save(Image.new("RGB", (2, 2)), "PNG", pnginfo=pnginfo, exif=exif)
    assert read_png_info(data)[0] == "from text chunk"


def test_gif_comment() -> None:
    data = save(Image.new("P", (2, 2)), "GIF", comment="gif prömpt, Steps: 3".encode())
    info, items = read_png_info(data)
    assert info == "gif prömpt, Steps: 3"
    assert items["comment"] == "gif prömpt, Steps: 3"  # A1111 leaves it in items too
    assert "background" not in items and "version" in items


def test_ignored_keys_are_dropped_and_others_kept() -> None:
    image = Image.new("RGB", (2, 2))
    image.info.update(
        {
            "parameters": "p",
            "dpi": (72, 72),
            "jfif": 257,
            "icc_profile": b"xx",
            "Software": "thing",
            "raw": b"\xff\xfebytes",
            "gamma": 0.45455,
            "aspect": (1, 1),
        }
    )
    info, items = read_image_info(image)
    assert info == "p"
    assert items == {"Software": "thing", "raw": "\ufffd\ufffdbytes", "gamma": "0.45455"}


def test_text_chunk_after_image_data_is_found() -> None:
    png = save(Image.new("RGB", (4, 4)), "PNG")
    end = png.rindex(b"IEND") - 4
    late = png[:end] + png_chunk(b"tEXt", b"parameters\x00written late, Steps: 1") + png[end:]
    assert read_png_info(late)[0] == "written late, Steps: 1"


def test_novelai_png_is_converted() -> None:
    pnginfo = PngInfo()
    pnginfo.add_text("Software", "NovelAI")
    pnginfo.add_text("Description", "1girl, masterpiece")
    pnginfo.add_text(
        "Comment",
        json.dumps({"uc": "lowres", "steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 42}),
    )
    info, items = read_png_info(save(Image.new("RGB", (64, 32)), "PNG", pnginfo=pnginfo))
    assert info == (
        "1girl, masterpiece\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 42, Size: 64x32, Clip skip: 2, ENSD: 31337"
    )
    assert items["Software"] == "NovelAI"


def test_read_png_info_without_metadata_and_errors() -> None:
    assert read_png_info(save(Image.new("RGB", (2, 2)), "JPEG")) == ("", {})  # jfif*, dpi: ignored
    with pytest.raises(InvalidRequest) as info:
        read_png_info(b"definitely not an image", field="image")
    assert info.value.field == "image"
    with pytest.raises(PayloadTooLarge):
        read_png_info(b"x" * 11, limits=ImageLimits(max_bytes=10))


def test_read_png_info_of_a_bomb_still_reads_metadata_without_decoding() -> None:
    pnginfo = PngInfo()
    pnginfo.add_text("parameters", "big")
    png = save(Image.new("RGB", (1, 1)), "PNG", pnginfo=pnginfo)
    ihdr = struct.pack(">II", 5000, 5000) + png[24:29]
    claimed = png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]
    assert read_png_info(claimed)[0] == "big"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"UNICODE\x00" + "héllo, 猫".encode("utf-16-be"), "héllo, 猫"),
        (b"UNICODE\x00" + "little endian".encode("utf-16-le"), "little endian"),
        (b"UNICODE\x00" + "with bom".encode("utf-16"), "with bom"),
        (b"ASCII\x00\x00\x00plain", "plain"),
        (b"JIS\x00\x00\x00\x00\x00" + "日本".encode("shift_jis"), "日本"),
        (b"\x00" * 8 + "utf-8 ü".encode(), "utf-8 ü"),
        ("no header ü".encode(), "no header ü"),
        (b"UNICODE\x00" + "padded".encode("utf-16-be") + b"\x00\x00", "padded"),
        (b"", ""),
    ],
)
def test_decode_user_comment(raw: bytes, text: str) -> None:
    assert decode_user_comment(raw) == text
