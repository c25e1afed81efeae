"""Decode any Pillow-readable image and resize it into a uint8 H×W×3 RGB buffer row.

Defaults and choices:
- Formats: whatever Pillow reads (JPEG, PNG, WebP, BMP, TIFF, GIF, ...); multi-frame files use frame 0.
- EXIF orientation is applied. Alpha (RGBA, LA, PA, P with transparency) is composited on white.
- Modes: 1/L/P/CMYK/YCbCr/... via Pillow's RGB conversion; 16-bit and 32-bit integer images (I;16, I)
  are scaled by 1/257 when they exceed 255; float (F) images in [0, 1] are scaled by 255.
- Resize policy from the model (``squash``: whole image to H×W; ``crop``: shorter side to size, then
  centre crop), with the model's filter (bicubic for the Lite/B0–B5 weights). JPEG draft mode
  (DCT-domain downscaling by 1/2, 1/4, 1/8) is used when the source is at least 2× the target.
- Images over ``max_pixels`` (default 64 Mpx) are refused before decoding (decompression bombs).
- Decoder ``auto`` (default): OpenCV decodes and resizes (cubic) RGB/grey JPEG, PNG, WebP and BMP
  files that need no DCT downscaling, about 3× faster than Pillow on Corel-size JPEGs (BENCHMARKS.md
  shows the retrieval accuracy is unchanged); everything else goes through Pillow. ``pil`` forces
  Pillow (antialiased bicubic), ``cv2`` is the same as ``auto``.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from cbir.errors import CbirError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}

try:  # optional fast path
    import cv2 as _cv2

    _cv2.setNumThreads(1)  # we parallelise across images; OpenCV's own pool would oversubscribe
except ImportError:  # pragma: no cover
    _cv2 = None
_CV2_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")

# We enforce our own pixel limit per file; Pillow's global one would warn or raise on its own terms.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(CbirError):
    """One image could not be used; ``source`` names it and the message says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


@dataclass(frozen=True)
class Preprocess:
    """How images become model input: target (H, W), resize policy, filter, pixel limit."""

    size: tuple[int, int]
    resize: str = "squash"
    interpolation: str = "bicubic"
    max_pixels: int = MAX_PIXELS
    decoder: str = "auto"

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "crop"):
            raise CbirError(f"resize policy {self.resize!r}: must be 'squash' or 'crop'")
        if self.interpolation not in _FILTERS:
            raise CbirError(f"interpolation {self.interpolation!r}: must be one of {', '.join(_FILTERS)}")
        if self.decoder not in ("auto", "pil", "cv2"):
            raise CbirError(f"decoder {self.decoder!r}: must be 'auto', 'pil' or 'cv2'")

    def __call__(self, source: ImageSource, out: np.ndarray | None = None) -> np.ndarray:
        """Decode + resize ``source`` into ``out`` (H×W×3 uint8, allocated if None); returns it."""
        name = describe(source)
        try:
            img = open_image(source, name, self.max_pixels)
            arr = self._fast(img, source) if self.decoder != "pil" and _cv2 is not None else None
            if arr is not None:
                if out is None:
                    return arr
                out[...] = arr
                return out
            img = self._draft(img)
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            img = self._resize(img)
            arr = np.asarray(img)
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(name, f"decompression bomb refused ({e})") from None
        except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, MemoryError) as e:
            raise ImageError(name, f"cannot decode image ({type(e).__name__}: {e})") from None
        if out is None:
            return arr.copy()
        out[...] = arr
        return out

    def _fast(self, img: Image.Image, source: ImageSource) -> np.ndarray | None:
        """OpenCV decode + cubic resize for plain RGB/grey files; None where Pillow must do it."""
        h, w = self.size
        if (img.format not in _CV2_FORMATS or img.mode not in ("RGB", "L") or self.interpolation != "bicubic"
                or not isinstance(img.fp, io.BytesIO) or (img.format == "JPEG" and img.width >= 2 * w and img.height >= 2 * h)):
            return None
        arr = _cv2.imdecode(np.frombuffer(img.fp.getbuffer(), np.uint8), _cv2.IMREAD_COLOR_RGB)  # applies EXIF orientation
        if arr is None:
            return None  # let Pillow produce the precise error
        ih, iw = arr.shape[:2]
        if self.resize == "crop":
            s = max(w / iw, h / ih)
            cw, ch = round(w / s), round(h / s)
            top, left = (ih - ch) // 2, (iw - cw) // 2
            arr = arr[top : top + ch, left : left + cw]
        if arr.shape[:2] == (h, w):
            return np.ascontiguousarray(arr)
        shrink = min(arr.shape[0] / h, arr.shape[1] / w)
        return _cv2.resize(arr, (w, h), interpolation=_cv2.INTER_AREA if shrink >= 2 else _cv2.INTER_CUBIC)

    def _draft(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.format == "JPEG" and img.width >= 2 * w and img.height >= 2 * h:
            if self.resize == "crop":
                s = max(w / img.width, h / img.height)
                img.draft("RGB", (int(img.width * s) + 1, int(img.height * s) + 1))
            else:
                img.draft("RGB", (w, h))
        return img

    def _resize(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        box = None
        if self.resize == "crop":
            s = max(w / img.width, h / img.height)
            cw, ch = w / s, h / s
            left, top = (img.width - cw) / 2, (img.height - ch) / 2
            box = (left, top, left + cw, top + ch)
        if img.size == (w, h) and box is None:
            return img
        return img.resize((w, h), _FILTERS[self.interpolation], box=box)


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
        if isinstance(source, (str, os.PathLike)):
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
        raise ImageError(name, f"decompression bomb refused: {img.width}×{img.height} pixels exceeds the limit of {max_pixels}")
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
