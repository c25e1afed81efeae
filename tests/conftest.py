"""Shared fixtures: real photos (scikit-image), one exported real model, broken-file galleries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.samples import sample_photos


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return sample_photos()


@pytest.fixture(scope="session")
def lite0_onnx(tmp_path_factory) -> Path:
    """Lite0 Block 7 GAP with the offline ImageNet weights (exported once per session, with its
    torch checkpoint for ``--backend torch``)."""
    from cbir.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("models") / "lite0_b7_gap.onnx"
    export_onnx("tf_efficientnet_lite0", out, block=7, pooling="gap", pretrained=True, torch_checkpoint=True)
    return out


@pytest.fixture(scope="session")
def lite0_b6_onnx(tmp_path_factory) -> Path:
    """A second model (Block 6, random weights, small input) to test refusals and other dims."""
    from cbir.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("models") / "lite0_b6_gem.onnx"
    export_onnx("tf_efficientnet_lite0", out, block=6, pooling="gem", image_size=128)
    return out


@pytest.fixture(scope="session")
def embedder(lite0_onnx):
    from cbir.engine.embedder import Embedder

    return Embedder(lite0_onnx)


def make_gallery(root: Path, photos: list[Path], n: int | None = None) -> list[Path]:
    """Copy real photos into ``root`` as JPEG/PNG files in two class folders; returns their paths."""
    out = []
    for i, p in enumerate(photos[:n]):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        img = Image.open(p).convert("RGB")
        img.thumbnail((320, 320))
        dst = sub / (f"img{i:02d}.jpg" if i % 3 else f"img{i:02d}.PNG")
        img.save(dst)
        out.append(dst)
    return out


def make_broken_files(root: Path, good: Path) -> dict[str, Path]:
    """Every kind of bad file the engine must survive, with image extensions."""
    root.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["empty"] = root / "empty.jpg"
    bad["empty"].write_bytes(b"")
    data = good.read_bytes()
    bad["truncated"] = root / "truncated.jpg"
    bad["truncated"].write_bytes(data[: len(data) // 3])
    bad["text"] = root / "notes.jpg"
    bad["text"].write_text("this is not an image\n")
    bad["random"] = root / "noise.png"
    bad["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    bad["bomb"] = root / "bomb.png"
    Image.new("1", (12000, 12000)).save(bad["bomb"])  # 144 Mpx in a few kB
    bad["dangling"] = root / "dangling.jpg"
    os.symlink(root / "does-not-exist.jpg", bad["dangling"])
    return bad


@pytest.fixture
def gallery_dir(tmp_path, photos) -> Path:
    root = tmp_path / "gallery"
    make_gallery(root, photos, 10)
    return root


@pytest.fixture
def verified_index(tmp_path, embedder, photos):
    """A new default index (local features, the default re-ranking) of 12 real photos: (gallery, files)."""
    from cbir.index.gallery import Gallery

    files = make_gallery(tmp_path / "g", photos, 12)
    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([tmp_path / "g"])
    return g, files


def queued_while_busy(searcher, calls) -> None:
    """Start ``calls`` in threads while ``searcher``'s device is held (its ``_run_lock``), so that all
    of them queue up for one combined search (``torch_flat.Combining``); then wait for them."""
    import threading
    import time

    with searcher._run_lock:
        threads = [threading.Thread(target=c) for c in calls]
        for th in threads:
            th.start()
        while len(searcher._queue) < len(calls):
            time.sleep(0.01)
    for th in threads:
        th.join()
