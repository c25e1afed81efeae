"""Decoding every format and mode to RGB, EXIF orientation, alpha, resize policies, refusals."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cbir.engine.preprocess import ImageError, Preprocess

PP = Preprocess((64, 64))


def photo(photos, name="astronaut.png") -> Image.Image:
    return Image.open(next(p for p in photos if p.name == name)).convert("RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
@pytest.mark.parametrize("resampling", ["opencv", "pillow"])
def test_formats_decode_close_to_source(photos, fmt, resampling):
    img = photo(photos).resize((96, 96))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    pp = Preprocess((64, 64), resampling=resampling)
    got = pp(buf.getvalue()).astype(float)
    want = np.asarray(img.resize((64, 64), Image.BICUBIC), float)
    assert got.shape == (64, 64, 3)
    assert np.abs(got - want).mean() < (25 if fmt == "GIF" else 6)  # GIF is palette-quantised


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1", "F", "YCbCr"])
def test_modes_become_rgb(photos, mode):
    base = photo(photos).resize((64, 64))
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257))
        assert img.mode == "I;16"
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0, "F")
    else:
        img = base.convert(mode)
    got = PP(img)
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    grey = np.asarray(base.convert("L"), float)
    if mode in ("I;16", "I", "F", "L", "LA"):
        np.testing.assert_allclose(got[..., 0], grey, atol=2)


def test_alpha_composited_on_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (0, 0, 16, 32))  # opaque blue left half
    got = Preprocess((32, 32))(img)
    assert (got[:, 20:] == 255).all()
    assert (got[:, :10] == (0, 0, 255)).all()
    p = Image.new("P", (32, 32), 0)
    p.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    p.info["transparency"] = 0
    assert (Preprocess((32, 32))(p) == 255).all()


@pytest.mark.parametrize("resampling", ["opencv", "pillow"])
def test_exif_orientation_applied(photos, resampling):
    img = photo(photos).resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    got = Preprocess((80, 40), resampling=resampling)(buf.getvalue()).astype(float)  # (H, W) = (80, 40)
    want = np.asarray(img.transpose(Image.Transpose.ROTATE_270), float)
    assert got.shape == want.shape == (80, 40, 3)
    assert np.abs(got - want).mean() < 8


@pytest.mark.parametrize("resampling", ["opencv", "pillow"])
def test_crop_policy_centre_crops(resampling):
    a = np.zeros((50, 150, 3), np.uint8)
    a[:, 50:100] = 200  # the centre square is bright, the sides dark
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    got = Preprocess((20, 20), resize="crop", resampling=resampling)(buf.getvalue())
    assert got.mean() > 190
    squashed = Preprocess((20, 20), resize="squash", resampling=resampling)(buf.getvalue())
    assert squashed[:, :4].mean() < 20


@pytest.mark.parametrize("resampling", ["opencv", "pillow"])
@pytest.mark.parametrize("fmt,size", [("PNG", (300, 200)), ("JPEG", (300, 200)), ("JPEG", (1200, 900))])
def test_one_policy_for_every_kind_of_input(photos, tmp_path, resampling, fmt, size):
    """A file, its bytes, the PIL image and its pixels as an array go through the same resampling.
    PNG decodes to identical pixels everywhere, so the rows are identical; a JPEG file is decoded by
    OpenCV and a PIL image by Pillow (two libjpeg builds): rows agree to a few grey levels at most."""
    src = tmp_path / f"x.{fmt.lower()}"
    photo(photos).resize(size).save(src, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    pp = Preprocess((64, 64), resampling=resampling)
    pil = Image.open(src)
    rows = {
        "path": pp(src),
        "bytes": pp(src.read_bytes()),
        "pil": pp(pil),
        "array": pp(np.asarray(Image.open(src).convert("RGB"))),
    }
    np.testing.assert_array_equal(rows["path"], rows["bytes"])
    np.testing.assert_array_equal(rows["pil"], rows["array"])
    diff = np.abs(rows["path"].astype(int) - rows["array"].astype(int))
    if fmt == "PNG":
        assert diff.max() == 0
    else:
        assert diff.mean() < 1.0 and diff.max() <= 12, (diff.mean(), diff.max())


def test_policies_differ_where_they_should(photos):
    """Shrinking ≥ 2×: OpenCV area averaging and Pillow's antialiased bicubic are different filters
    (so the policy must be recorded); both stay close to the picture."""
    a = np.asarray(photo(photos).resize((512, 512)))
    cv = Preprocess((64, 64), resampling="opencv")(a).astype(float)
    pl = Preprocess((64, 64), resampling="pillow")(a).astype(float)
    assert 0 < np.abs(cv - pl).mean() < 3


def test_arrays_and_bytes_and_writes_into_buffer(photos):
    img = photo(photos).resize((64, 64))
    a = np.asarray(img)
    out = np.zeros((2, 64, 64, 3), np.uint8)
    PP(a, out[1])
    np.testing.assert_array_equal(out[1], a)
    np.testing.assert_allclose(PP(a.astype(np.float32) / 255.0), a, atol=1)
    with pytest.raises(ImageError, match="array"):
        PP(np.zeros((4, 4, 2), np.uint8))


def test_bad_inputs_name_the_file(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_text("hello")
    with pytest.raises(ImageError, match=r"x\.jpg: not an image"):
        PP(p)
    with pytest.raises(ImageError, match="no such file"):
        PP(tmp_path / "missing.png")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)
    with pytest.raises(ImageError, match="decompression bomb"):
        PP(bomb)
    with pytest.raises(ImageError, match="empty file"):
        PP(b"")
