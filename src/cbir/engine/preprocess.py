"""Decode any Pillow-readable image and resize it into a uint8 H×W×3 RGB buffer row.

Defaults and choices:
- Formats: whatever Pillow reads (JPEG, PNG, WebP, BMP, TIFF, GIF, ...); multi-frame files use frame 0.
- EXIF orientation is applied. Alpha (RGBA, LA, PA, P with transparency) is composited on white.
- Modes: 1/L/P/CMYK/YCbCr/... via Pillow's RGB conversion; 16-bit and 32-bit integer images (I;16, I)
  are scaled by 1/257 when they exceed 255; float (F) images in [0, 1] are scaled by 255.
- Images over ``max_pixels`` (default 64 Mpx) are refused before decoding (decompression bombs).
- Two stages, the same for every kind of input (path, bytes, PIL image, array):
  1. *decode* to a full-resolution uint8 RGB array: OpenCV for plain RGB/grey JPEG, PNG, WebP and
     BMP files and bytes (about 3× faster than Pillow on Corel-size JPEGs), Pillow for the rest;
     PIL images and arrays are already decoded. No DCT-domain (draft) downscaling: it would make
     a JPEG file embed differently from the same picture handed over as pixels.
  2. *resize* with the model's one **resampling policy** (``ModelInfo.resampling``, recorded in the
     ONNX metadata and in index.json): ``opencv`` (default) = ``cv2.INTER_AREA`` when an axis shrinks,
     else the model's ``interpolation`` (``cv2.INTER_CUBIC`` for bicubic) to enlarge; ``pillow`` = Pillow's antialiased filter
     (the model's ``interpolation``, bicubic for the Lite/B0–B5 weights). Resize policy ``squash``
     takes the whole image to H×W, ``crop`` the shorter side to size and then the centre.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from cbir.errors import CbirError, ImageError
from cbir.sources import DEFAULT_READER, is_uri

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)
_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}

RESAMPLING = ("opencv", "pillow")

try:
    import cv2 as _cv2

    _cv2.setNumThreads(1)  # we parallelise across images; OpenCV's own pool would oversubscribe
except ImportError:  # pragma: no cover
    _cv2 = None
_CV2_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
# IMREAD_COLOR_RGB (OpenCV ≥ 4.11) decodes straight to RGB; older builds decode BGR and we swap.
_IMREAD_RGB = getattr(_cv2, "IMREAD_COLOR_RGB", None) if _cv2 is not None else None
_CV2_FILTERS = (
    {}
    if _cv2 is None
    else {
        "bicubic": _cv2.INTER_CUBIC,
        "bilinear": _cv2.INTER_LINEAR,
        "lanczos": _cv2.INTER_LANCZOS4,
        "nearest": _cv2.INTER_NEAREST,
    }
)

# We enforce our own pixel limit per file; Pillow's global one would warn or raise on its own terms.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: target (H, W), resize policy, filter, resampling, pixel limit."""

    size: tuple[int, int]
    resize: str = "squash"
    interpolation: str = "bicubic"
    max_pixels: int = MAX_PIXELS
    resampling: str = "opencv"

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "crop"):
            raise CbirError(f"resize policy {self.resize!r}: must be 'squash' or 'crop'")
        if self.interpolation not in _FILTERS:
            raise CbirError(f"interpolation {self.interpolation!r}: must be one of {', '.join(_FILTERS)}")
        if self.resampling not in RESAMPLING:
            raise CbirError(f"resampling {self.resampling!r}: must be one of {', '.join(RESAMPLING)}")
        if self.resampling == "opencv" and _cv2 is None:
            raise CbirError("resampling 'opencv' needs opencv-python-headless (pip install it, or use 'pillow')")

    @classmethod
    def for_model(cls, info, **overrides) -> "Preprocess":
        """The model's own preprocessing (``ModelInfo`` facts); ``overrides`` e.g. ``max_pixels``."""
        kw = {
            "size": tuple(info.input_size),
            "resize": info.resize,
            "interpolation": info.interpolation,
            "resampling": info.resampling,
        }
        return cls(**{**kw, **overrides})

    @property
    def policy(self) -> dict:
        """What index.json records: everything that decides the pixels a model sees."""
        return {
            "size": list(self.size),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "resampling": self.resampling,
        }

    def __call__(self, source: ImageSource, out: np.ndarray | None = None) -> np.ndarray:
        """Decode + resize ``source`` into ``out`` (H×W×3 uint8, allocated if None); returns it."""
        name = describe(source)
        try:
            arr = self.resample(decode(source, name, self.max_pixels))
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(name, f"decompression bomb refused ({e})") from None
        except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, MemoryError) as e:
            raise ImageError(name, f"cannot decode image ({type(e).__name__}: {e})") from None
        if out is None:
            return np.ascontiguousarray(arr)
        out[...] = arr
        return out

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        """(left, top, right, bottom) of the centre crop for ``crop``; None for ``squash``."""
        if self.resize != "crop":
            return None
        h, w = self.size
        s = max(w / width, h / height)
        cw, ch = w / s, h / s
        left, top = (width - cw) / 2, (height - ch) / 2
        return left, top, left + cw, top + ch

    def resample(self, rgb: np.ndarray) -> np.ndarray:
        """Full-resolution uint8 RGB [h, w, 3] -> [H, W, 3] with this model's resampling policy."""
        h, w = self.size
        box = self.crop_box(rgb.shape[1], rgb.shape[0])
        if self.resampling == "pillow":
            img = Image.fromarray(rgb)
            if img.size == (w, h) and box is None:
                return rgb
            return np.asarray(img.resize((w, h), _FILTERS[self.interpolation], box=box))
        if box is not None:
            left, top, right, bottom = (round(v) for v in box)
            rgb = rgb[top:bottom, left:right]
        if rgb.shape[:2] == (h, w):
            return rgb
        # Area averaging whenever an axis shrinks: cubic without antialiasing aliases already at 1.5×
        # (Lite0 vectors moved to cos 0.95 of the antialiased reference; area keeps ≥ 0.99).
        shrinking = rgb.shape[0] > h or rgb.shape[1] > w
        flag = _cv2.INTER_AREA if shrinking else _CV2_FILTERS[self.interpolation]
        return _cv2.resize(rgb, (w, h), interpolation=flag)


