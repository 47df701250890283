"""Image preprocessing: decoding (with the PNG chunk merge), the transforms of a Hugging Face image
processor, and the decode pool's helpers. Torch-free, shared by training, export validation, the
engine and Triton's preprocess model, so the served model sees exactly what the trained one saw.

Decoding rules (docs/engine.md, "Preprocessing"): EXIF orientation applied; first frame of animations and multi-page
files; alpha (RGBA, LA, PA; P, RGB and L with a PNG transparency chunk) composited on white; 16-bit
images scaled to 8 bits by the 16-bit range (``x * 255 / 65535``) and float images by their data range
(``(x - min) * 255 / (max - min)``), never clipped; any other mode converted to RGB.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fusionrt.cpu import usable_cores
from fusionrt.errors import InputError

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_TIFF_IMAGE_WIDTH, _TIFF_IMAGE_LENGTH = 256, 257  # TIFF 6.0 baseline tags
_PIL_LOAD_LOCK = threading.Lock()
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Image files larger than this are identified from their header before being read whole
# (a camera JPEG is 3-12 MB; a file this large that is no image would be read for nothing).
_PROBE_FILE_BYTES = 32 << 20
# The pixel_values an image graph takes, by dtype (the graph's input in the manifest says which):
# float32 (batch, 3, H, W) rescaled and normalized, as Hugging Face image processors give them;
# uint8 (batch, H, W, 3) as decoded, the graph rescales, normalizes and transposes them itself
# (docs/export.md, "Pixels as uint8"): 4x fewer bytes, and the crop is one copy of the decoded rows.
PIXEL_LAYOUTS = {"float32": "NCHW", "uint8": "NHWC"}
_U32 = struct.Struct(">I")
# What Pillow's getexif reads a PNG's orientation from (before or after the pixels): an eXIf chunk,
# ImageMagick's "Raw profile type exif" text chunk, XMP's tiff:Orientation (iTXt "XML:com.adobe.xmp").
_PNG_ORIENTATION_KEYS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")


def coalesce_png_idat(data: bytes) -> bytes:
    """Return PNG bytes whose consecutive ``IDAT`` chunks are merged into one; other input as is.

    The PNG specification (ISO/IEC 15948, W3C PNG 2nd edition, 11.2.4 "IDAT Image data") has the
    ``IDAT`` chunks consecutive and the compressed datastream the concatenation of their data
    fields, so one chunk holding that concatenation (its CRC-32 recomputed) decodes to the same
    pixels. Why: Pillow inflates each chunk in a separate call that releases and retakes the GIL
    and walks the chunks in Python; encoders write 8 KiB chunks, so a 512x512 photo is ~100 GIL
    round trips, and two decoding threads keep waiting on each other (docs/performance-notes.md,
    "Image decoding").

    Args:
        data: encoded image bytes, any bytes-like object (any format; only a PNG whose chunk
            structure is intact is rewritten).

    Returns:
        ``bytes``: the rewritten PNG, or ``data`` itself (as ``bytes``) when it is not a PNG, has
        fewer than two ``IDAT`` chunks, has them apart, or a chunk runs past the end. Chunk CRCs
        and the zlib stream are not checked here: Pillow decodes and reports them, and
        :func:`load_image` falls back to the unmerged bytes when the merged ones fail (Pillow stops
        inflating at the last row, so a damaged zlib tail in a later chunk decoded unmerged).

    Raises:
        TypeError: ``data`` is not a bytes-like object.
    """
    if not isinstance(data, bytes):
        data = bytes(memoryview(data))  # memoryview: bytes(3) would be three zero bytes
    if not data.startswith(_PNG_SIGNATURE):
        return data
    view = memoryview(data)
    end = len(data)
    pos, first, last, payloads = 8, -1, -1, []
    while pos + 12 <= end:
        (length,) = _U32.unpack_from(data, pos)
        nxt = pos + 12 + length
        if nxt > end:
            return data  # truncated chunk
        kind = view[pos + 4 : pos + 8]
        if kind == b"IDAT":
            if first < 0:
                first = pos
            elif last != pos:
                return data  # IDAT chunks apart: not a valid PNG, leave it to Pillow
            payloads.append(view[pos + 8 : pos + 8 + length])
            last = nxt
        elif kind == b"IEND":
            break  # whatever follows is not read by Pillow either
        pos = nxt
    else:
        if pos != end:
            return data  # a truncated chunk header
    if len(payloads) < 2:
        return data
    size = sum(len(p) for p in payloads)
    if size > 0x7FFFFFFF:
        return data
    crc = zlib.crc32(b"IDAT")
    for p in payloads:
        crc = zlib.crc32(p, crc)
    return b"".join([view[:first], _U32.pack(size), b"IDAT", *payloads, _U32.pack(crc), view[last:]])


def _open(image: Any, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open any supported image-like object as a PIL image (not yet converted).

    ``draft_size``: ``(width, height)``; let Pillow's JPEG decoder scale down by 1/2, 1/4 or 1/8
    while decoding, keeping the width and height, EXIF orientation applied, at least this many
    pixels (much faster for large photos).
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            data = bytes(image)
        except ValueError as exc:  # a released memoryview
            raise InputError(f"image bytes cannot be read: {exc}") from None
        if not data:
            raise InputError("image is empty (0 bytes); expected encoded JPEG/PNG/GIF/TIFF/WebP/BMP bytes")
        name = f"<{len(data)} bytes>"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(not_an_image_file_reason(image))
        name, data = str(path), None
    else:
        raise InputError(
            f"unsupported image type {type(image).__name__}; expected a path, encoded bytes, "
            "a PIL.Image.Image or an HxWxC uint8 numpy array"
        )
    try:
        if data is None:
            data = _read_image_file(path)
        try:
            img = _decode(coalesce_png_idat(data), draft_size, whole=True)
        except (OSError, SyntaxError, ValueError):
            # Decide with Pillow's own path: it stops inflating at the last row, so a PNG whose
            # damaged zlib tail sits in a later IDAT chunk decodes there but not when merged.
            img = _decode(data, draft_size, whole=False)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(_bomb_message(name, exc)) from None
    except UnidentifiedImageError:
        raise InputError(f"image {name} is not a decodable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image {name} could not be decoded: {exc}") from None
    return img


def _read_image_file(path: Path) -> bytes:
    """All bytes of an image file (Pillow would read them all too; in memory they decode in one
    piece). A file over :data:`_PROBE_FILE_BYTES` is first opened lazily, which reads its header
    only, so that a video or disk image named ``.jpg`` is refused without being read whole.

    Raises:
        InputError: the file cannot be read, or is empty; what ``Image.open`` raises, for a large
            file that is no image or over the decompression-bomb limit.
    """
    if path.stat().st_size > _PROBE_FILE_BYTES:
        with Image.open(path):
            pass
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"image file {path} cannot be read: {exc}") from None
    if not data:
        raise InputError(f"image file {path} is empty (0 bytes)")
    return data


def _bomb_message(name: str, exc: Exception) -> str:
    """The refusal of an image over ``PIL.Image.MAX_IMAGE_PIXELS``. Pillow's own (over twice the
    limit) says "Image size (N pixels) exceeds limit of 2 x MAX_IMAGE_PIXELS": its N only is kept,
    so that one limit is named."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return (f"image {name} has {f'{found.group(1)} pixels' if found else exc}, over Pillow's decompression-bomb limit "
            f"of {Image.MAX_IMAGE_PIXELS} pixels; if you trust the source, raise PIL.Image.MAX_IMAGE_PIXELS before calling fusionrt")


