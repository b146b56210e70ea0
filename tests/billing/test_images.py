"""Image inputs: hostile and broken uploads refused with BAD_USER_INPUT naming the field;
good ones normalised (upright, flattened, metadata-free PNG)."""

# Messages give sizes with the multiplication sign (U+00D7), as clients read them.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageCms, ImageFile, PngImagePlugin

from billing.errors import BadUserInput, ErrorCode
from billing.images import InputImage, check_same_size, decode_image, open_image

SECRET = "SECRET-EXIF-MARKER"


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose IHDR (CRC fixed up) claims another size."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def webp_canvas_claiming(width: int, height: int) -> bytes:
    """A WebP whose VP8X header claims a canvas the decoder would allocate at once."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def half_cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "image is empty"),
    ("random bytes", lambda: random.Random(1).randbytes(4096),
     "image is not a PNG, JPEG or WebP image"),
    ("text", lambda: b"just some words\n", "image is not a PNG, JPEG or WebP image (found text)"),
    ("html", lambda: b"<!DOCTYPE html><html><body>hi</body></html>", "(found HTML)"),
    ("gif", lambda: encode(noise(), "GIF"), "image is not a PNG, JPEG or WebP image (found GIF)"),
    ("bmp", lambda: encode(noise(), "BMP"), "(found BMP)"),
    ("tiff", lambda: encode(noise(), "TIFF"), "(found TIFF)"),
    ("svg", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
     "(found SVG)"),
    ("truncated png", lambda: half_cut(encode(noise(), "PNG")), "image is truncated or corrupt"),
    ("truncated jpeg", lambda: half_cut(encode(noise(), "JPEG")), "image is truncated or corrupt"),
    ("png magic, garbage", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "truncated or corrupt"),
    ("jpeg magic, png body", lambda: b"\xff\xd8\xff" + encode(noise(), "PNG"),
     "truncated or corrupt"),
    ("png claiming 60000x60000", lambda: png_claiming(60000, 60000),
     "image is 60000×60000 (3600.0 MP); at most 16.0 MP"),
    ("png claiming 20000x20000", lambda: png_claiming(20000, 20000),
     "image is 20000×20000 (400.0 MP); at most 16.0 MP"),
    ("png claiming 9000x10", lambda: png_claiming(9000, 10),
     "image is 9000×10; each side must be at most 8192 px"),
    ("png claiming 0x10", lambda: png_claiming(0, 10), "image is truncated or corrupt"),
    ("webp canvas 16384x16384", lambda: webp_canvas_claiming(16384, 16384),
     "image is 16384×16384 (268.4 MP); at most 16.0 MP"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), [(m, s) for _, m, s in BAD], ids=[i for i, *_ in BAD])
def test_bad_input_is_refused_naming_the_field(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        decode_image(make(), field="image")
    assert caught.value.field == "image"
    assert caught.value.extensions == {"code": ErrorCode.BAD_USER_INPUT.value, "field": "image"}
    assert message in caught.value.message


def test_the_field_named_is_the_one_given() -> None:
    with pytest.raises(BadUserInput) as caught:
        decode_image(b"GIF89a....", field="mask", role="mask")
    assert caught.value.field == "mask"
    assert caught.value.message == "mask is not a PNG, JPEG or WebP image (found GIF)"


def test_over_max_bytes() -> None:
    data = encode(noise(), "PNG")
    with pytest.raises(BadUserInput, match=r"^image is larger than 1 KB$"):
        decode_image(data, field="image", max_bytes=1024)
    with pytest.raises(BadUserInput, match=r"^image is larger than 16 MB$"):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(16 * 2**20), field="image")


def test_a_real_compressible_image_over_the_megapixel_cap() -> None:
    data = encode(Image.new("L", (2000, 1000)), "PNG")  # 2 MP, a few kB
    assert len(data) < 10_000
    with pytest.raises(BadUserInput, match=r"^image is 2000×1000 \(2\.0 MP\); at most 1\.5 MP$"):
        decode_image(data, field="image", max_megapixels=1.5)


def test_pillow_bomb_limit_is_neither_relied_on_nor_leaked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    # Our limits decide for PNG and JPEG: Pillow's process-wide one is not consulted ...
    assert decode_image(encode(noise(), "PNG"), field="image").width == 64
    # ... and where Pillow applies it itself (the WebP opener), it is still a clear error.
    with pytest.raises(BadUserInput, match=r"^image is too large to decode$"):
        decode_image(encode(noise(), "WEBP", lossless=True), field="image")


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"lossless": True}), ("WEBP", {})],
    ids=["png", "jpeg", "webp-lossless", "webp-lossy"],
)
def test_good_inputs_decode_to_png(fmt: str, params: dict[str, Any]) -> None:
    result = decode_image(encode(noise(), fmt, **params), field="image")
    assert (result.width, result.height) == (64, 48)
    assert result.role == "image"
    assert result.mime == "image/png"
    assert result.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert result.bytes == len(result.data)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    stored = open_image(result.data)
    assert (stored.mode, stored.size) == ("RGB", (64, 48))


def test_lossless_pixels_survive() -> None:
    source = noise()
    result = decode_image(encode(source, "PNG"), field="image")
    assert open_image(result.data).tobytes() == source.tobytes()
    # Normalising is deterministic, so equal uploads have equal hashes.
    assert decode_image(encode(source, "PNG"), field="image").sha256 == result.sha256


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (64, 48), (255, 0, 0))
    source.paste((0, 0, 255), (0, 24, 64, 48))  # top half red, bottom half blue
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown rotated 90° clockwise
    result = decode_image(encode(source, "JPEG", exif=exif, quality=95), field="image")
    assert (result.width, result.height) == (48, 64)
    upright = open_image(result.data)
    right, left = upright.getpixel((40, 32)), upright.getpixel((8, 32))
    assert isinstance(right, tuple) and isinstance(left, tuple)
    assert right[0] > 200 and right[2] < 50  # the top is now on the right: red
    assert left[2] > 200 and left[0] < 50


def test_metadata_is_not_stored() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = SECRET
    exif[ExifTags.Base.Make] = "Camera"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] = "N"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", SECRET)
    text.add_text("Secret", SECRET, zip=True)
    for data in (
        encode(noise(), "JPEG", exif=exif, icc_profile=icc),
        encode(noise(), "PNG", exif=exif, icc_profile=icc, pnginfo=text),
        encode(noise(), "WEBP", exif=exif, icc_profile=icc),
    ):
        assert SECRET.encode() in data or b"Secret" in data
        stored = decode_image(data, field="image").data
        assert SECRET.encode() not in stored
        for chunk in (b"eXIf", b"iCCP", b"tEXt", b"zTXt", b"iTXt"):
            assert chunk not in stored
        reopened = open_image(stored)
        assert not reopened.getexif()
        assert "icc_profile" not in reopened.info


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(mode: str) -> None:
    source = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    source.paste((0, 0, 0, 255), (32, 0, 64, 48))  # left transparent, right opaque black
    if mode == "P":
        # A palette image whose entry 0 is transparent (a tRNS chunk).
        converted = Image.new("P", source.size, 0)
        converted.putpalette([9, 9, 9, 0, 0, 0])
        converted.paste(1, (32, 0, 64, 48))
        data = encode(converted, "PNG", transparency=0)
    else:
        data = encode(source.convert(mode), "PNG")
    result = decode_image(data, field="image")
    stored = open_image(result.data)
    assert stored.mode == "RGB"
    assert stored.getpixel((8, 8)) == (255, 255, 255)
    assert stored.getpixel((40, 8)) == (0, 0, 0)


def test_half_transparent_pixels_blend_with_white() -> None:
    source = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    stored = open_image(decode_image(encode(source, "PNG"), field="image").data)
    assert stored.getpixel((0, 0)) == (127, 127, 127)


def test_a_mask_is_single_channel_luminance() -> None:
    source = Image.new("RGB", (64, 48), (255, 255, 255))
    source.paste((0, 0, 0), (32, 0, 64, 48))
    result = decode_image(encode(source, "PNG"), field="mask", role="mask")
    assert result.role == "mask"
    stored = open_image(result.data)
    assert stored.mode == "L"
    assert (stored.getpixel((8, 8)), stored.getpixel((40, 8))) == (255, 0)


def test_a_masks_transparent_pixels_keep() -> None:
    # White strokes painted on a transparent layer: the strokes repaint, the rest keeps.
    source = Image.new("RGBA", (64, 48), (255, 255, 255, 0))
    source.paste((255, 255, 255, 255), (0, 0, 16, 48))
    stored = open_image(decode_image(encode(source, "PNG"), field="mask", role="mask").data)
    assert stored.mode == "L"
    assert (stored.getpixel((8, 8)), stored.getpixel((40, 8))) == (255, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    source = Image.new("I;16", (8, 8), 40000)
    stored = open_image(decode_image(encode(source, "PNG"), field="image").data)
    assert stored.getpixel((0, 0)) == (156, 156, 156)


def test_cmyk_jpeg_is_stored_rgb() -> None:
    source = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    stored = open_image(decode_image(encode(source, "JPEG"), field="image").data)
    pixel = stored.getpixel((0, 0))
    assert stored.mode == "RGB" and isinstance(pixel, tuple)
    assert pixel[0] > 200 and pixel[1] < 50


def test_truncated_images_stay_refused_globally() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _image(width: int, height: int, role: str = "image") -> InputImage:
    data = encode(Image.new("RGB", (width, height)), "PNG")
    return decode_image(data, field=role, role="mask" if role == "mask" else "image")


def test_mask_must_match_the_image_size() -> None:
    image = _image(1024, 768)
    check_same_size(image, _image(1024, 768, "mask"))
    with pytest.raises(BadUserInput) as caught:
        check_same_size(image, _image(512, 512, "mask"))
    assert caught.value.field == "mask"
    assert caught.value.message == (
        "mask is 512×512 but image is 1024×768; they must be the same size"
    )
