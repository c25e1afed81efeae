"""Edited copies made with AugLy (Meta's augmentation library, the one behind the DISC21
copy-detection benchmark), for ``cbir bench copies --suite augly`` and ``cbir bench copy-search``.

``AUGS`` is the registry: name → (function(image, rng, other photo) → image, keeps ≥ 25 % of the
original's pixels). Intensities: AugLy's default where it changes the image; where the default is
the identity (brightness, contrast, saturation, pixelization, opacity, aspect ratio, …) a value drawn
from AugLy's own ``Random*`` range, narrowed where its extreme erases the photo (brightness 0 is
black). ``pip`` pastes the original at 35–55 % of the width into another photo
(``overlay_onto_background_image``); ``overlay_image`` pastes another photo over 20–40 % of the
original's width. ``chain2``/``chain3`` apply 2 or 3 random single augmentations in a row, as DISC21
did. ``TEMPLATES`` (``meme_format``, ``overlay_onto_screenshot`` with both bundled templates) put
photos into shared layouts: applied to photos *not* in the gallery they are the precision side.

``make_suite(src, out, n, negatives)`` writes ``out/copies/<aug>/<path relative to src>.jpg``
(``cbir.bench.copies`` layout: ``bench accuracy --copies out/copies`` reads it too) for ``n``
stratified images of ``src`` and ``out/negatives/<aug>/<name>.jpg`` for every photo of
``negatives`` (default: the colour and grey photographs bundled with scikit-image and
scikit-learn, which are not in any gallery of ours) under every augmentation, templates included.

AugLy 1.0.0 predates NumPy 2 and Pillow 10; ``compat()`` restores what it calls:
``np.float`` (``perspective_transform``, removed in NumPy 1.24) and
``FreeTypeFont.getsize_multiline`` (``meme_format``, removed in Pillow 10). Nothing else needed a fix.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from cbir.bench.copies import pick
from cbir.errors import CbirError

Aug = Callable[[Image.Image, np.random.Generator, Image.Image], Image.Image]

# photographs bundled with scikit-image (data dir) and scikit-learn (datasets/images)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "cell.png",
    "coins.png",
    "clock_motion.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@contextlib.contextmanager
def compat():
    """AugLy 1.0.0 on NumPy ≥ 1.24 and Pillow ≥ 10 (see the module doc); undone on exit."""
    from PIL import ImageFont

    added = []
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]
        added.append((np, "float"))
    if not hasattr(ImageFont.FreeTypeFont, "getsize_multiline"):

        def getsize_multiline(font, text, *args, **kw):
            from PIL import ImageDraw

            box = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=font)
            return box[2] - box[0], box[3] - box[1]

        ImageFont.FreeTypeFont.getsize_multiline = getsize_multiline  # type: ignore[attr-defined]
        added.append((ImageFont.FreeTypeFont, "getsize_multiline"))
    try:
        yield
    finally:
        for obj, name in added:
            delattr(obj, name)


def _F():
    try:
        import augly.image.functional as F
    except ImportError as e:
        raise CbirError(
            "--suite augly needs AugLy: pip install augly==1.0.0 iopath python-magic regex "
            f"(its image extra pins Pillow < 9; install it without extras) ({e})"
        ) from None
    return F


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _emoji(rng: np.random.Generator) -> str:
    import augly.utils as U

    files = sorted(Path(U.EMOJI_DIR).rglob("*.png"))
    return str(files[int(rng.integers(len(files)))])


def _screenshot(img: Image.Image, rng: np.random.Generator, template: str | None = None) -> Image.Image:
    import augly.utils as U

    name = template or ("web.png", "mobile.png")[int(rng.integers(2))]
    return _F().overlay_onto_screenshot(img, template_filepath=os.path.join(U.SCREENSHOT_TEMPLATES_DIR, name))


AUGS: dict[str, tuple[Aug, bool]] = {
    "blur": (lambda im, r, o: _F().blur(im, radius=2.0), True),
    "brightness": (lambda im, r, o: _F().brightness(im, factor=_u(r, 0.3, 2.0)), True),
    "change_aspect_ratio": (lambda im, r, o: _F().change_aspect_ratio(im, ratio=_u(r, 0.5, 2.0)), True),
    "clip_image_size": (lambda im, r, o: _F().clip_image_size(im, max_resolution=96 * 96), True),
    "color_jitter": (
        lambda im, r, o: _F().color_jitter(
            im, brightness_factor=_u(r, 0.5, 1.5), contrast_factor=_u(r, 0.5, 1.5), saturation_factor=_u(r, 0.0, 2.0)
        ),
        True,
    ),
    "contrast": (lambda im, r, o: _F().contrast(im, factor=_u(r, 0.3, 2.0)), True),
    "convert_color": (lambda im, r, o: _F().convert_color(im, mode="P").convert("RGB"), True),
    "crop": (lambda im, r, o: _F().crop(im), True),  # the centre 50 % × 50 %: 25 % of the pixels
    "encoding_quality": (lambda im, r, o: _F().encoding_quality(im), True),
    "grayscale": (lambda im, r, o: _F().grayscale(im), True),
    "hflip": (lambda im, r, o: _F().hflip(im), True),
    "vflip": (lambda im, r, o: _F().vflip(im), True),
    "opacity": (lambda im, r, o: _F().opacity(im, level=_u(r, 0.3, 0.8)), True),
    "overlay_emoji": (lambda im, r, o: _F().overlay_emoji(im, emoji_path=_emoji(r)), True),
    "overlay_image": (
        lambda im, r, o: _F().overlay_image(
            im, overlay=o, overlay_size=_u(r, 0.2, 0.4), x_pos=_u(r, 0, 0.6), y_pos=_u(r, 0, 0.6)
        ),
        True,
    ),
    "overlay_stripes": (lambda im, r, o: _F().overlay_stripes(im), True),
    "overlay_text": (lambda im, r, o: _F().overlay_text(im), True),
    "pad": (lambda im, r, o: _F().pad(im), True),
    "pad_square": (lambda im, r, o: _F().pad_square(im), True),
    "perspective_transform": (lambda im, r, o: _F().perspective_transform(im, seed=int(r.integers(1 << 30))), True),
    "pip": (
        lambda im, r, o: _F().overlay_onto_background_image(
            im, background_image=o, overlay_size=_u(r, 0.35, 0.55), x_pos=_u(r, 0, 0.45), y_pos=_u(r, 0, 0.45)
        ),
        True,
    ),
    "pixelization": (lambda im, r, o: _F().pixelization(im, ratio=_u(r, 0.1, 0.5)), True),
    "random_noise": (lambda im, r, o: _F().random_noise(im, seed=int(r.integers(1 << 30))), True),
    "resize": (
        lambda im, r, o: _F().resize(
            im, width=max(8, int(im.width * _u(r, 0.3, 1.5))), height=max(8, int(im.height * _u(r, 0.3, 1.5)))
        ),
        True,
    ),
    "rotate": (lambda im, r, o: _F().rotate(im), True),  # 15°, cropped to the rotated content
    "saturation": (lambda im, r, o: _F().saturation(im, factor=_u(r, 0.0, 3.0)), True),
    "scale": (lambda im, r, o: _F().scale(im), True),
    "sharpen": (lambda im, r, o: _F().sharpen(im, factor=_u(r, 2.0, 10.0)), True),
    "skew": (lambda im, r, o: _F().skew(im), True),
    "pil_filter": (lambda im, r, o: _F().apply_pil_filter(im), True),
    "meme_format": (lambda im, r, o: _F().meme_format(im), True),
    "screenshot": (lambda im, r, o: _screenshot(im, r), True),
    "shuffle_pixels": (lambda im, r, o: _F().shuffle_pixels(im, seed=int(r.integers(1 << 30))), False),
}
# chains draw from these (templates and the pixel shuffle stay single, as in DISC21's chains)
CHAINABLE = tuple(n for n in AUGS if n not in ("meme_format", "screenshot", "shuffle_pixels"))


def _chain(length: int) -> Aug:
    def apply(im: Image.Image, r: np.random.Generator, o: Image.Image) -> Image.Image:
        for name in r.choice(CHAINABLE, length, replace=False):
            im = AUGS[str(name)][0](im, r, o).convert("RGB")
        return im

    return apply


AUGS["chain2"] = (_chain(2), True)
AUGS["chain3"] = (_chain(3), True)

TEMPLATES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "meme_format": lambda im: _F().meme_format(im),
    "screenshot_web": lambda im: _screenshot(im, None, "web.png"),
    "screenshot_mobile": lambda im: _screenshot(im, None, "mobile.png"),
}


def bundled_photos() -> list[Path]:
    """scikit-image's and scikit-learn's bundled photographs (``SKIMAGE_PHOTOS``, ``SKLEARN_PHOTOS``)."""
    try:
        import skimage.data
        import sklearn.datasets
    except ImportError as e:
        raise CbirError(
            f"--negatives: the default needs scikit-image and scikit-learn ({e}); "
            f"or pass a folder of photos that are not in the gallery"
        ) from None
    sk = Path(skimage.data.__file__).parent
    sl = Path(sklearn.datasets.__file__).parent / "images"
    return [p for p in [sk / f for f in SKIMAGE_PHOTOS] + [sl / f for f in SKLEARN_PHOTOS] if p.exists()]


def apply(name: str, img: Image.Image, rng: np.random.Generator, other: Image.Image) -> Image.Image:
    """``AUGS[name]`` on an RGB image (``other``: the photo for overlays), as RGB."""
    with compat():
        return AUGS[name][0](img.convert("RGB"), rng, other.convert("RGB")).convert("RGB")


def make_suite(
    src: str | os.PathLike,
    out: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    augs: list[str] | None = None,
    negatives: str | os.PathLike | None = None,
) -> dict:
    """Write the suite (see the module doc); returns counts. The photo an overlay or a
    picture-in-picture uses is one of the negatives (never a gallery photo, never the original itself)."""
    from cbir.sources import find_images

    names = augs or list(AUGS)
    for a in names:
        if a not in AUGS:
            raise CbirError(f"--edits {a}: unknown augmentation; choose from {', '.join(AUGS)}")
    src, out = Path(src), Path(out)
    originals = pick(src, n, seed)
    negs = bundled_photos() if negatives is None else [Path(p) for p in sorted(find_images([negatives]))]
    if len(originals) < 2 or len(negs) < 2:
        raise CbirError(
            f"the suite needs ≥ 2 originals and ≥ 2 negatives (got {len(originals)} in {src}, {len(negs)} negatives)"
        )
    written = {"copies": 0, "negatives": 0}
    for kind, photos, rel_of in (
        ("copies", originals, lambda p: p.relative_to(src).with_suffix(".jpg")),
        ("negatives", negs, lambda p: Path(p.stem + ".jpg")),
    ):
        for i, path in enumerate(photos):
            img = Image.open(path).convert("RGB")
            # the other photo never comes from the gallery: a copy pasted into a gallery photo would
            # rightly find that photo first
            other = Image.open(negs[(i + 1 + i % 3) % len(negs)]).convert("RGB")
            for j, name in enumerate(names):
                rng = np.random.default_rng([seed, i, j, kind == "negatives"])
                dst = out / kind / name / rel_of(path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                apply(name, img, rng, other).save(dst, "JPEG", quality=90)
                written[kind] += 1
    return written


def make_templates(src: str | os.PathLike, out: str | os.PathLike, n: int = 20, seed: int = 0) -> int:
    """The dedup precision set: every template of ``TEMPLATES`` applied to ``n`` different images of
    ``src``, written as ``out/<template>/<path relative to src>.jpg``. Different photos in one
    template are not copies of each other (each is a copy of its own original)."""
    src, out = Path(src), Path(out)
    count = 0
    for path in pick(src, n, seed + 1):
        img = Image.open(path).convert("RGB")
        for name, fn in TEMPLATES.items():
            dst = out / name / path.relative_to(src).with_suffix(".jpg")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with compat():
                fn(img).convert("RGB").save(dst, "JPEG", quality=90)
            count += 1
    return count