def not_an_image_file_reason(image: str | os.PathLike) -> str:
    """Why ``image``, a path that is not a regular file, cannot be read as an image: an empty
    path, a folder, a special file, a URL, or not found (the message the Engine, training data and
    the Triton client give). Raises nothing."""
    path, text = Path(image), os.fspath(image)
    if not text:
        return "image path is an empty string"
    if path.is_dir():
        return f"image path {path} is a folder, not an image file"
    if path.exists():
        return f"image path {path} is not a regular file"
    if str(text).lower().startswith(("http://", "https://", "s3://", "gs://", "file://")):
        return f"image path {text} is a URL; fusionrt reads local files and bytes only: download it first"
    return f"image file not found: {path}"


def _decode(data: bytes, draft_size: tuple[int, int] | None, whole: bool) -> Image.Image:
    """Open and load encoded bytes; ``whole``: feed the decoder all of them in one call."""
    limit = Image.MAX_IMAGE_PIXELS
    img = Image.open(io.BytesIO(data))
    if whole:
        # Pillow's default is 64 KiB blocks, each a GIL round trip; the bytes are in memory already.
        img.decodermaxblock = max(len(data), img.decodermaxblock)
    # Pillow raises over twice MAX_IMAGE_PIXELS and only warns between 1x and 2x: the size check
    # refuses both (a warnings filter would not be thread-safe, and images are decoded in a pool).
    if limit and img.size[0] * img.size[1] > limit:
        raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]} pixels")
    if draft_size and img.format == "JPEG":
        if draft_size[0] != draft_size[1] and _orientation(img) in (5, 6, 7, 8):
            draft_size = draft_size[::-1]  # stored transposed: the decoder's width is the displayed height
        scale = jpeg_draft_scale(img.size, draft_size)
        if scale > 1:
            # Pillow picks the largest of 8, 4, 2 that divides both requested sides into the image's.
            img.draft("RGB", (img.size[0] // scale, img.size[1] // scale))
    img.load()
    return img


def jpeg_draft_scale(size: tuple[int, int], min_size: tuple[int, int]) -> int:
    """The JPEG decoder's downscale (1, 2, 4 or 8: libjpeg's DCT scaling, which gives
    ``ceil(side / scale)`` pixels) that keeps the width and height of ``size`` (width, height)
    >= those of ``min_size`` (width, height; ``(S, S)`` keeps the short side >= S): the largest
    such, so the decoder does the least work."""
    return next((s for s in (8, 4, 2) if -(-size[0] // s) >= min_size[0] and -(-size[1] // s) >= min_size[1]), 1)


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(
            f"image array has dtype {array.dtype}; expected uint8 (HxWxC, values 0-255). "
            "Scale float images to 0-255 and cast with .astype(np.uint8)"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"image array has shape {tuple(array.shape)}; expected HxW or HxWxC with C in (1, 3, 4)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image array has shape {tuple(array.shape)}; height and width must be >= 1")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(array if mode != "L" else array[:, :, 0]), mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    keyed = "transparency" in img.info  # a PNG's tRNS chunk: transparent palette entries, or one RGB colour / grey level
    if mode == "RGB" and not keyed:
        return img
    palette_alpha = mode == "P" and getattr(img.palette, "mode", None) == "RGBA"
    if palette_alpha or (keyed and mode in ("P", "RGB", "L")):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        # Composite on white. paste() with the alpha as mask gives the same bytes as
        # Image.alpha_composite on an opaque white background (tested for every value and alpha),
        # is faster and releases the GIL, which alpha_composite does not (the decode pool).
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # Pillow converts La only to LA
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode.startswith("I;16") or mode in ("I", "F"):
        data = np.asarray(img, dtype=np.float64)
        if mode == "F" or (mode == "I" and (data.min() < 0 or data.max() > 65535)):
            if not np.isfinite(data).all():
                raise InputError("image has NaN or Inf pixel values")
            lo, hi = float(data.min()), float(data.max())
        else:
            lo, hi = 0.0, 65535.0
        scaled = (data - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(data)
        gray = np.rint(scaled).astype(np.uint8)
        if keyed and isinstance(img.info["transparency"], int):  # a 16-bit grey PNG's transparent level
            gray[data == img.info["transparency"]] = 255  # composited on white, like every transparency
        return Image.fromarray(gray, "L").convert("RGB")
    return img.convert("RGB")


def load_image(
    image: ImageLike, draft_short_side: int | None = None, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode one image by fusionrt's rules and return it as an 8-bit RGB PIL image.

    Args:
        image: a file path, encoded bytes (JPEG, PNG, GIF, TIFF, WebP, BMP), a ``PIL.Image.Image``,
            or an ``(H, W)`` / ``(H, W, C)`` uint8 array with C in 1, 3, 4.
        draft_short_side: for JPEG sources, decode directly at a reduced scale whose short side
            stays >= this (Pillow draft mode). Changes pixel values slightly: off unless asked.
        draft_size: ``(width, height)`` in pixels, the same for a JPEG whose width and height (EXIF
            orientation applied) must each stay >= these (a fixed-size resize); overrides
            ``draft_short_side``.

    Returns:
        A ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        InputError: the image is missing, empty, undecodable, over Pillow's decompression-bomb
            limit, or an array of the wrong dtype or shape.
    """
    if draft_size is None and draft_short_side:
        draft_size = (int(draft_short_side), int(draft_short_side))
    img = _open(image, draft_size)
    try:
        if isinstance(image, Image.Image):
            # A caller's lazily opened image may sit in several slots of a batch decoded by a
            # thread pool; Pillow's load() is not thread-safe (two threads read one file).
            with _PIL_LOAD_LOCK:
                img.load()
        if img.tell() != 0:  # a caller's image moved to a later frame (n_frames would parse every frame, damaged ones too)
            img.seek(0)
        if _orientation(img) not in (0, 1):  # exif_transpose copies even when upright
            img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
        rgb.load()
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image could not be decoded: {exc}") from None
    if rgb.width < 1 or rgb.height < 1:
        raise InputError(f"image has size {rgb.size}; width and height must be >= 1")
    return rgb


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_image` would return it (EXIF orientation
    applied), read from the header alone: no pixel is decoded.

    Raises:
        InputError: as :func:`load_image`, for an unreadable image.
    """
    if isinstance(image, np.ndarray):
        if image.ndim < 2:
            raise InputError(f"image array has shape {tuple(image.shape)}; expected HxW or HxWxC")
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, Image.Image):
        return _oriented_size(image)
    if isinstance(image, (str, os.PathLike)):
        source: Any = Path(image)
        if not source.is_file():
            raise InputError(not_an_image_file_reason(image))
        name = str(source)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        try:
            source = io.BytesIO(image)
        except ValueError as exc:  # a released memoryview
            raise InputError(f"image bytes cannot be read: {exc}") from None
        name = f"<{source.getbuffer().nbytes} bytes>"
    else:
        raise InputError(f"unsupported image type {type(image).__name__}; expected a path, encoded bytes, a PIL.Image.Image or a numpy array")
    try:
        with Image.open(source) as img:  # lazy: reads the header
            if img.format == "PNG" and "exif" not in img.info:
                raw = _raw_bytes(source)
                if not any(key in raw for key in _PNG_ORIENTATION_KEYS):
                    return int(img.width), int(img.height)  # no chunk with an orientation: Pillow's getexif would decode it all
            return _oriented_size(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(_bomb_message(name, exc)) from None
    except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as exc:  # SyntaxError: Pillow's plugins on a malformed structure
        raise InputError(f"image could not be read: {exc}") from None


def _raw_bytes(source: Any) -> bytes:
    """The encoded bytes of a path or a ``BytesIO`` (to look for a chunk without decoding)."""
    return source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8; 1 when absent). An EXIF block that is no TIFF structure
    counts as no orientation, in every format: Pillow ignores it in a JPEG, but its ``getexif``
    raised SyntaxError for a PNG or WebP whose pixels decode."""
    try:
        return img.getexif().get(_EXIF_ORIENTATION, 1)
    except SyntaxError:
        return 1


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    if _orientation(img) in (5, 6, 7, 8):  # transposed: width and height swap
        # A TIFF's plugin rotates it while loading and may report the rotated size already (Pillow
        # >= 11 does): start from the stored size its ImageWidth/ImageLength tags hold.
        tags = getattr(img, "tag_v2", {})
        w, h = tags.get(_TIFF_IMAGE_WIDTH, w), tags.get(_TIFF_IMAGE_LENGTH, h)
        w, h = h, w
    return int(w), int(h)


@dataclass(frozen=True)
class ImageProcessor:
    """Resize, center-crop and normalize images, configured by Hugging Face image-processor keys.

    The defaults are ImageNet's (``image_mean``/``image_std`` from torchvision's reference
    training recipe), resize of the shortest edge to 256 then a 224x224 center crop.
    ``resample`` is a Pillow enum int (2 = bilinear).

    ``size`` is ``{"shortest_edge": S}`` (the short side resized to S pixels, the aspect ratio
    kept) or ``{"height": H, "width": W}`` (the whole image resized to exactly H x W, the aspect
    ratio not kept: transformers' ``ViTImageProcessor``, and ``ConvNextImageProcessor`` from 384
    pixels, with ``do_center_crop`` false); with both keys ``shortest_edge`` wins, as in
    transformers' ``BitImageProcessor``.

    ``jpeg_draft`` (not a Hugging Face key; on by default, written to the file only when off): a
    JPEG whose sides are over twice the resize target is decoded by the JPEG decoder itself at
    1/2, 1/4 or 1/8 scale (DCT-domain scaling, Pillow's ``draft``), the smallest that keeps the
    short side >= ``size["shortest_edge"]`` (the width >= ``size["width"]`` and the height >=
    ``size["height"]`` for a fixed size), then resized as usual. Other formats, and JPEGs too
    small to scale, are decoded exactly. It changes pixel values slightly and decodes a camera-size
    photograph several times faster; its agreement with full decoding is measured in
    docs/performance-notes.md ("Decoding at the scale the model needs"). ``False`` decodes every
    pixel (``Engine.from_bundle(..., jpeg_draft=False)``).

    ``crop_resample`` (not a Hugging Face key; on by default, written to the file only when off):
    the resize computes only the pixels the center crop keeps (:meth:`resize_crop`); a pixel may
    differ from resize-then-crop by one level of 255 (floating-point rounding of the filter
    weights). ``False`` resizes the whole image first, as transformers does.
    ``Engine.from_bundle(..., exact_pixels=True)`` and ``fusionrt predict --exact-pixels`` turn
    both off: the pixels then equal transformers' image processors'.
    """

    do_resize: bool = True
    size: dict = field(default_factory=lambda: {"shortest_edge": 256})
    resample: int = 2
    do_center_crop: bool = True
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    jpeg_draft: bool = True
    crop_resample: bool = True

    KEYS = (
        "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
        "rescale_factor", "do_normalize", "image_mean", "image_std", "jpeg_draft", "crop_resample",
    )

    def __post_init__(self):
        if not isinstance(self.size, dict):
            raise InputError(f"preprocessor size must be a dict {{'shortest_edge': N}} or {{'height': H, 'width': W}}, got {self.size!r}")
        keys = ("shortest_edge",) if "shortest_edge" in self.size else ("height", "width")
        bad = [k for k in keys if not _positive_int(self.size.get(k))]
        if self.do_resize and bad:
            raise InputError(
                f"preprocessor size must be {{'shortest_edge': N}} or {{'height': H, 'width': W}} with N, H, W >= 1: "
                f"size['{bad[0]}'] is missing or < 1 in {self.size}"
            )
        if self.do_center_crop and (self.crop_size.get("height", 0) < 1 or self.crop_size.get("width", 0) < 1):
            raise InputError(f"preprocessor crop_size must have height and width >= 1, got {self.crop_size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise InputError("preprocessor image_mean/image_std must be 3 values, std > 0")

    @classmethod
    def from_dict(cls, config: dict) -> "ImageProcessor":
        kwargs = {k: config[k] for k in cls.KEYS if k in config}
        for k in ("image_mean", "image_std"):  # one number: every channel's, as transformers' normalize reads it
            if isinstance(kwargs.get(k), (int, float)) and not isinstance(kwargs[k], bool):
                kwargs[k] = (float(kwargs[k]),) * 3
            elif k in kwargs:
                try:
                    kwargs[k] = tuple(float(v) for v in kwargs[k])
                except (TypeError, ValueError):
                    raise InputError(f"preprocessor {k} must be 3 numbers (or one), got {kwargs[k]!r}") from None
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ImageProcessor":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.KEYS}
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        for key in ("jpeg_draft", "crop_resample"):
            if d[key]:
                del d[key]  # the default: keep the file a plain Hugging Face config
        d["image_processor_type"] = "BitImageProcessor"
        return d

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        """``(height, width)`` in pixels every image is resized to (``size`` ``{"height": H,
        "width": W}``, the aspect ratio not kept); ``None`` for a shortest-edge resize or none."""
        if not self.do_resize or "shortest_edge" in self.size:
            return None
        return int(self.size["height"]), int(self.size["width"])

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        """``(height, width)`` in pixels of every image's output: the center crop's, else the
        fixed-size resize's (:attr:`resize_hw`); ``None`` when it follows the input."""
        if self.do_center_crop:
            return int(self.crop_size["height"]), int(self.crop_size["width"])
        return self.resize_hw

    @property
    def output_hw(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of ``pixel_values`` produced by this processor (:attr:`fixed_hw`).

        Raises:
            InputError: it depends on the input (no center crop and a shortest-edge resize or none).
        """
        hw = self.fixed_hw
        if hw is None:
            raise InputError("output size depends on the input when do_center_crop is false and size is no {'height', 'width'}")
        return hw

    def pixel_shape(self, dtype: str = "float32") -> tuple[int, int, int]:
        """Shape of one image's pixels as a graph taking ``pixel_values`` of ``dtype`` wants them
        (see :data:`PIXEL_LAYOUTS`): ``(3, H, W)`` for float32, ``(H, W, 3)`` for uint8.

        Raises:
            InputError: ``dtype`` is not in :data:`PIXEL_LAYOUTS`; or the size depends on the input
                (:attr:`output_hw`).
        """
        h, w = self.output_hw
        return (3, h, w) if _layout(dtype) == "NCHW" else (h, w, 3)

    def process_one(self, image: ImageLike, out: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
        """Decode and transform one image.

        Args:
            image: as :func:`load_image` takes.
            out: optional array of the result's shape and dtype to write into (a slot of a
                batch, so that the batch needs no stacking copy).
            dtype: ``"float32"``: ``(3, H, W) float32`` normalized (:meth:`crop_normalize`);
                ``"uint8"``: ``(H, W, 3) uint8`` as decoded, resized and cropped (:meth:`crop`),
                for a graph that normalizes itself.

        Returns:
            The pixels (``out`` when given).

        Raises:
            InputError: as :func:`load_image`; or ``dtype`` is not in :data:`PIXEL_LAYOUTS`.
        """
        layout = _layout(dtype)
        draft = self._draft_size() if (self.jpeg_draft and self.do_resize) else None
        img = self.resize_crop(load_image(image, draft_size=draft))
        return self.crop_normalize(img, out) if layout == "NCHW" else self.crop(img, out)

    def pixels(self, images: Sequence[ImageLike], dtype: str = "float32", threads: int = 1) -> np.ndarray:
        """Process a batch into what a graph taking ``pixel_values`` of ``dtype`` wants.

        Args:
            images: as :meth:`process_one` takes, one per item.
            dtype: ``"float32"`` or ``"uint8"``, see :meth:`process_one`.
            threads: images decoded at once (Pillow releases the GIL while decoding and resizing);
                1 decodes in the calling thread.

        Returns:
            ``(batch, 3, H, W) float32`` normalized, or ``(batch, H, W, 3) uint8`` for ``"uint8"``.

        Raises:
            InputError: for the first bad image, naming its index; ``dtype`` unknown.
        """
        out = np.empty((len(images),) + self.pixel_shape(dtype), np.dtype(dtype))

        def one(i: int) -> None:
            try:
                self.process_one(images[i], out[i], dtype)
            except InputError as exc:
                raise InputError.of_item("images", i, f": {exc}") from None

        if threads > 1 and len(images) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(images)), thread_name_prefix="fusionrt-decode") as pool:
                list(pool.map(one, range(len(images))))  # re-raises the first bad image's error, in order
        else:
            for i in range(len(images)):
                one(i)
        return out

    def crop(self, img: Image.Image | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Center-crop an RGB image to ``crop_size`` (zero-padding a smaller one), no normalization.

        Args:
            img: the resized image (PIL, or ``(H, W, 3) uint8``).
            out: optional ``(crop height, crop width, 3) uint8`` array to write into.

        Returns:
            ``(crop height, crop width, 3) uint8`` (the input's H, W without center crop); ``out``
            when given.

        Raises:
            ValueError: ``out`` has another shape or dtype than the result.
        """
        array = np.asarray(img)  # (H, W, 3) uint8
        if self.do_center_crop:
            array = _center_crop(array, int(self.crop_size["height"]), int(self.crop_size["width"]))
        if out is None:
            return np.ascontiguousarray(array)
        _check_out(out, array.shape, np.uint8)
        out[...] = array
        return out

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels as :meth:`crop` gives them -> the float32 ones :meth:`crop_normalize`
        gives for the same image, bit for bit (the same two float32 roundings per value).

        Args:
            pixels: ``(..., H, W, 3) uint8``.

        Returns:
            ``(..., 3, H, W) float32``.
        """
        scale, shift = self.affine
        planes = np.moveaxis(np.asarray(pixels), -1, -3)  # (..., 3, H, W) view
        out = np.multiply(planes, scale[:, None, None], dtype=np.float32, casting="unsafe")
        out += shift[:, None, None]
        return out

    def resize(self, img: Image.Image) -> Image.Image:
        """Resize the shortest edge to ``size["shortest_edge"]`` pixels, keeping the aspect ratio
        with transformers' arithmetic (``get_resize_output_image_size(default_to_square=False)``),
        or the whole image to ``size["height"]`` x ``size["width"]``; Pillow's ``resample`` filter
        (antialiased when downscaling). A no-op when ``do_resize`` is false or the size already matches.

        Args:
            img: an RGB ``PIL.Image.Image`` (as :func:`load_image` returns).

        Returns:
            A ``PIL.Image.Image``; the input itself when nothing changes.

        Raises:
            InputError: the resized image would hold more pixels than Pillow's decompression-bomb
                limit (``PIL.Image.MAX_IMAGE_PIXELS``): an extreme aspect ratio (a 1x50000 strip
                is 256x12,800,000 at a 256 shortest edge, 9.8 GB).
        """
        if not self.do_resize:
            return img
        new_w, new_h = self._resized_size(*img.size)
        if (new_w, new_h) == img.size:
            return img
        limit = Image.MAX_IMAGE_PIXELS
        if limit and new_w * new_h > limit:
            raise InputError(
                f"image of {img.width}x{img.height} pixels resizes to {new_w}x{new_h} = {new_w * new_h} pixels, over Pillow's "
                f"decompression-bomb limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS); crop it to a less extreme aspect ratio, "
                "or let the resize compute only the center crop (ImageProcessor.crop_resample, off with exact_pixels)"
            )
        return img.resize((new_w, new_h), resample=Image.Resampling(self.resample))

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """:meth:`resize`, computing only the pixels the center crop keeps.

        Pillow's ``resize(size, box=...)`` resamples the source region that maps onto the crop,
        with the same filter scale and the same source pixels under the filter's support as the
        whole resize: the result equals ``resize`` then the crop (within one level of 255 from
        floating-point rounding), at the cost of the crop's pixels instead of the resized image's
        (about half for a 3:2 photograph). Where the crop would pad (an image smaller than the
        crop after resizing), without resize or crop, or with ``crop_resample`` off, it is
        :meth:`resize`.

        Args:
            img: an RGB ``PIL.Image.Image``.

        Returns:
            A ``PIL.Image.Image``: of ``crop_size`` when the crop was folded in (:meth:`crop` then
            keeps it whole), else :meth:`resize`'s.
        """
        if not (self.crop_resample and self.do_resize and self.do_center_crop):
            return self.resize(img)
        w, h = img.size
        new_w, new_h = self._resized_size(w, h)
        ch, cw = int(self.crop_size["height"]), int(self.crop_size["width"])
        if new_w < cw or new_h < ch or (new_w, new_h) == (w, h):
            return self.resize(img)
        sx, sy = w / new_w, h / new_h
        left, top = (new_w - cw) // 2, (new_h - ch) // 2
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        return img.resize((cw, ch), resample=Image.Resampling(self.resample), box=box)

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after :meth:`resize` of a ``w`` x ``h`` image."""
        if self.resize_hw is not None:
            return self.resize_hw[::-1]
        short = int(self.size["shortest_edge"])
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        return max(new_w, 1), max(new_h, 1)

    def _draft_size(self) -> tuple[int, int]:
        """``(width, height)`` a JPEG may be drafted down to and still resize as from full size."""
        if self.resize_hw is not None:
            return self.resize_hw[::-1]
        short = int(self.size["shortest_edge"])
        return short, short

    def crop_normalize(self, img: Image.Image | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Center-crop an RGB image (PIL, or ``(H, W, 3) uint8``) to ``crop_size`` (zero-padding a
        smaller one, as transformers does) and normalize it.

        Args:
            img: the resized image.
            out: optional ``(3, crop height, crop width) float32`` C-contiguous array to write
                into, e.g. ``batch[i]`` of a preallocated batch (saves the stacking copy).

        Returns:
            ``(3, crop height, crop width) float32`` (or the input's H, W without center crop):
            ``pixel * rescale_factor / std - mean / std`` per channel (ImageNet mean and std by
            default); ``out`` when given.

        Raises:
            ValueError: ``out`` has another shape or dtype than the result.
        """
        array = np.asarray(img)  # (H, W, 3) uint8, no copy for an ndarray
        if self.do_center_crop:
            # crop before converting to float: 4x fewer bytes to convert
            array = _center_crop(array, int(self.crop_size["height"]), int(self.crop_size["width"]))
        scale, shift = self.affine
        shape = (3,) + array.shape[:2]  # (3, H, W)
        if out is None:
            out = np.empty(shape, np.float32)
        else:
            _check_out(out, shape, np.float32)
        for c in range(3):
            # one multiply-add per channel: x * rescale / std - mean / std
            np.multiply(array[:, :, c], scale[c], out=out[c], dtype=np.float32, casting="unsafe")
            out[c] += shift[c]
        return out

    @property
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(scale, shift)``, each ``(3,) float32``, so that ``pixel * scale + shift``
        (two float32 roundings) is the rescale, then the normalization: ``scale = rescale_factor /
        std``, ``shift = -mean / std``. The uint8 image graphs compute the same."""
        rescale = self.rescale_factor if self.do_rescale else 1.0
        if self.do_normalize:
            std, mean = np.asarray(self.image_std, np.float64), np.asarray(self.image_mean, np.float64)
            return (rescale / std).astype(np.float32), (-mean / std).astype(np.float32)
        return np.full(3, rescale, np.float32), np.zeros(3, np.float32)

    def __call__(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Process a batch as Hugging Face image processors do.

        Returns:
            ``pixel_values`` ``(batch, 3, H, W) float32``, normalized.

        Raises:
            InputError: for the first bad image, naming its index.
        """
        if self.fixed_hw is not None:
            return self.pixels(images, "float32")
        out = []  # sizes follow the inputs
        for i, image in enumerate(images):
            try:
                out.append(self.process_one(image))
            except InputError as exc:
                raise InputError.of_item("images", i, f": {exc}") from None
        if not out:
            raise InputError("an image processor without center crop or fixed size cannot make an empty batch (no size)")
        return np.stack(out)


def _positive_int(value: Any) -> bool:
    """Whether a config value is a whole number >= 1 (``int()`` reads it)."""
    try:
        return int(value) >= 1
    except (TypeError, ValueError):
        return False


def _layout(dtype: str) -> str:
    """The layout of ``pixel_values`` of ``dtype`` (:data:`PIXEL_LAYOUTS`)."""
    layout = PIXEL_LAYOUTS.get(str(dtype))
    if layout is None:
        raise InputError(f"pixel_values dtype {dtype!r} is not one of {list(PIXEL_LAYOUTS)}")
    return layout


def _check_out(out: np.ndarray, shape: tuple, dtype) -> None:
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype:
        got = f"shape {out.shape} and dtype {out.dtype}" if isinstance(out, np.ndarray) else f"type {type(out).__name__}"
        raise ValueError(f"out has {got}; expected a {tuple(shape)} {np.dtype(dtype).name} array")


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center crop (H, W, C), zero-padding when the image is smaller (transformers' convention)."""
    h, w = array.shape[:2]
    if h < height or w < width:
        padded = np.zeros((max(h, height), max(w, width), array.shape[2]), array.dtype)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top : top + h, left : left + w] = array
        array, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = (h - height) // 2, (w - width) // 2
    return array[top : top + height, left : left + width]


def costliest_first(images: Sequence[Any]) -> list[int]:
    """Indices of ``images``, the ones likely slowest to decode first, for a thread pool to take
    in that order (longest-processing-time-first: the last image to start is a cheap one, so no
    thread is left decoding a big one alone at the end). The cost estimate is the size at hand:
    encoded bytes, the file's size, or an array's or PIL image's pixels; 0 when unknown.
    """

    def cost(image: Any) -> int:
        try:
            if isinstance(image, (bytes, bytearray)):
                return len(image)
            if isinstance(image, memoryview):
                return image.nbytes
            if isinstance(image, (str, os.PathLike)):
                return os.stat(image).st_size
            if isinstance(image, np.ndarray):
                return image.size
            if isinstance(image, Image.Image):
                return image.width * image.height * len(image.getbands())
        except (OSError, ValueError, TypeError):  # missing file, released memoryview, odd PathLike
            pass
        return 0

    costs = [cost(image) for image in images]
    return sorted(range(len(costs)), key=lambda k: -costs[k])


def map_costliest_first(pool: Any, fn: Any, images: Sequence[Any], items: Sequence[Any] | None = None) -> list:
    """``[fn(x) for x in items]`` (``items`` defaults to ``images``) computed on ``pool`` (a
    ``concurrent.futures.Executor``) in :func:`costliest_first` order of ``images``, returned in
    the given order."""
    items = images if items is None else items
    if len(items) != len(images):
        raise ValueError(f"got {len(items)} items for {len(images)} images; they are paired one to one")
    order = costliest_first(images)
    results: list = [None] * len(items)
    for k, result in zip(order, pool.map(fn, [items[k] for k in order])):
        results[k] = result
    return results


def default_decode_threads() -> int:
    """Threads that decode the images of a batch: two per core this process may run on
    (:func:`~fusionrt.cpu.usable_cores`: ``taskset`` and a container's cpuset count), at most 16.

    Photos differ in decoding cost, so a batch spreads more evenly over more threads than cores;
    Pillow releases the GIL while decoding and resizing (docs/performance-notes.md, "Image decoding").
    """
    return min(16, 2 * usable_cores())