def decode(source: ImageSource, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any source -> full-resolution uint8 RGB [h, w, 3], EXIF orientation applied (stage 1)."""
    img = open_image(source, name, max_pixels)
    if _cv2 is not None and img.format in _CV2_FORMATS and img.mode in ("RGB", "L") and isinstance(img.fp, io.BytesIO):
        buf = np.frombuffer(img.fp.getbuffer(), np.uint8)
        if _IMREAD_RGB is not None:
            arr = _cv2.imdecode(buf, _IMREAD_RGB)  # applies EXIF orientation
        else:
            arr = _cv2.imdecode(buf, _cv2.IMREAD_COLOR)
            arr = None if arr is None else _cv2.cvtColor(arr, _cv2.COLOR_BGR2RGB)
        if arr is not None:
            return arr
        # OpenCV could not: let Pillow decode it or produce the precise error
    img = to_rgb(ImageOps.exif_transpose(img))
    return np.asarray(img)


def describe(source: ImageSource) -> str:
    """A short name for error messages: the path, or the kind of in-memory object."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def open_image(source: ImageSource, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and refuse images over ``max_pixels``."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = from_array(source, name)
    else:
        if isinstance(source, str) and is_uri(source):
            data = DEFAULT_READER.read(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise ImageError(name, "no such file" + (" (dangling symlink)" if path.is_symlink() else ""))
            if not path.is_file():
                raise ImageError(name, "not a regular file")
            data = path.read_bytes()
        else:
            data = bytes(source)
        if not data:
            raise ImageError(name, "empty file")
        try:
            img = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise ImageError(name, "not an image Pillow can identify") from None
    if img.width * img.height > max_pixels:
        raise ImageError(
            name, f"decompression bomb refused: {img.width}×{img.height} pixels exceeds the limit of {max_pixels}"
        )
    if img.width < 1 or img.height < 1:
        raise ImageError(name, f"empty image ({img.width}×{img.height})")
    return img


def from_array(a: np.ndarray, name: str = "<array>") -> Image.Image:
    """H×W, H×W×1, H×W×3 (RGB) or H×W×4 (RGBA) array; uint8, or float in [0, 1]."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(name, "array must be H×W, H×W×3 (RGB) or H×W×4 (RGBA)")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ImageError(name, f"array dtype {a.dtype}: use uint8, or float in [0, 1]")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (alpha composited on white, high bit depths scaled)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        elif a.max(initial=0.0) > 255.0:
            a = a / 257.0
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")
