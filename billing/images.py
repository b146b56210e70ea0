"""Image inputs (``image``, ``mask``) checked and normalised before anything is stored or
charged: a client's bytes are untrusted, so they are decoded once, here, and only a clean
PNG re-encoded from the pixels is kept.

- The format is read from the magic bytes, never from a file name or Content-Type, and
  each format is opened by its own decoder only: PNG, JPEG and WebP.
- Decompression bombs are refused from the header, before any pixel is decoded, by our
  own limits (Pillow's ``MAX_IMAGE_PIXELS`` is process-wide and only warns below twice
  its value).
- Truncated or corrupt data fails the full decode (``ImageFile.LOAD_TRUNCATED_IMAGES``
  must stay False, its default: with it set, truncated images decode as grey).
- The EXIF orientation is applied, so the stored pixels and the reported size are upright.
- Transparency: an ``image`` is composited onto white and stored RGB (the pipelines take
  RGB); a ``mask`` is composited onto black and stored as its luminance, mode ``L``:
  white = repaint, black = keep, grey in between; transparent pixels keep.
- No metadata is stored: EXIF (GPS, camera serial numbers), XMP, text chunks and ICC
  profiles are dropped. Dropping the ICC profile without converting leaves wide-gamut
  pixels as they are, read as sRGB: a small colour shift, traded for not parsing
  arbitrary colour profiles.

Decoding is CPU-bound (about a second for the largest images): call :func:`decode_image`
in a worker thread from async code (``asyncio.to_thread``). It changes no global state.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import struct
from dataclasses import dataclass
from typing import Final, Literal

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from billing.errors import BadUserInput

Role = Literal["image", "mask"]

MAX_BYTES: Final = 16 * 1024 * 1024
MAX_MEGAPIXELS: Final = 16.0
# FLUX works at up to about 2 MP; a side this long is already a resize away from that,
# and capping each side also caps a thin image that a megapixel limit would let through.
MAX_SIDE: Final = 8192
STORED_MIME: Final = "image/png"

_PNG = b"\x89PNG\r\n\x1a\n"
# Each accepted format opened by its own decoder: a file cannot pass the sniff as one
# format and then be decoded as another.
_DECODERS: Final[dict[str, type[ImageFile.ImageFile]]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WebP": WebPImagePlugin.WebPImageFile,
}
# Names of what a refused upload is, when it is recognisable, for the error message.
_OTHER_SIGNATURES: Final = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF-", "PDF"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
)
_ISO_BRANDS: Final = {
    b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class InputImage:
    """An accepted input, normalised: ``data`` is what is stored (a metadata-free PNG)."""

    role: Role
    data: builtins.bytes
    mime: str
    width: int
    height: int
    sha256: str
    """Hex digest of ``data``."""
    bytes: int
    """``len(data)``."""


def sniff(data: builtins.bytes) -> str | None:
    """``"PNG"``, ``"JPEG"`` or ``"WebP"`` from the magic bytes, else None."""
    if data.startswith(_PNG):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def describe(data: builtins.bytes) -> str | None:
    """What refused data looks like ("GIF", "SVG", "HTML", "text"), or None."""
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _ISO_BRANDS.get(data[8:12], "an MP4/QuickTime file")
    head = data[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 1024th byte is still text.
        if exc.start < len(head) - 3:
            return None
        text = head[: exc.start].decode("utf-8")
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith("<svg") or (start.startswith("<?xml") and "<svg" in start):
        return "SVG"
    if start.startswith(("<!doctype html", "<html")) or "<html" in start:
        return "HTML"
    if start.startswith("<?xml"):
        return "XML"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return "text"
    return None


def _dims(width: int, height: int) -> str:
    return f"{width}\N{MULTIPLICATION SIGN}{height}"


def format_size(size: int) -> str:
    """``16 MB``, ``1.5 KB``, ``100 bytes``: a byte limit as messages state it."""
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{round(size / scale, 1):g} {unit}"
    return f"{size} bytes"


def _webp_canvas(data: builtins.bytes) -> tuple[int, int] | None:
    """The canvas size in a WebP header. Needed before opening: libwebp's decoder
    allocates the whole canvas when it is created, before Pillow can report a size."""
    chunk = data[12:16]
    try:
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", data, 26)
            return width & 0x3FFF, height & 0x3FFF
        if chunk == b"VP8L" and data[20] == 0x2F:
            (bits,) = struct.unpack_from("<I", data, 21)
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return width, height
    except (struct.error, IndexError):
        return None
    return None


def _check_size(field: str, width: int, height: int, max_megapixels: float, max_side: int) -> None:
    if width < 1 or height < 1:
        raise BadUserInput(field, f"{field} is {_dims(width, height)}: it has no pixels")
    megapixels = width * height / 1_000_000
    if megapixels > max_megapixels:
        raise BadUserInput(
            field,
            f"{field} is {_dims(width, height)} ({megapixels:.1f} MP); "
            f"at most {max_megapixels:.1f} MP",
        )
    if max(width, height) > max_side:
        raise BadUserInput(
            field, f"{field} is {_dims(width, height)}; each side must be at most {max_side} px"
        )


def _decode(
    field: str, data: builtins.bytes, kind: str, max_megapixels: float
) -> ImageFile.ImageFile:
    """Open with the format's own decoder, check the header size, then decode fully."""
    if kind == "WebP" and (canvas := _webp_canvas(data)) is not None:
        _check_size(field, *canvas, max_megapixels, MAX_SIDE)
    try:
        image = _DECODERS[kind](io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadUserInput(field, f"{field} is too large to decode") from None
    except Exception:  # any failure to parse an untrusted header is the input's fault
        raise BadUserInput(field, f"{field} is truncated or corrupt") from None
    # Image.open's lazy header read, without its process-wide bomb check: ours comes first.
    _check_size(field, image.width, image.height, max_megapixels, MAX_SIDE)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The warning arrives as an exception only where warnings are errors (tests);
        # either way our own limit is lower, so this is a defence, not the check.
        raise BadUserInput(field, f"{field} is too large to decode") from None
    except Exception:  # truncated streams, bad Huffman tables, CRC errors, ...
        raise BadUserInput(field, f"{field} is truncated or corrupt") from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF is common (cameras, editors): keep the pixels as stored
        return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _flatten(image: Image.Image, role: Role) -> Image.Image:
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit and float greyscale: scale to 8 bits (convert() would clip at 255).
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    background = (255, 255, 255, 255) if role == "image" else (0, 0, 0, 255)
    if _has_alpha(image):
        canvas = Image.new("RGBA", image.size, background)
        canvas.alpha_composite(image.convert("RGBA"))
        image = canvas
    return image.convert("RGB" if role == "image" else "L")


def decode_image(
    data: builtins.bytes,
    *,
    field: str,
    role: Role = "image",
    max_bytes: int = MAX_BYTES,
    max_megapixels: float = MAX_MEGAPIXELS,
) -> InputImage:
    """Check an uploaded image and normalise it (see the module's docstring);
    :class:`BadUserInput` naming ``field`` says what is wrong."""
    if not data:
        raise BadUserInput(field, f"{field} is empty")
    if len(data) > max_bytes:
        raise BadUserInput(field, f"{field} is larger than {format_size(max_bytes)}")
    kind = sniff(data)
    if kind is None:
        found = describe(data)
        raise BadUserInput(
            field,
            f"{field} is not a PNG, JPEG or WebP image" + (f" (found {found})" if found else ""),
        )
    with _decode(field, data, kind, max_megapixels) as decoded:
        clean = _flatten(_upright(decoded), role)
    # A new image from convert(), but it carries a copy of the source's info (ICC
    # profile, EXIF, text chunks), which the PNG encoder would write out again.
    clean.info.clear()
    out = io.BytesIO()
    # Level 3: within a few percent of the default's size at under half its time (about
    # 1 s against 2.7 s for a 16 MP photo).
    clean.save(out, "PNG", compress_level=3)
    stored = out.getvalue()
    return InputImage(
        role=role,
        data=stored,
        mime=STORED_MIME,
        width=clean.width,
        height=clean.height,
        sha256=hashlib.sha256(stored).hexdigest(),
        bytes=len(stored),
    )


def check_same_size(image: InputImage, mask: InputImage, *, field: str = "mask") -> None:
    """A mask must cover its image exactly: the pipelines do not resize one to the other."""
    if (mask.width, mask.height) != (image.width, image.height):
        raise BadUserInput(
            field,
            f"{field} is {_dims(mask.width, mask.height)} but image is "
            f"{_dims(image.width, image.height)}; they must be the same size",
        )


def open_image(data: builtins.bytes) -> Image.Image:
    """A stored input (our own PNG from :func:`decode_image`) as a loaded PIL image."""
    with PngImagePlugin.PngImageFile(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
